"""Fixed-budget propagation: k evaluations of f per MD step instead of a converged solve.

Along a trajectory the fixed point moves little from one step to the next. The warm start
z_p (the reuse layer's prediction, linear extrapolation of the last two carried states by
default) is evaluated a fixed number of times, with no convergence loop (issue 23):

- one evaluation: z1 = f(z_p); the heads read the over-relaxed z_p + w (z1 - z_p) with
  w = 1 / (1 - q) (q: the structure's cached contraction estimate, w clipped to
  [1, max_relaxation]): for a contraction the error after one step is almost parallel to
  the step, and this extrapolates along it. The state carried to the next step's
  prediction is z1 itself: a history of over-relaxed states diverges.
- two evaluations: z1 = f(z_p), z2 = f(z1); the output and the carried state are the
  one-step Anderson mix (1 - a) z1 + a z2, a = <r0, r0 - r1> / |r0 - r1|^2 with
  r0 = z1 - z_p, r1 = z2 - z1 (a clipped to [0, max_relaxation]).

The safety net costs no evaluation: the relative residual of the last evaluation times
q / (1 - q) bounds the distance of that evaluation to the fixed point for a q-contraction
(`error_estimate`); a row above `guard` falls back to a converged solve from there (eval_warm
settings), counted in the statistics (`propagated` False). Otherwise a step costs exactly k
evaluations (`nstep` == k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import per_row
from .tracker import EPS, TrackedFunction

PROPAGATIONS = {"one_step": 1, "two_step": 2}


@dataclass(frozen=True)
class Propagation:
    """How a warm-started evaluation is propagated: `evaluations` of f per step (1 or 2),
    the error estimate above which a row falls back to a converged solve (`guard`), and the
    largest over-relaxation / mixing weight (`max_relaxation`)."""

    evaluations: int
    guard: float = 0.05
    max_relaxation: float = 2.0

    def __post_init__(self):
        if self.evaluations not in PROPAGATIONS.values():
            raise ValueError(f"propagation evaluations must be 1 or 2, got {self.evaluations}")
        if not self.guard > 0:
            raise ValueError(f"propagation guard must be > 0, got {self.guard}")
        if not self.max_relaxation >= 1:
            raise ValueError(f"propagation max_relaxation must be >= 1, got {self.max_relaxation}")

    @classmethod
    def named(cls, name: str, **settings) -> Propagation:
        """ "one_step" or "two_step" (`PROPAGATIONS`); a clear error for anything else."""
        if name not in PROPAGATIONS:
            raise ValueError(f"unknown propagation {name!r}; choose one of {sorted(PROPAGATIONS)}")
        return cls(PROPAGATIONS[name], **settings)


def propagate(tracked: TrackedFunction, z_p: torch.Tensor, propagation: Propagation):
    """-> (output the heads read, state carried to the next prediction), both rows like z_p.
    `tracked` records the residuals and the contraction estimate of its evaluations."""
    z1 = tracked(z_p)
    if propagation.evaluations == 1:
        q = tracked.contraction()  # the cached estimate (no secant from one evaluation)
        w = (1.0 / (1.0 - q)).clamp(1.0, propagation.max_relaxation)
        return z_p + per_row(w, z_p).to(z_p.dtype) * (z1 - z_p), z1
    z2 = tracked(z1)
    r0, r1 = (z1 - z_p).flatten(1), (z2 - z1).flatten(1)
    d = r0 - r1
    a = ((r0 * d).sum(dim=1) / (d * d).sum(dim=1).clamp_min(EPS)).clamp(0.0, propagation.max_relaxation)
    mixed = z1 + per_row(a, z1).to(z1.dtype) * (z2 - z1)
    return mixed, mixed
