"""The implicit derivative of a fixed point, with an adjoint solve that can start warm.

Energy-gradient forces differentiate E(z*(pos), pos). Through z* = f(z*, pos) that needs the
adjoint g solving g = J_f(z*)^T g + dE/dz (implicit function theorem; TorchDEQ's IFT
backward), one vector-Jacobian product of f per iteration. TorchDEQ starts that solve from
zero. Along a trajectory dE/dz and J_f change little from one step to the next, so the
previous step's adjoint is a good start: `attach_adjoint` returns f(z*) with a backward
that starts from `AdjointRecord.initial` (per solver row; zero rows: cold) and writes the
solution and TorchDEQ's statistics back into the record, where the caller picks them up
after the gradient was taken (the record outlives the forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import autograd


@dataclass
class AdjointRecord:
    """One backward solve: where it starts (`initial`, solver rows [B, n_max, ...] like the
    fixed point; None: zeros) and, once the gradient has been taken, its `solution` (same
    shape, detached) and `stats` (TorchDEQ's solver statistics, per row)."""

    initial: torch.Tensor | None = None
    solution: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)
    unpad: object = None  # rows -> per-atom tensor (the solve's layout), set by the owner

    def per_atom(self) -> torch.Tensor | None:
        """The solution per atom [n_atoms, ...] (None before the gradient was taken)."""
        if self.solution is None:
            return None
        return self.solution if self.unpad is None else self.unpad(self.solution)


class _ImplicitAdjoint(torch.autograd.Function):
    """Identity on f(z*) forward; backward replaces the incoming gradient v by the adjoint
    g = J^T g + v, solved by `solver` from the record's initial guess."""

    @staticmethod
    def forward(ctx, f_of_z, z_star, f, solver, solver_kwargs, record):
        ctx.f, ctx.solver, ctx.solver_kwargs, ctx.record = f, solver, solver_kwargs, record
        ctx.save_for_backward(z_star)
        return f_of_z.view_as(f_of_z)

    @staticmethod
    def backward(ctx, grad):
        (z_star,) = ctx.saved_tensors
        record = ctx.record
        z = z_star.detach().requires_grad_()
        with torch.enable_grad():
            fz = ctx.f(z)

        def adjoint_map(y):
            return autograd.grad(fz, z, y, retain_graph=True)[0] + grad

        start = torch.zeros_like(grad)
        if record.initial is not None and record.initial.shape == grad.shape:
            start = record.initial.to(grad.dtype)
        solution, _, info = ctx.solver(adjoint_map, start, **ctx.solver_kwargs)
        record.solution = solution.detach()
        record.stats = {k: v.detach() for k, v in info.items() if torch.is_tensor(v)}
        return solution, None, None, None, None, None


def attach_adjoint(f, z_star: torch.Tensor, solver, solver_kwargs: dict, record: AdjointRecord) -> torch.Tensor:
    """f(z*) with a graph to f's inputs whose backward solves the adjoint warm (see module)."""
    z_star = z_star.detach()
    return _ImplicitAdjoint.apply(f(z_star), z_star, f, solver, solver_kwargs, record)
