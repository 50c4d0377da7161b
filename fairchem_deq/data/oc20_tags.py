"""OC20 atom tags rebuilt from a FixAtoms constraint, for relaxations whose stored tags are all 0.

OC20 tags atoms 0 (fixed subsurface slab), 1 (free surface slab) and 2 (adsorbate). Raw
relaxation trajectories keep only the FixAtoms constraint, so tags are rebuilt heuristically:
fixed -> 0, free C/H/O/N -> 2, any other free atom -> 1. The heuristic mislabels free slab
atoms of C, H, O or N (carbides, nitrides, hydrides, oxides) as adsorbate; the official OC20
tags come from the generation metadata, which these files do not carry.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

# H, C, N, O: the elements of OC20 adsorbates.
ADSORBATE_ELEMENTS = frozenset({1, 6, 7, 8})
SUBSURFACE, SURFACE, ADSORBATE = 0, 1, 2


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """Boolean mask of atoms fixed by FixAtoms constraints (other constraint types ignored)."""
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.get_indices()] = True
    return mask


def oc20_tags(atoms: Atoms) -> np.ndarray:
    """Tags per atom: 0 fixed, 2 free C/H/O/N (adsorbate), 1 other free atoms (surface)."""
    fixed = fixed_mask(atoms)
    adsorbate = np.isin(atoms.get_atomic_numbers(), sorted(ADSORBATE_ELEMENTS))
    return np.where(fixed, SUBSURFACE, np.where(adsorbate, ADSORBATE, SURFACE)).astype(np.int64)
