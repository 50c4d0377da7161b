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

    def __post_init__(self):
        if not float(self.fpc_weight) >= 0.0:
            raise ValueError(f"optim.deq.fpc_weight must be >= 0, got {self.fpc_weight}")
        self.fpc_weight = float(self.fpc_weight)
        if not isinstance(self.reuse_in_training, bool):
            raise ValueError(f"optim.deq.reuse_in_training must be true or false, got {self.reuse_in_training!r}")
