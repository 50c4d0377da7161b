"""`DEQTrainOptions`: the `optim.deq` block, DEQ-specific training options.

optim:
  deq:
    fpc_weight: 0.0        # fixed-point-correction loss weight (paper: 0.8, n_states > 1)
    reuse_in_training: false  # warm-start training batches from cached fixed points
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DEQTrainOptions:
    fpc_weight: float = 0.0
    reuse_in_training: bool = False
