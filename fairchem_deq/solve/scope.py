"""Per-solve state: what must live for exactly one fixed-point solve.

Inside f(z, x) the same modules run once per solver iteration. Two things must not change
between those iterations: geometry-only quantities (computed on the first iteration and
reused, so an iteration costs less than an explicit block), and dropout masks (drawn once
per solve and replayed, so f stays one fixed function and the fixed point exists). The
mixins here give a module that behaviour (`CachedPerSolve`, `FrozenMaskPerSolve`);
`attach_solve_scope` swaps module classes for such subclasses through a table (the
EquiformerV2 one: `fairchem_deq.models.per_solve_modules`), and `SolveScope` starts each
solve and marks each iteration (the solver calls it from inside f).
"""

from __future__ import annotations

import torch
from torch import nn


class SolveScoped:
    """Mixin for modules that keep state for one solve; inert outside a solve."""

    def reset_solve_state(self, active: bool) -> None:
        self._solve_active = active

    def start_iteration(self) -> None:
        pass

    @property
    def solve_active(self) -> bool:
        return getattr(self, "_solve_active", False)


class CachedPerSolve(SolveScoped):
    """Computes its output once per solve (inputs are geometry-only by construction).

    A value computed without autograd is recomputed once when a grad-enabled call arrives
    (the final differentiable f call after a no-grad solve); a grad-enabled value serves
    both kinds of call.
    """

    def reset_solve_state(self, active: bool) -> None:
        super().reset_solve_state(active)
        self._cached = None
        self._cached_with_grad = False

    def forward(self, *args):
        if not self.solve_active:
            return super().forward(*args)
        cached = getattr(self, "_cached", None)
        if cached is not None and (self._cached_with_grad or not torch.is_grad_enabled()):
            return cached
        out = super().forward(*args)
        self._cached, self._cached_with_grad = out, torch.is_grad_enabled()
        return out


class FrozenMaskPerSolve(SolveScoped):
    """Draws each dropout mask on the first iteration of a solve and replays it after.

    The mask is what the wrapped fairchem module does to a tensor of ones (so its scaling
    and per-graph / per-channel structure are fairchem's own). A module called several
    times per iteration (drop path after attention and after the FFN) keeps one mask per
    call position.
    """

    def reset_solve_state(self, active: bool) -> None:
        super().reset_solve_state(active)
        self._masks: list[torch.Tensor] = []
        self._call = 0

    def start_iteration(self) -> None:
        self._call = 0

    def forward(self, x, *args):
        if not self.training or not self.solve_active:
            return super().forward(x, *args)
        if self._call < len(self._masks):
            mask = self._masks[self._call]
        else:
            with torch.no_grad():
                mask = super().forward(torch.ones_like(x), *args)
            self._masks.append(mask)
        self._call += 1
        return x * mask


def attach_solve_scope(module: nn.Module, classes: dict[type, type]) -> list[SolveScoped]:
    """Swaps the class of each module inside `module` found in `classes` (exact type ->
    per-solve subclass; exact, so subclasses are not mis-swapped); returns the per-solve ones."""
    scoped = []
    for sub in module.modules():
        new_cls = classes.get(type(sub))
        if new_cls is not None:
            sub.__class__ = new_cls
        if isinstance(sub, SolveScoped):
            sub.reset_solve_state(active=False)
            scoped.append(sub)
    return scoped


class SolveScope:
    """Starts a solve (fresh caches and masks) and marks each iteration of f.

    State is kept after the solve returns, because TorchDEQ's implicit backward calls f
    again during loss.backward() and must see the same masks; it is dropped at the start
    of the next solve.
    """

    def __init__(self, modules: list[SolveScoped]):
        self.modules = modules

    def start_solve(self) -> None:
        for m in self.modules:
            m.reset_solve_state(active=True)

    def start_iteration(self) -> None:
        for m in self.modules:
            m.start_iteration()
