"""Fixed-point reuse, the idea of the package: the next frame's solve starts from the last
frames' fixed points.

- `predictors`: the guess for the next fixed point from a system's last few (`warm_start`
  names one: last, linear, quadratic, aspc) and the per-system history it reads;
- `cache`: the bounded per-system store; `FixedPointCache.warm_start(batch)` gives a
  batch's `fairchem_deq.solve.WarmStart`, `store(batch, solution)` keeps a `DEQSolution`;
- `policy`: when a stored fixed point may be reused (same atoms, displacement bound);
- `batch_rows`: per-structure pieces <-> batch tensors, cache keys and frame ids;
- `forward`: `forward_with_reuse`, one model pass from the cache's warm start that stores
  the new solution (used by the trainer and by the DEQCalculator);
- `options`: the `task.deq` config block (`ReuseOptions`).
"""

from .cache import FixedPointCache
from .forward import ReuseStep, force_deviation, forward_with_reuse, run_capturing_backbone
from .options import ReuseOptions
from .policy import DEFAULT_MAX_DISPLACEMENT, max_displacement
from .predictors import PREDICTORS, FixedPointHistory, get_predictor

__all__ = [
    "DEFAULT_MAX_DISPLACEMENT",
    "PREDICTORS",
    "FixedPointCache",
    "FixedPointHistory",
    "ReuseOptions",
    "ReuseStep",
    "force_deviation",
    "forward_with_reuse",
    "get_predictor",
    "max_displacement",
    "run_capturing_backbone",
]
