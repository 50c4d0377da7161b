"""MD stability by Fu et al. 2023 (fairchem_deq.simulate.stability): a run has collapsed at
the first step where a covalent bond deviates from its mean length over the reference (DFT)
frames by more than 0.5 Å; h(r) error of a trajectory against the reference. Real data:
the bundled MD17 ethanol frames and an OC20 slab; cheap stand-in calculators for the MD."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from conftest import DATA, ethanol_atoms, oc20_atoms

from fairchem_deq.simulate.md import run_md
from fairchem_deq.simulate.stability import (
    BondReference,
    distance_histogram,
    distance_histogram_error,
)

NPZ = DATA / "md17_ethanol_300.npz"
C0_H3 = 2  # ethanol atoms: C0 C1 O2 H3..H8; pair (0, 3) is row 2 of the sorted bond pairs


@pytest.fixture(scope="module")
def reference():
    return BondReference.from_file(NPZ)


@pytest.fixture(scope="module")
def dft_positions():
    return np.load(NPZ)["R"]


class Pull(Calculator):
    """A constant force `force` (eV/Å, a 3-vector) on one atom, none on the others; zero
    force (`force=0`) lets atoms fly straight at their velocities."""

    implemented_properties = ("energy", "forces")

    def __init__(self, atom: int, force, start: np.ndarray) -> None:
        super().__init__()
        self.atom, self.force, self.start = atom, np.asarray(force, dtype=float), start

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = np.zeros((len(self.atoms), 3))
        forces[self.atom] = self.force
        energy = -float(self.force @ (self.atoms.positions[self.atom] - self.start[self.atom]))
        self.results = {"energy": energy, "forces": forces}


def test_reference_holds_the_eight_covalent_bonds_of_ethanol_at_their_dft_mean_lengths(reference, dft_positions):
    z = np.load(NPZ)["z"]
    assert np.array_equal(reference.species, z)
    assert reference.pairs.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4], [1, 5], [1, 6], [1, 7], [2, 8]]
    kinds = sorted("".join(sorted(f"{z[i]}-{z[j]}".split("-"))) for i, j in reference.pairs)
    assert kinds == ["16", "16", "16", "16", "16", "18", "66", "68"]  # O-H, C-C, C-O, five C-H
    i, j = reference.pairs.T
    means = np.linalg.norm(dft_positions[:, j] - dft_positions[:, i], axis=-1).mean(axis=0)
    np.testing.assert_allclose(reference.mean_lengths, means, rtol=0, atol=1e-12)
    assert "8 covalent bonds of C2H6O" in reference.description and "300 reference frames" in reference.description
    with pytest.raises(ValueError):  # frozen
        reference.mean_lengths[0] = 2.0


def test_dft_frames_are_not_collapsed_and_a_c_h_bond_stretched_by_0_6_is(reference):
    for atoms in ethanol_atoms([0, 150, 299]):
        assert 0.0 < reference.max_deviation(atoms) < 0.5 and not reference.collapsed(atoms)
    atoms = ethanol_atoms([0])[0]
    c, h = atoms.positions[0], atoms.positions[3]
    length = np.linalg.norm(h - c)
    atoms.positions[3] = c + (h - c) * (length + 0.6) / length
    expected = length + 0.6 - reference.mean_lengths[C0_H3]
    assert reference.max_deviation(atoms) == pytest.approx(expected, abs=1e-9)
    assert reference.collapsed(atoms) and not reference.collapsed(atoms, threshold=expected + 1e-6)
    deviation, sentence = reference.worst_bond(atoms)
    assert deviation == pytest.approx(expected, abs=1e-9)
    assert "bond C0-H3 (atoms 0 and 3)" in sentence
    assert f"{length + 0.6:.2f} Å long" in sentence and f"mean {reference.mean_lengths[C0_H3]:.2f} Å" in sentence


def test_a_structure_with_other_atoms_is_refused(reference):
    other = ethanol_atoms([0])[0]
    other.numbers[8] = 9  # the hydroxyl H as F
    with pytest.raises(ValueError, match="does not hold the atoms of the bond reference C2H6O"):
        reference.max_deviation(other)
    with pytest.raises(ValueError, match="9 atoms"):
        reference.collapsed(ethanol_atoms([0])[0][:8])
    swapped = ethanol_atoms([0])[0][[2, 0, 1, 3, 4, 5, 6, 7, 8]]  # O first: another order
    with pytest.raises(ValueError, match="same order"):
        reference.max_deviation(swapped)
    with pytest.raises(ValueError, match="does not hold"):
        run_md(other, Pull(0, np.zeros(3), other.positions), steps=2, progress=False, bond_reference=reference)


def test_saved_references_and_other_file_formats_read_back_the_same(reference, tmp_path):
    import ase.io

    saved = reference.save(tmp_path / "ref.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.json"]  # no partial file left
    for loaded in (BondReference.load(saved), BondReference.from_file(saved)):
        assert np.array_equal(loaded.pairs, reference.pairs) and np.array_equal(loaded.species, reference.species)
        assert np.array_equal(loaded.mean_lengths, reference.mean_lengths)
        assert loaded.description == reference.description
    frames = ethanol_atoms(range(0, 300, 30))
    for atoms in frames:
        atoms.calc = None
    ase.io.write(tmp_path / "frames.xyz", frames)  # plain xyz: positions only
    from_xyz = BondReference.from_file(tmp_path / "frames.xyz")
    direct = BondReference.from_frames(frames)
    assert np.array_equal(from_xyz.pairs, direct.pairs)
    np.testing.assert_allclose(from_xyz.mean_lengths, direct.mean_lengths, atol=1e-6)
    one = BondReference.from_file(f"{tmp_path / 'frames.xyz'}@3")
    np.testing.assert_allclose(one.mean_lengths, BondReference.from_frames([frames[3]]).mean_lengths, atol=1e-6)
    assert not np.allclose(one.mean_lengths, direct.mean_lengths, atol=1e-6)
    sliced = BondReference.from_file(f"{NPZ}@::30")
    np.testing.assert_allclose(sliced.mean_lengths, direct.mean_lengths, rtol=0, atol=1e-12)
    (tmp_path / "other.json").write_text(json.dumps({"pairs": [[0, 1]]}))
    with pytest.raises(ValueError, match="not a saved BondReference"):
        BondReference.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="no such file"):
        BondReference.from_file(tmp_path / "missing.xyz")


def test_periodic_structures_use_the_minimum_image():
    slab = oc20_atoms()
    assert slab.pbc.all()
    reference = BondReference.from_frames([slab])
    assert len(reference.pairs) > 0 and reference.max_deviation(slab) < 1e-9
    wrapped = slab.copy()
    wrapped.translate(0.5 * wrapped.cell[0] + 0.3 * wrapped.cell[1])
    wrapped.wrap()
    # without the minimum image, bonds across the cell boundary would be cell-length long
    i, j = reference.pairs.T
    plain = np.linalg.norm(wrapped.positions[j] - wrapped.positions[i], axis=1)
    assert np.abs(plain - reference.mean_lengths).max() > 5.0
    assert reference.max_deviation(wrapped) < 1e-9 and not reference.collapsed(wrapped)
    assert np.array_equal(BondReference.from_frames([wrapped]).pairs, reference.pairs)
    assert distance_histogram_error(wrapped, slab) < 1e-9


def test_distance_histogram_error_is_zero_against_itself_and_positive_against_a_perturbed_copy(dft_positions):
    frames = ethanol_atoms(range(0, 300, 10))
    h = distance_histogram(frames)
    assert h.shape == (100,) and h.sum() == pytest.approx(1.0, abs=1e-12)  # ethanol: every distance < 10 Å
    iu = np.triu_indices(9, 1)
    d = np.linalg.norm(dft_positions[::10, :, None] - dft_positions[::10, None, :], axis=-1)[:, iu[0], iu[1]]
    expected = np.histogram(d.ravel(), bins=np.linspace(0, 10, 101))[0] / d.size
    np.testing.assert_allclose(h, expected, rtol=0, atol=1e-15)
    assert distance_histogram_error(frames, frames) == 0.0
    rng = np.random.default_rng(0)
    perturbed = [Atoms(a.numbers, a.positions + rng.normal(0, 0.1, a.positions.shape)) for a in frames]
    error = distance_histogram_error(perturbed, frames)
    h_perturbed = distance_histogram(perturbed)
    assert error == pytest.approx(100 * np.abs(h_perturbed - h).mean(), rel=1e-12) and 0.0 < error < 2.0
    coarse = distance_histogram(frames, bin_width=0.5, r_max=5.0)
    assert coarse.shape == (10,)
    with pytest.raises(ValueError):
        distance_histogram([], 0.1, 10.0)


def _flying_hydrogen(speed_A_per_fs: float) -> Atoms:
    """Ethanol frame 0 at rest but for H3, moving away from C0 along their bond."""
    atoms = ethanol_atoms([0])[0]
    atoms.calc = None
    bond = atoms.positions[3] - atoms.positions[0]
    velocities = np.zeros((9, 3))
    velocities[3] = bond / np.linalg.norm(bond) * speed_A_per_fs / units.fs
    atoms.set_velocities(velocities)
    return atoms


def test_run_md_stops_at_the_first_step_a_bond_leaves_its_reference_mean(reference, tmp_path):
    speed, dt = 0.0094, 0.5  # Å/fs, fs: H3 moves 0.0047 Å a step, straight (no forces)
    atoms = _flying_hydrogen(speed)
    start = np.linalg.norm(atoms.positions[3] - atoms.positions[0])
    # the C0-H3 deviation at step k is start + 0.0047 k - mean; the other bonds stay put (< 0.5)
    deviation = start + speed * dt * np.arange(400) - reference.mean_lengths[C0_H3]
    expected = int(np.argmax(deviation > 0.5))
    calc = Pull(3, np.zeros(3), atoms.positions)
    report = run_md(
        atoms,
        calc,
        steps=400,
        timestep_fs=dt,
        init_velocities=False,
        progress=False,
        bond_reference=reference,
        log=tmp_path / "md.csv",
    )
    assert 50 < expected < 200 and report.unphysical_step == expected == report.steps_run
    assert report.unphysical_reason.startswith("bond C0-H3 (atoms 0 and 3)") and "Fu et al." in report.unphysical_reason
    assert report.stop_criteria["max_bond_deviation_A"] == 0.5
    assert report.stop_criteria["bond_reference"] == reference.description
    np.testing.assert_allclose(
        [r["max_bond_deviation_A"] for r in report.rows[-3:]], deviation[expected - 2 : expected + 1], atol=1e-9
    )
    assert report.max_bond_deviation_A == pytest.approx(deviation[expected], abs=1e-9)
    with open(tmp_path / "md.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["max_bond_deviation_A"]) == pytest.approx(deviation[expected], abs=1e-9)
    # a looser threshold holds longer; the starting-structure criterion is another one
    looser = run_md(
        atoms, calc, steps=400, init_velocities=False, progress=False, bond_reference=reference, max_bond_deviation=0.8
    )
    assert looser.unphysical_step == int(np.argmax(deviation > 0.8)) > expected
    stretch = run_md(atoms, calc, steps=400, init_velocities=False, progress=False, max_bond_stretch=0.5)
    assert stretch.unphysical_step == int(np.argmax(speed * dt * np.arange(400) > 0.5)) != expected
    assert stretch.stop_criteria["bond_reference"] is None and stretch.rows[-1]["max_bond_deviation_A"] is None


def test_md_command_stops_at_the_reference_criterion(reference, tmp_path, monkeypatch, capsys):
    """`fairchem-deq md --bond-reference FILE --max-bond-deviation X`, the model replaced by a
    constant force pulling H3 off C0 (the command's own parsing, outputs and errors)."""
    import fairchem_deq.cli.md as md_cli
    from fairchem_deq.cli.main import main

    start = ethanol_atoms([0])[0]
    start.calc = None
    pull = (start.positions[3] - start.positions[0]) / np.linalg.norm(start.positions[3] - start.positions[0])
    loaded = []

    def load(args, **_calculator_options):
        loaded.append(args)
        return Pull(3, 2.0 * pull, start.positions), start.copy()

    monkeypatch.setattr(md_cli, "load_calculator_and_structure", load)
    saved = reference.save(tmp_path / "ethanol_bonds.json")
    common = ["md", "--checkpoint", "unused.pt", "--structure", str(NPZ), "--temperature", "0", "--steps", "200"]
    reports = []
    for i, ref_file in enumerate((NPZ, saved)):
        out = tmp_path / f"md{i}"
        args = [*common, "--bond-reference", str(ref_file), "--max-bond-deviation", "0.3", "--out", str(out)]
        assert main([*args, "--no-progress"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    capsys.readouterr()
    assert reports[0] == {**reports[1], "trajectory": reports[0]["trajectory"], "log": reports[0]["log"]}
    report = reports[0]
    assert report["unphysical_reason"].startswith("bond C0-H3") and 0 < report["unphysical_step"] < 200
    assert report["stop_criteria"]["max_bond_deviation_A"] == 0.3
    assert report["stop_criteria"]["bond_reference"] == reference.description
    assert 0.3 < report["max_bond_deviation_A"] < 0.4
    # without the flag the same run is not stopped by it
    assert main([*common, "--steps", "5", "--out", str(tmp_path / "plain"), "--no-progress"]) == 0
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert plain["stop_criteria"]["bond_reference"] is None and plain["max_bond_deviation_A"] is None
    # a reference of other atoms, and a missing file: one-line user errors (rc 2), nothing written
    slab = DATA / "random1000156.traj"
    for bad, why in ((f"{slab}@0", "does not hold the atoms"), (str(tmp_path / "missing.npz"), "no such file")):
        out = tmp_path / "bad"
        assert main([*common, "--bond-reference", bad, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err and not out.exists()
