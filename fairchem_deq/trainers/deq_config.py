"""Trainer options for DEQuiformer, read from fairchem's config blocks.

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
                               # or extrapolate the last few (fairchem_deq.warm_start)
    optim:
      deq:
        fpc_weight: 0.0        # fixed-point-correction loss weight (paper: 0.8, n_states > 1)
        reuse_in_training: false
"""

from __future__ import annotations

from dataclasses import dataclass

from fairchem_deq.models.deq_config import parse_options  # noqa: F401  (shared unknown-key check)
from fairchem_deq.warm_start import get_predictor

from .fixed_point_cache import DEFAULT_MAX_DISPLACEMENT, FixedPointCache


@dataclass
class DEQEvalOptions:
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


@dataclass
class DEQTrainOptions:
    fpc_weight: float = 0.0
    reuse_in_training: bool = False
