"""Trainer options for DEQuiformer, read from fairchem's config blocks.

    task:
      deq:
        reuse: true            # warm-start consecutive frames in validate/predict/relaxations
        cache_size: 10000      # systems whose latest fixed point is kept
        trajectory_order: true # evaluate frames ordered by (sid, fid), systems in lockstep
        compare_cold: true     # also solve each warm-started frame from zero: iterations
                               # without reuse and the warm/cold force deviation (Markov check)
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


@dataclass
class DEQEvalOptions:
    reuse: bool = True
    cache_size: int = 10000
    trajectory_order: bool = True
    compare_cold: bool = True
    warm_start: str = "last"

    def __post_init__(self):
        get_predictor(self.warm_start, "task.deq.warm_start")  # fail at start-up, naming the key


@dataclass
class DEQTrainOptions:
    fpc_weight: float = 0.0
    reuse_in_training: bool = False
