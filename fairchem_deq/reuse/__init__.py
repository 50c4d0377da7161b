"""Fixed-point reuse, the idea of the package: the next frame's solve starts from the last
frames' fixed points.

- `predictors`: the guess for the next fixed point from a system's last few (`warm_start`
  names one: last, linear, quadratic, aspc) and the per-system history it reads;
- `cache`: per-system histories, the reuse checks (same atoms, displacement bound) and
  their memory bounds; `FixedPointCache.initial_guess` for a batch;
- `forward`: `forward_with_reuse`, one model pass from the cache's guess that stores the
  new fixed points (used by the trainer and by the DEQCalculator);
- `options`: the `task.deq` config block (`ReuseOptions`).
"""

from .cache import DEFAULT_MAX_DISPLACEMENT, FixedPointCache, InitialGuess, max_displacement
from .forward import ReuseStep, force_deviation, forward_with_reuse
from .options import ReuseOptions
from .predictors import PREDICTORS, FixedPointHistory, get_predictor

__all__ = [
    "DEFAULT_MAX_DISPLACEMENT",
    "PREDICTORS",
    "FixedPointCache",
    "FixedPointHistory",
    "InitialGuess",
    "ReuseOptions",
    "ReuseStep",
    "force_deviation",
    "forward_with_reuse",
    "get_predictor",
    "max_displacement",
]
