"""A dataset format is one reader and one table entry; molecules get their box by one rule."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from conftest import ethanol_atoms

from fairchem_deq.data import readers
from fairchem_deq.data.atoms_graphs import atoms_to_batch
from fairchem_deq.data.molecule_box import MOLECULE_CELL, with_molecule_box


def test_a_new_format_is_one_table_entry(monkeypatch, tmp_path):
    """A reader registered in READERS is detected by its suffix, read by read_frames, offered
    by the converter's CLI and found in a folder of inputs."""
    from fairchem_deq.cli.main import _subcommand_parser
    from fairchem_deq.data.convert import expand_inputs

    frames = ethanol_atoms([0, 1])

    def read_pickle(path, *, units, molecule_cell, max_num_elements):
        return frames

    monkeypatch.setitem(readers.READERS, "pickle", readers.Reader("pickle", (".pkl",), read_pickle))
    path = tmp_path / "frames.pkl"
    path.write_bytes(b"")
    assert readers.detect_format(path) == "pickle"
    assert readers.read_frames(path) is frames
    assert expand_inputs([tmp_path]) == [path]
    args = _subcommand_parser().parse_args(["convert", str(path), "--out", str(tmp_path / "out"), "--format", "pickle"])
    assert args.format == "pickle"


@pytest.mark.parametrize("cell", [None, np.diag([10.0, 0.0, 0.0])])
def test_molecules_get_the_same_box_in_the_converter_and_the_calculator(cell, tmp_path):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], pbc=False)
    if cell is not None:
        atoms.set_cell(cell)  # a partial cell of a non-periodic structure: still a molecule
    atoms.info["energy"] = -1.0
    atoms.arrays["forces"] = np.zeros((3, 3))
    path = tmp_path / "water.extxyz"
    atoms.write(path, format="extxyz")
    converted = readers.read_frames(path)[0]
    batch = atoms_to_batch([atoms])
    expected = np.eye(3) * MOLECULE_CELL
    np.testing.assert_allclose(np.asarray(converted.cell), expected)
    np.testing.assert_allclose(batch.cell[0].numpy(), expected)
    periodic = Atoms("H", cell=np.eye(3) * 3.0, pbc=True)
    assert with_molecule_box(periodic) is periodic
