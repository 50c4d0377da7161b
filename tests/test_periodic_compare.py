"""The minimum-image comparison the periodic tests rely on, on a real OC20 slab."""

from __future__ import annotations

import numpy as np
from conftest import oc20_atoms
from periodic import mic_displacements


def test_an_atom_wrapped_across_the_cell_face_has_not_moved():
    atoms = oc20_atoms("random1000156.traj")
    moved = atoms.positions.copy()
    moved[:2] += atoms.cell[0]  # what fairchem's wrapping does to atoms at fractional x ~ 0
    moved[2] += [0.03, 0.0, 0.04]
    d = mic_displacements(moved, atoms.positions, atoms.cell, atoms.pbc)
    assert np.abs(moved - atoms.positions).max() > 10  # raw difference: a lattice vector
    np.testing.assert_allclose(d[:2], 0.0, atol=1e-9)
    np.testing.assert_allclose(d[2], 0.05, atol=1e-9)
