"""One warm-start object in, one solution out: what crosses between the fixed-point cache
(`fairchem_deq.reuse`) and the backbone.

`WarmStart` is everything a batch's solve may start from, per structure: the predicted
fixed point, the solver's own state, the backward solve's adjoint and the contraction
estimate of the previous solve. It reaches the backbone as ONE batch attribute
(`batch.warm_start`; absent: every structure starts cold). `DEQSolution` is everything a
solve returns, per atom: the backbone's output `out["deq"]`, which the cache stores as it
is. Adding a piece of warm-start information (say a propagation history) is a field here,
one line where the cache fills it and one where the solver reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .adjoint import AdjointRecord
from .propagation import Propagation

WARM_START_ATTRIBUTE = "warm_start"  # the batch attribute the backbone reads


@dataclass
class WarmStart:
    """Where each structure of a batch starts. Tensors per atom like the fixed point
    [n_atoms, (lmax+1)^2, C], zeros for structures that have none; None when no structure
    has one."""

    fixed_point: torch.Tensor | None  # the predicted fixed point; zero rows start cold
    warm: torch.Tensor  # [n_structures] bool: got a cached prediction
    refused: torch.Tensor  # [n_structures] bool: had one, refused (moved beyond the bound)
    # a solver with a reusable state (broyden_reuse): per atom with a trailing rank dimension
    # (ranks padded with zero columns in front, the oldest end)
    solver_state: tuple[torch.Tensor, ...] | None = None
    adjoint: torch.Tensor | None = None  # energy-gradient forces: where the backward solve starts
    # [n_structures] each warm structure's last contraction estimate (NaN: none), the prior of
    # the "error" stop rule before the new solve measures its own
    contraction: torch.Tensor | None = None
    # fixed-budget propagation (evaluation): k evaluations instead of a converged solve
    propagation: Propagation | None = None

    @classmethod
    def cold(cls, num_structures: int) -> WarmStart:
        none = torch.zeros(num_structures, dtype=torch.bool)
        return cls(None, none, none.clone())

    @classmethod
    def at(cls, fixed_point: torch.Tensor, num_structures: int = 1, **pieces) -> WarmStart:
        """A warm start from `fixed_point` (per atom; zero rows start cold), for a caller that
        drives the backbone directly: `batch.warm_start = WarmStart.at(z)`. `pieces`:
        solver_state, adjoint, contraction."""
        warm = torch.ones(num_structures, dtype=torch.bool)
        return cls(fixed_point, warm, torch.zeros_like(warm), **pieces)

    @property
    def any_warm(self) -> bool:
        return self.fixed_point is not None


@dataclass
class DEQSolution:
    """What a batch's solve returned (the backbone's `out["deq"]`), per atom."""

    fixed_point: torch.Tensor  # [n_atoms, (lmax+1)^2, C], detached
    # per-structure tensors [n_structures]: nstep, abs_residual, rel_residual,
    # error_estimate, contraction, converged, finite, fallback (+ scalar nfe; with a
    # reusable solver state: state_reused, state_dropped)
    stats: dict[str, torch.Tensor]
    solver_state: tuple[torch.Tensor, ...] | None = None  # per atom, trailing rank (detached)
    # energy-gradient forces in evaluation: the backward solve, filled once forces are taken
    adjoint: AdjointRecord | None = None
    # training with deq.n_states > 1: intermediate states (normed SO3 embeddings) for the
    # fixed-point-correction loss
    states: list = field(default_factory=list)
    # fixed-budget propagation: the state the next prediction extrapolates from (per atom),
    # when it differs from `fixed_point`; the cache keeps it instead of the output
    carry: torch.Tensor | None = None
    # training with Jacobian regularisation: the loss term (||J_f(z*)||_F^2 / dim, with graph)
    jacobian_loss: torch.Tensor | None = None

    @property
    def history_point(self) -> torch.Tensor:
        """What the cache's history keeps for this solve."""
        return self.fixed_point if self.carry is None else self.carry
