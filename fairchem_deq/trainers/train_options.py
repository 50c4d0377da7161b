"""`DEQTrainOptions`: the `optim.deq` block, DEQ-specific training options.

optim:
  deq:
    fpc_weight: 0.0        # fixed-point-correction loss weight (paper: 0.8, n_states > 1)
    reuse_in_training: false  # warm-start training batches from cached fixed points
    jac_reg_weight: 0.0    # Jacobian regularisation: weight x Hutchinson estimate of ||J_f(z*)||_F^2 / dim
    jac_reg_vectors: 1     # random vectors of that estimate per training step

The Jacobian term (TorchDEQ's `jac_reg`, Bai et al. 2021) trains f to contract more strongly
at its fixed point: fewer solver evaluations, and a smaller error of a fixed-budget
propagation step (whose error scales with the contraction factor q). It costs one more
evaluation of f and its double backward per training step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DEQTrainOptions:
    fpc_weight: float = 0.0
    reuse_in_training: bool = False
    jac_reg_weight: float = 0.0
    jac_reg_vectors: int = 1

    def __post_init__(self):
        if not float(self.fpc_weight) >= 0.0:
            raise ValueError(f"optim.deq.fpc_weight must be >= 0, got {self.fpc_weight}")
        self.fpc_weight = float(self.fpc_weight)
        if not float(self.jac_reg_weight) >= 0.0:
            raise ValueError(f"optim.deq.jac_reg_weight must be >= 0, got {self.jac_reg_weight}")
        self.jac_reg_weight = float(self.jac_reg_weight)
        if not (isinstance(self.jac_reg_vectors, int) and self.jac_reg_vectors >= 1):
            raise ValueError(f"optim.deq.jac_reg_vectors must be an int >= 1, got {self.jac_reg_vectors!r}")
        if not isinstance(self.reuse_in_training, bool):
            raise ValueError(f"optim.deq.reuse_in_training must be true or false, got {self.reuse_in_training!r}")
