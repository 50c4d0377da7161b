"""EquiformerV2's modules that keep state for one fixed-point solve (`fairchem_deq.solve.scope`).

Inside the DEQ blocks: the radial MLPs of the SO(2) convolutions and the element
embeddings feeding them (edge lengths and elements only), the Wigner-D matrices sliced to
the coefficients a rotation uses (edge frames only) are computed once per solve; dropout,
drop path and equivariant dropout masks are drawn once per solve and replayed. Rather than
copying fairchem's modules, the instances get their class swapped to these subclasses
(`attach_per_solve_modules`); parameter names and state dicts stay exactly fairchem's.
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

from fairchem_deq.solve.scope import CachedPerSolve, FrozenMaskPerSolve, SolveScoped, attach_solve_scope

from .edge_frames import wigner_generators, wigner_with_gradient


class SolveCachedRadialFunction(CachedPerSolve, RadialFunction):
    pass


class SolveCachedEmbedding(CachedPerSolve, nn.Embedding):
    """The element embeddings of the edges' source and target atoms (attention)."""


class SolveCachedRotation(SolveScoped, SO3_Rotation):
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
        no-grad solve), as `CachedPerSolve` does."""
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


class FrozenMaskDropout(FrozenMaskPerSolve, nn.Dropout):
    pass


class FrozenMaskGraphDropPath(FrozenMaskPerSolve, GraphDropPath):
    pass


class FrozenMaskEquivariantDropout(FrozenMaskPerSolve, EquivariantDropoutArraySphericalHarmonics):
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


def attach_per_solve_modules(module: nn.Module) -> list[SolveScoped]:
    """The per-solve subclasses swapped in for fairchem's modules inside `module`."""
    return attach_solve_scope(module, _SCOPED_CLASSES)
