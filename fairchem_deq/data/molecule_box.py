"""The one rule for molecules: a structure that is not periodic and has no full cell gets a
large cubic box with pbc=False.

fairchem's `radius_graph_pbc` (pure torch; torch-geometric's radius_graph needs pyg-lib)
divides by the cell volume even for non-periodic directions, so every structure needs a
full cell; with pbc=False its size only has to be > 0 (edges stay non-periodic). The
converter (`readers`) and the calculator's batches (`atoms_graphs`) apply this same rule.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

# Edge of the cubic box given to molecules (Å)
MOLECULE_CELL = 50.0


def needs_molecule_box(atoms: Atoms) -> bool:
    return not atoms.pbc.any() and atoms.cell.rank < 3


def molecule_box(edge: float = MOLECULE_CELL) -> np.ndarray:
    """The cell matrix of the box."""
    return np.eye(3) * edge


def with_molecule_box(atoms: Atoms, edge: float = MOLECULE_CELL, copy: bool = True) -> Atoms:
    """`atoms` with the molecule box where the rule applies (a copy unless `copy=False`), else
    `atoms` itself."""
    if not needs_molecule_box(atoms):
        return atoms
    atoms = atoms.copy() if copy else atoms
    atoms.set_cell(molecule_box(edge))
    return atoms
