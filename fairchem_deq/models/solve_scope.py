"""State that must live for exactly one fixed-point solve.

Inside f(z, x) the same TransBlockV2 modules run once per solver iteration. Two things
must not change between those iterations:

- geometry-only quantities, computed on the first iteration and reused, so an iteration
  costs less than an explicit block: the radial MLPs of the SO(2) convolutions and the
  element embeddings of each edge's atoms feeding them (they depend only on edge lengths
  and elements), and the Wigner-D matrices sliced (and, for the inverse rotation,
  rescaled) to the coefficients a rotation uses (they depend only on the edge frames);
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
from fairchem.core.models.equiformer_v2.so3 import SO3_Rotation
from torch import nn

from .edge_frames import wigner_generators, wigner_with_gradient


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


class SolveCachedEmbedding(_CachedPerSolve, nn.Embedding):
    """The element embeddings of the edges' source and target atoms (attention)."""


class SolveCachedRotation(_SolveScoped, SO3_Rotation):
    """fairchem's SO3_Rotation slices its Wigner-D matrices to the (lmax, mmax) coefficients
    on every call (and rescales the inverse); within a solve the slices are kept per
    (lmax, mmax). A new `set_wigner` (the next structure) drops them, in or out of a solve
    (the backbone sets the edge frames, then embeds the edge degrees with them, before the
    solve starts). fairchem detaches the matrices; frames that carry the positions' gradient
    (energy-gradient forces) get matrices that carry it too (`edge_frames`)."""

    def reset_solve_state(self, active: bool) -> None:
        super().reset_solve_state(active)
        self._slices: dict = {}

    def set_wigner(self, rot_mat3x3):
        super().set_wigner(rot_mat3x3)
        if rot_mat3x3.requires_grad:  # energy-gradient forces: keep the frames' derivative
            self.wigner = wigner_with_gradient(rot_mat3x3, self.wigner, wigner_generators(self.lmax))
            self.wigner_inv = self.wigner.transpose(1, 2)
        self._slices = {}

    def _slice(self, key: tuple, make):
        """The per-solve slice `key`, made by `make()` on its first use. Matrices that carry a
        gradient are sliced apart for grad-enabled calls (the differentiable f call after a
        no-grad solve), as `_CachedPerSolve` does."""
        if self.wigner.requires_grad and torch.is_grad_enabled():
            key = (*key, "with_grad")
        value = self._slices.get(key)
        if value is None:
            value = self._slices[key] = make()
        return value

    def rotate(self, embedding, out_lmax: int, out_mmax: int):
        if not self.solve_active:
            return super().rotate(embedding, out_lmax, out_mmax)
        index = self.mapping.coefficient_idx
        wigner = self._slice(("rotate", out_lmax, out_mmax), lambda: self.wigner[:, index(out_lmax, out_mmax), :])
        return torch.bmm(wigner, embedding)

    def rotate_inv(self, embedding, in_lmax: int, in_mmax: int):
        if not self.solve_active:
            return super().rotate_inv(embedding, in_lmax, in_mmax)

        def make():
            rescale = self.mapping.get_rotate_inv_rescale(in_lmax, in_mmax)
            return self.wigner_inv[:, :, self.mapping.coefficient_idx(in_lmax, in_mmax)] * rescale

        return torch.bmm(self._slice(("rotate_inv", in_lmax, in_mmax), make), embedding)


class FrozenMaskDropout(_FrozenMaskPerSolve, nn.Dropout):
    pass


class FrozenMaskGraphDropPath(_FrozenMaskPerSolve, GraphDropPath):
    pass


class FrozenMaskEquivariantDropout(_FrozenMaskPerSolve, EquivariantDropoutArraySphericalHarmonics):
    pass


# fairchem class -> per-solve subclass; exact type match so subclasses are not mis-swapped
_SCOPED_CLASSES: dict[type, type] = {
    RadialFunction: SolveCachedRadialFunction,
    nn.Embedding: SolveCachedEmbedding,
    SO3_Rotation: SolveCachedRotation,
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
