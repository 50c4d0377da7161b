"""The contract of a solver whose own state is reused between solves.

A TorchDEQ solver function (registered with `torchdeq.solver.register_solver`) declares a
reusable state by a `state_type` attribute: a class that implements `SolverState`. In
evaluation `StructureDEQSolver` builds the state from the rows a caller handed in
(`from_rows`), passes it to the solver as `state=` (the solver updates it in place, so it is
current even when the early exit raised from inside f), and returns its per-row tensors
(`columns`) with the solution, which the fixed-point cache keeps per structure. `reused` and
`dropped` say, per row, whether it started from a handed-in state and whether the solver's
safeguard dropped that state. `fairchem_deq.solve.broyden_reuse.BroydenState` is the one
implementation.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torchdeq.solver import get_solver


@runtime_checkable
class SolverState(Protocol):
    reused: torch.Tensor  # [B] bool: the row started from a handed-in state
    dropped: torch.Tensor  # [B] bool: the solver's safeguard dropped it during this solve

    @classmethod
    def from_rows(cls, z0: torch.Tensor, rows: tuple[torch.Tensor, ...] | None, solver_kwargs: dict) -> SolverState:
        """The state of a solve starting at `z0` [B, ...] from per-row tensors (each
        [B, *row, m], zero columns: nothing) of earlier solves, or empty (`rows` None)."""
        ...

    def columns(self, row_shape: torch.Size | tuple) -> tuple[torch.Tensor, ...]:
        """The state as per-row tensors [B, *row_shape, m] (oldest column first)."""
        ...


def solver_state_type(name: str):
    """The state class of a registered solver whose state can be reused between solves
    (its `state_type` attribute, e.g. BroydenState for "broyden_reuse"), else None."""
    state_type = getattr(get_solver(name), "state_type", None)
    if state_type is not None and not (hasattr(state_type, "from_rows") and hasattr(state_type, "columns")):
        raise TypeError(f"solver {name!r} declares state_type {state_type!r}, which does not implement SolverState")
    return state_type
