"""Data conversion: npz/extxyz/traj -> split fairchem LMDBs, read back with fairchem's LmdbDataset.

Uses only the real data in tests/data (see tests/data/PROVENANCE.md); malformed inputs are made
from those files in tmp_path.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io.trajectory import Trajectory as AseTrajectory
from periodic import mic_displacements

from fairchem_deq.data import (
    DatasetFormatError,
    SplitError,
    convert,
    oc20_tags,
    paper_split,
    read_npz,
)

DATA = Path(__file__).parent / "data"
NPZ = DATA / "md17_ethanol_300.npz"
TRAJS = [DATA / "random1000156.traj", DATA / "random1000163.traj"]
KCAL_MOL_IN_EV = 0.0433641
REPO = Path(__file__).resolve().parents[1]
# the module, not the function `fairchem_deq.data.convert` that shadows it as a package attribute
convert_module = importlib.import_module("fairchem_deq.data.convert")


def load(split_dir: Path):
    from fairchem.core.datasets import LmdbDataset

    dataset = LmdbDataset({"src": str(split_dir)})
    return dataset, [dataset[i] for i in range(len(dataset))]


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f"{name}."))


@pytest.fixture(scope="module")
def md17():
    with np.load(NPZ) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def md17_lmdb(tmp_path_factory):
    out = tmp_path_factory.mktemp("md17") / "lmdb"
    counts = convert(NPZ, out, n_train=200, n_val=20, seed=0, progress=False)
    return out, counts


# --------------------------------------------------------------------------- npz


def test_npz_paper_split_read_back(md17_lmdb, md17):
    out, counts = md17_lmdb
    assert counts == {"train": 200, "val": 20, "test": 80}
    assert sorted(p.name for p in out.iterdir()) == ["conversion.json", "test", "train", "val"]
    seen = []
    for name, count in counts.items():
        assert sorted(p.name for p in (out / name).iterdir()) == ["data.lmdb", "metadata.npz"]
        dataset, items = load(out / name)
        assert len(dataset) == count
        fids = np.array([int(d.fid) for d in items])
        assert np.all(np.diff(fids) > 0), f"{name} is not in time order"
        seen.append(fids)
        for d in items:
            fid = int(d.fid)
            assert d.sid.dtype == torch.long and d.fid.dtype == torch.long
            assert d.sid.tolist() == [0] and d.fid.shape == (1,)
            assert d.natoms == 9
            assert d.atomic_numbers.tolist() == md17["z"].tolist()
            np.testing.assert_allclose(d.pos.numpy(), md17["R"][fid], atol=1e-6)
            np.testing.assert_allclose(d.energy, md17["E"][fid, 0] * KCAL_MOL_IN_EV, rtol=1e-6)
            np.testing.assert_allclose(d.forces.numpy(), md17["F"][fid] * KCAL_MOL_IN_EV, rtol=1e-5, atol=1e-6)
            assert d.cell.shape == (1, 3, 3)
            np.testing.assert_allclose(d.cell[0].numpy(), 50.0 * np.eye(3))
            assert d.pbc.tolist() == [[False, False, False]]
            assert d.tags.tolist() == [0] * 9 and d.fixed.tolist() == [0] * 9
        metadata = np.load(out / name / "metadata.npz")
        assert metadata["natoms"].dtype == np.int32
        assert metadata["natoms"].tolist() == [9] * count
        assert dataset.get_metadata("natoms", count - 1) == 9
    # disjoint, covering every frame once; train is drawn at random, not the first 200 frames
    assert sorted(np.concatenate(seen).tolist()) == list(range(300))
    train, _val, test = seen
    assert train.max() >= 200 and test.min() < 200
    # the rest is test, in time order, and the split is reproducible from the seed
    expected = paper_split(300, 200, 20, seed=0)
    for name, fids in zip(("train", "val", "test"), seen):
        assert fids.tolist() == expected[name].tolist()


def test_energy_unit_factor():
    from ase import units

    assert units.kcal / units.mol == pytest.approx(KCAL_MOL_IN_EV, rel=1e-5)


def test_npz_keep_kcal_mol_and_1d_energies(tmp_path, md17):
    src = tmp_path / "ethanol_1d.npz"
    np.savez(src, R=md17["R"][:30], z=md17["z"], E=md17["E"][:30, 0], F=md17["F"][:30])
    counts = convert(src, tmp_path / "out", units="kcal/mol", split="none", progress=False)
    assert counts == {"all": 30}
    _, items = load(tmp_path / "out" / "all")
    assert [int(d.fid) for d in items] == list(range(30))
    np.testing.assert_allclose([d.energy for d in items], md17["E"][:30, 0], rtol=1e-12)
    np.testing.assert_allclose(items[7].forces.numpy(), md17["F"][7], rtol=1e-5, atol=1e-5)


def test_npz_unit_keys_are_honoured(tmp_path, md17):
    """An sGDML npz that declares e_unit='eV' is not scaled again."""
    src = tmp_path / "ev.npz"
    energies_ev = md17["E"][:5] * KCAL_MOL_IN_EV
    np.savez(src, R=md17["R"][:5], z=md17["z"], E=energies_ev, F=md17["F"][:5], e_unit="eV", r_unit="Ang")
    frames = read_npz(src)
    assert frames[2].get_potential_energy() == pytest.approx(float(energies_ev[2, 0]))
    np.savez(src, R=md17["R"][:5], z=md17["z"], E=energies_ev, F=md17["F"][:5], e_unit="furlong")
    with pytest.raises(DatasetFormatError, match="furlong"):
        read_npz(src)


def test_paper_split_properties():
    parts = paper_split(300, 200, 20, seed=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [200, 20, 80]
    assert paper_split(300, 200, 20, seed=4)["train"].tolist() != parts["train"].tolist()
    with pytest.raises(SplitError):
        paper_split(300, 290, 20)


def test_default_paper_split_too_big_for_300_frames(tmp_path):
    with pytest.raises(SplitError, match="950"):
        convert(NPZ, tmp_path / "out", progress=False)  # 950 + 50 > 300
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


def test_lmdb_map_grows_when_full(tmp_path, monkeypatch, md17):
    """A map far too small for the data is doubled as needed; commits in small chunks work."""
    writer = importlib.import_module("fairchem_deq.data.lmdb_writer")
    monkeypatch.setattr(writer, "_INITIAL_MAP_SIZE", 1 << 16)
    monkeypatch.setattr(writer, "_COMMIT_EVERY", 7)
    assert convert(NPZ, tmp_path / "g", split="none", progress=False) == {"all": 300}
    assert (tmp_path / "g" / "all" / "data.lmdb").stat().st_size > 1 << 16
    dataset, items = load(tmp_path / "g" / "all")
    assert len(dataset) == 300 and [int(d.fid) for d in items] == list(range(300))
    np.testing.assert_allclose(items[-1].pos.numpy(), md17["R"][-1], atol=1e-6)


def test_molecule_graph_is_non_periodic(md17_lmdb):
    """A batch of two molecules gets pbc [2, 3] and only zero-offset edges from radius_graph_pbc."""
    from fairchem.core.common.utils import radius_graph_pbc
    from fairchem.core.datasets import data_list_collater

    out, _ = md17_lmdb
    _, items = load(out / "val")
    batch = data_list_collater(items[:2], otf_graph=True)
    assert batch.pbc.shape == (2, 3) and batch.sid.shape == (2,) and batch.cell.shape == (2, 3, 3)
    edge_index, cell_offsets, _ = radius_graph_pbc(batch, 2.0, 50)
    assert torch.all(cell_offsets == 0)
    dist = torch.cdist(batch.pos, batch.pos)
    same = batch.batch[:, None] == batch.batch[None, :]
    expected = int(((dist <= 2.0) & same & ~torch.eye(len(dist), dtype=torch.bool)).sum())
    assert edge_index.shape[1] == expected > 0


# --------------------------------------------------------------------------- traj / OC20


def test_traj_oc20_tags(tmp_path):
    counts = convert(TRAJS, tmp_path / "oc20", split="none", oc20_tags=True, progress=False)
    refs = {int(p.stem.removeprefix("random")): ase.io.read(p, ":") for p in TRAJS}
    assert counts == {"all": sum(len(frames) for frames in refs.values())}
    _, items = load(tmp_path / "oc20" / "all")
    assert sorted({int(d.sid) for d in items}) == sorted(refs)
    classes = set()
    for d in items:
        ref = refs[int(d.sid)][int(d.fid)]
        fixed = np.zeros(len(ref), dtype=bool)
        (constraint,) = ref.constraints
        assert isinstance(constraint, FixAtoms)
        fixed[constraint.index] = True
        assert d.fixed.numpy().astype(bool).tolist() == fixed.tolist()
        tags = d.tags.numpy()
        chon = np.isin(ref.numbers, [1, 6, 7, 8])
        assert np.all(tags[fixed] == 0)
        assert np.all(tags[~fixed & chon] == 2)
        assert np.all(tags[~fixed & ~chon] == 1)
        classes.update(tags.tolist())
        assert d.energy == ref.get_potential_energy()  # total DFT energy in eV, unchanged
        np.testing.assert_allclose(d.forces.numpy(), ref.get_forces(apply_constraint=False), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(d.cell[0].numpy(), np.asarray(ref.cell), atol=1e-5)
        # fairchem wraps into the cell; an atom on a cell face may land on either side
        assert mic_displacements(d.pos.numpy(), ref.positions, ref.cell, ref.pbc).max() < 1e-4
        assert d.pbc.tolist() == [[True, True, True]]
    assert classes == {0, 1, 2}
    # fids are the frame indices of each file, in time order
    for sid, frames in refs.items():
        assert [int(d.fid) for d in items if int(d.sid) == sid] == list(range(len(frames)))


def test_traj_without_oc20_tags_keeps_file_tags(tmp_path):
    convert(TRAJS[:1], tmp_path / "o", split="none", progress=False)
    _, items = load(tmp_path / "o" / "all")
    assert all(d.tags.sum() == 0 for d in items) and int(items[0].sid) == 1000156


def test_oc20_tags_function():
    atoms = Atoms("Cu3CONHPt", positions=np.arange(24.0).reshape(8, 3))
    atoms.set_constraint(FixAtoms(indices=[0, 7]))
    assert oc20_tags(atoms).tolist() == [0, 1, 1, 2, 2, 2, 2, 0]


def test_split_by_system(tmp_path):
    counts = convert(TRAJS, tmp_path / "s", split_by="system", n_train=1, n_val=0, seed=0, progress=False)
    _, train = load(tmp_path / "s" / "train")
    _, test = load(tmp_path / "s" / "test")
    train_sids, test_sids = {int(d.sid) for d in train}, {int(d.sid) for d in test}
    assert len(train_sids) == len(test_sids) == 1 and train_sids != test_sids
    assert counts == {"train": len(train), "test": len(test)}
    with pytest.raises(SplitError, match="systems"):
        convert(TRAJS, tmp_path / "s2", split_by="system", n_train=2, n_val=1, progress=False)
    assert not (tmp_path / "s2").exists()


# --------------------------------------------------------------------------- extxyz


def test_extxyz_molecules(tmp_path, md17):
    frames = []
    for i in range(0, 50, 5):
        atoms = Atoms(numbers=md17["z"], positions=md17["R"][i])
        atoms.calc = SinglePointCalculator(atoms, energy=float(md17["E"][i, 0]), forces=md17["F"][i])
        frames.append(atoms)
    src = tmp_path / "ethanol.extxyz"
    ase.io.write(src, frames, format="extxyz")
    assert convert(src, tmp_path / "x", split="none", progress=False) == {"all": 10}
    _, items = load(tmp_path / "x" / "all")
    for fid, (d, ref) in enumerate(zip(items, frames)):
        assert int(d.fid) == fid and int(d.sid) == 0
        np.testing.assert_allclose(d.energy, ref.get_potential_energy(), rtol=1e-12)  # eV as given
        np.testing.assert_allclose(d.forces.numpy(), ref.get_forces(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d.pos.numpy(), ref.positions, atol=1e-5)
        np.testing.assert_allclose(d.cell[0].numpy(), 50.0 * np.eye(3))
        assert d.pbc.tolist() == [[False] * 3]


# --------------------------------------------------------------------------- malformed inputs


def _npz(md17, drop=None, **changes):
    arrays = {key: np.array(md17[key][:20]) if key != "z" else np.array(md17[key]) for key in md17}
    arrays.update(changes)
    arrays.pop(drop, None)
    return arrays


def _bad_values(md17, key, index, value):
    arrays = _npz(md17)
    arrays[key] = arrays[key].astype(np.float64)
    arrays[key][index] = value
    return arrays


def _traj_frames(n=3):
    return list(ase.io.read(TRAJS[0], f":{n}"))


def _make_bad(kind: str, tmp_path: Path, md17) -> Path:
    if kind == "missing_key":
        path = tmp_path / "bad.npz"
        np.savez(path, **_npz(md17, drop="F"))
    elif kind in ("shape_F", "shape_E", "shape_z"):
        path = tmp_path / "bad.npz"
        change = {
            "shape_F": {"F": md17["F"][:20, :8]},
            "shape_E": {"E": md17["E"][:19]},
            "shape_z": {"z": md17["z"][:8]},
        }[kind]
        np.savez(path, **_npz(md17, **change))
    elif kind in ("nan_R", "inf_F", "nan_E"):
        path = tmp_path / "bad.npz"
        key = kind[-1]
        value = np.nan if kind.startswith("nan") else np.inf
        np.savez(path, **_bad_values(md17, key, (4, 0) if key != "E" else 4, value))
    elif kind == "empty_file":
        path = tmp_path / "bad.npz"
        path.write_bytes(b"")
    elif kind == "zero_frames":
        path = tmp_path / "bad.npz"
        np.savez(path, R=md17["R"][:0], z=md17["z"], E=md17["E"][:0], F=md17["F"][:0])
    elif kind == "unknown_element":
        path = tmp_path / "bad.npz"
        np.savez(path, **_npz(md17, z=np.array([6, 6, 8, 1, 1, 1, 1, 1, 0])))
    elif kind == "element_ge_90":
        path = tmp_path / "bad.npz"
        np.savez(path, **_npz(md17, z=np.array([6, 6, 92, 1, 1, 1, 1, 1, 1])))
    elif kind == "traj_atom_count":
        path = tmp_path / "bad.traj"
        frames = _traj_frames()
        short = frames[2][:-1]
        short.calc = SinglePointCalculator(
            short,
            energy=frames[2].get_potential_energy(),
            forces=frames[2].get_forces(apply_constraint=False)[:-1],
        )
        with AseTrajectory(path, "w") as traj:
            for atoms in (frames[0], frames[1], short):
                traj.write(atoms)
    elif kind == "traj_species":
        path = tmp_path / "bad.traj"
        frames = _traj_frames()
        changed = frames[1].copy()
        numbers = changed.numbers.copy()
        numbers[-1] = 7 if numbers[-1] != 7 else 6
        changed.numbers = numbers
        changed.calc = SinglePointCalculator(
            changed,
            energy=frames[1].get_potential_energy(),
            forces=frames[1].get_forces(apply_constraint=False),
        )
        with AseTrajectory(path, "w") as traj:
            for atoms in (frames[0], changed, frames[2]):
                traj.write(atoms)
    elif kind == "traj_garbage":
        path = tmp_path / "bad.traj"
        path.write_text("this is not an ASE trajectory\n")
    elif kind == "traj_no_forces":
        path = tmp_path / "bad.traj"
        frames = _traj_frames(2)
        frames[1].calc = SinglePointCalculator(frames[1], energy=frames[1].get_potential_energy())
        with AseTrajectory(path, "w") as traj:
            for atoms in frames:
                traj.write(atoms)
    elif kind == "extxyz_atom_count":
        path = tmp_path / "bad.extxyz"
        frames = []
        for i, n in enumerate((9, 9, 8)):
            atoms = Atoms(numbers=md17["z"][:n], positions=md17["R"][i, :n])
            atoms.calc = SinglePointCalculator(atoms, energy=float(md17["E"][i, 0]), forces=md17["F"][i, :n])
            frames.append(atoms)
        ase.io.write(path, frames, format="extxyz")
    else:
        raise AssertionError(kind)
    return path


BAD = {
    "missing_key": "missing key",
    "shape_F": "F has shape",
    "shape_E": "E must have shape",
    "shape_z": "z must have shape",
    "nan_R": "NaN in positions",
    "inf_F": "inf in forces",
    "nan_E": "NaN in energies",
    "empty_file": "cannot read",
    "zero_frames": "no frames",
    "unknown_element": "unknown element",
    "element_ge_90": "max_num_elements is 90",
    "traj_atom_count": "atom count changes",
    "traj_species": "species change",
    "traj_garbage": "cannot read",
    "traj_no_forces": "no forces",
    "extxyz_atom_count": "atom count changes",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_input_raises_and_writes_nothing(kind, tmp_path, md17):
    path = _make_bad(kind, tmp_path, md17)
    out = tmp_path / "sub" / "out"
    with pytest.raises(DatasetFormatError, match=BAD[kind]) as info:
        convert(path, out, split="none", progress=False)
    assert str(path) in str(info.value) and info.value.path == path
    assert not out.exists() and not (tmp_path / "sub").exists()


def test_malformed_second_input_writes_nothing(tmp_path, md17):
    bad = _make_bad("nan_E", tmp_path, md17)
    with pytest.raises(DatasetFormatError, match="bad.npz"):
        convert([NPZ, bad], tmp_path / "out", split="none", progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


def test_missing_input(tmp_path):
    with pytest.raises(DatasetFormatError, match="no such file"):
        convert(tmp_path / "nope.npz", tmp_path / "out", progress=False)


def test_read_npz_direct(md17):
    frames = read_npz(NPZ, units="kcal/mol")
    assert len(frames) == 300
    assert frames[5].get_potential_energy() == pytest.approx(float(md17["E"][5, 0]))


# --------------------------------------------------------------------------- atomicity


def test_interrupt_midway_leaves_nothing(tmp_path, monkeypatch):
    real = convert_module.atoms_to_data
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 250:  # train (200) and val (20) already written, inside test
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "atoms_to_data", interrupting)
    out = tmp_path / "new" / "parents" / "out"  # parents created for the output go too
    with pytest.raises(KeyboardInterrupt):
        convert(NPZ, out, n_train=200, n_val=20, progress=False)
    assert calls["n"] == 250
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_refuses_overwrite_and_failed_overwrite_keeps_old(tmp_path, md17):
    out = tmp_path / "out"
    convert(NPZ, out, n_train=200, n_val=20, progress=False)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(NPZ, out, split="none", progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    # a failing overwrite leaves the old output in place
    bad = _make_bad("nan_R", tmp_path, md17)
    with pytest.raises(DatasetFormatError):
        convert(bad, out, split="none", overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == before
    # a successful overwrite replaces it completely
    assert convert(NPZ, out, split="none", overwrite=True, progress=False) == {"all": 300}
    assert sorted(p.name for p in out.iterdir()) == ["all", "conversion.json"]
    assert leftovers(tmp_path, "out") == []


# --------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fairchem_deq.cli", "convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli(tmp_path, md17):
    out = tmp_path / "cli"
    proc = _cli(str(NPZ), "--out", str(out), "--n-train", "200", "--n-val", "20", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "train: 200" in proc.stdout and "test: 80" in proc.stdout
    dataset, items = load(out / "test")
    assert len(dataset) == 80
    np.testing.assert_allclose(items[0].energy, md17["E"][int(items[0].fid), 0] * KCAL_MOL_IN_EV, rtol=1e-6)

    bad = _make_bad("missing_key", tmp_path, md17)
    proc = _cli(str(bad), "--out", str(tmp_path / "bad_out"), "--split", "none", "--no-progress")
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "missing key" in proc.stderr
    assert not (tmp_path / "bad_out").exists()


def test_cli_in_process_refuses_overwrite(tmp_path, capsys):
    from fairchem_deq.cli import main

    out = tmp_path / "o"
    args = ["convert", str(TRAJS[1]), "--out", str(out), "--split", "none", "--no-progress"]
    assert main(args) == 0
    assert "all: 27 frames" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--oc20-tags"]) == 0
    _, items = load(out / "all")
    assert int(items[0].sid) == 1000163 and set(items[0].tags.tolist()) == {0, 1, 2}
