"""State that must live for exactly one fixed-point solve.

Inside f(z, x) the same TransBlockV2 modules run once per solver iteration. Two things
must not change between those iterations:

- geometry-only quantities (the radial MLPs of the SO(2) convolutions depend only on edge
  lengths and elements): computed on the first iteration and reused, so an iteration
  costs less than an explicit block;
- dropout masks (attention dropout, drop path, projection dropout): drawn once per solve
  and replayed, so f stays one fixed function and the fixed point exists ("variational"
  dropout in the DEQ literature).

Rather than copying fairchem's modules, the instances inside the DEQ blocks get their
class swapped to a subclass that adds this behaviour (`attach_solve_scope`); parameter
names and state dicts stay exactly fairchem's.
"""

from __future__ import annotations

import torch
from fairchem.core.models.equiformer_v2.drop import (
    EquivariantDropoutArraySphericalHarmonics,
    GraphDropPath,
)
from fairchem.core.models.equiformer_v2.radial_function import RadialFunction
from torch import nn


class _SolveScoped:
    """Mixin for modules that keep state for one solve; inert outside a solve."""

    def reset_solve_state(self, active: bool) -> None:
        self._solve_active = active

    def start_iteration(self) -> None:
        pass

    @property
    def solve_active(self) -> bool:
        return getattr(self, "_solve_active", False)


class _CachedPerSolve(_SolveScoped):
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


class _FrozenMaskPerSolve(_SolveScoped):
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


class SolveCachedRadialFunction(_CachedPerSolve, RadialFunction):
    pass


class FrozenMaskDropout(_FrozenMaskPerSolve, nn.Dropout):
    pass


class FrozenMaskGraphDropPath(_FrozenMaskPerSolve, GraphDropPath):
    pass


class FrozenMaskEquivariantDropout(_FrozenMaskPerSolve, EquivariantDropoutArraySphericalHarmonics):
    pass


# fairchem class -> per-solve subclass; exact type match so subclasses are not mis-swapped
_SCOPED_CLASSES: dict[type, type] = {
    RadialFunction: SolveCachedRadialFunction,
    nn.Dropout: FrozenMaskDropout,
    GraphDropPath: FrozenMaskGraphDropPath,
    EquivariantDropoutArraySphericalHarmonics: FrozenMaskEquivariantDropout,
}


def attach_solve_scope(module: nn.Module) -> list[_SolveScoped]:
    """Swaps the classes of per-solve modules inside `module`; returns them."""
    scoped = []
    for sub in module.modules():
        new_cls = _SCOPED_CLASSES.get(type(sub))
        if new_cls is not None:
            sub.__class__ = new_cls
        if isinstance(sub, _SolveScoped):
            sub.reset_solve_state(active=False)
            scoped.append(sub)
    return scoped


class SolveScope:
    """Starts a solve (fresh caches and masks) and marks each iteration of f.

    State is kept after the solve returns, because TorchDEQ's implicit backward calls f
    again during loss.backward() and must see the same masks; it is dropped at the start
    of the next solve.
    """

    def __init__(self, modules: list[_SolveScoped]):
        self.modules = modules

    def start_solve(self) -> None:
        for m in self.modules:
            m.reset_solve_state(active=True)

    def start_iteration(self) -> None:
        for m in self.modules:
            m.start_iteration()
