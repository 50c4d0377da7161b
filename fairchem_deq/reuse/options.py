"""`ReuseOptions`: the `task.deq` block, how fixed points are reused in evaluation
(validate, predict, relaxations) and by the DEQCalculator.

    task:
      deq:
        reuse: true            # warm-start consecutive frames in validate/predict/relaxations
        cache_size: 10000      # at most this many systems' fixed points are kept ...
        cache_mb: 1024         # ... in at most this many MB (least recently used evicted)
        reuse_max_displacement: 0.25  # Å: reuse only if no atom moved further since the
                               # cached fixed point was solved (null: no bound)
        trajectory_order: true # evaluate frames ordered by (sid, fid), segments in lockstep
        compare_cold: false    # also solve each warm-started frame from zero: iterations
                               # without reuse and the warm/cold force deviation (Markov
                               # check); doubles the evaluation cost
        warm_start: last       # last | linear | quadratic | aspc: copy the latest fixed point
                               # or extrapolate the last few (fairchem_deq.reuse.predictors)
"""

from __future__ import annotations

from dataclasses import dataclass

from .cache import FixedPointCache
from .policy import DEFAULT_MAX_DISPLACEMENT
from .predictors import get_predictor


@dataclass
class ReuseOptions:
    reuse: bool = True
    cache_size: int = 10000
    cache_mb: float = 1024.0
    reuse_max_displacement: float | None = DEFAULT_MAX_DISPLACEMENT
    trajectory_order: bool = True
    compare_cold: bool = False
    warm_start: str = "last"

    def __post_init__(self):
        get_predictor(self.warm_start, "task.deq.warm_start")  # fail at start-up, naming the key
        self.make_cache()  # range checks of cache_size, cache_mb, reuse_max_displacement

    def make_cache(self) -> FixedPointCache:
        return FixedPointCache(self.cache_size, self.warm_start, self.cache_mb, self.reuse_max_displacement)
