"""Shared fixtures: real frames from tests/data turned into fairchem batches, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_model import TINY_BACKBONE  # the tiny CPU-test model (tests/tiny_model.py)

DATA = Path(__file__).parent / "data"


def ethanol_atoms(indices):
    """ase.Atoms for MD17 ethanol frames (real data), energies/forces in kcal/mol units."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    d = np.load(DATA / "md17_ethanol_300.npz")
    frames = []
    for i in indices:
        atoms = Atoms(numbers=d["z"], positions=d["R"][i], pbc=False)
        atoms.calc = SinglePointCalculator(atoms, energy=float(d["E"][i][0]), forces=d["F"][i])
        frames.append(atoms)
    return frames


def oc20_atoms(name="random1000156.traj", index=0):
    from ase.io import read

    return read(DATA / name, index=index)


def to_batch(atoms_list, sids=None):
    from fairchem_deq.data.atoms_graphs import atoms_to_batch

    return atoms_to_batch(atoms_list, sids=sids)


def measure_auto_readout_constants(backbone: dict, atoms_list=None) -> dict:
    """Replaces `auto` readout constants of a backbone config (in place) by their values on
    real ethanol frames, as the trainer does on its training set."""
    from fairchem_deq.data.graph_stats import graph_statistics

    batch = to_batch(atoms_list or ethanol_atoms([0, 50, 100]))
    stats = graph_statistics(batch.to_data_list(), backbone.get("max_radius", 5.0), backbone.get("max_neighbors", 1000))
    for key in ("avg_num_nodes", "avg_degree"):
        if backbone.get(key) == "auto":
            backbone[key] = getattr(stats, key)
    return backbone


def make_model(deq=None, num_layers=1, seed=0, **overrides):
    """fairchem hydra model with our backbone and fairchem's EquiformerV2 heads."""
    from fairchem.core.models.base import HydraModel

    torch.manual_seed(seed)
    backbone = dict(
        TINY_BACKBONE, model="deq_equiformer_v2_backbone", num_layers=num_layers, deq=deq or {}, **overrides
    )
    return HydraModel(
        backbone=backbone,
        heads={
            "energy": {"module": "equiformerV2_scalar_head"},
            "forces": {"module": "equiformerV2_vector_head"},
        },
        otf_graph=True,
    )


@pytest.fixture(scope="session", autouse=True)
def _register():
    import fairchem_deq  # noqa: F401

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ethanol_lmdb(tmp_path_factory):
    """Bundled MD17 ethanol frames as fairchem LMDBs: 64 train / 8 val, the rest as test."""
    from fairchem_deq.data import convert

    out = tmp_path_factory.mktemp("md17") / "ethanol"
    convert(DATA / "md17_ethanol_300.npz", out, n_train=64, n_val=8, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def ethanol_trajectory_lmdb(tmp_path_factory):
    """The first 40 consecutive ethanol frames in time order (one trajectory, split none)."""
    from fairchem_deq.data import convert

    d = np.load(DATA / "md17_ethanol_300.npz")
    folder = tmp_path_factory.mktemp("md17traj")
    src = folder / "ethanol_40.npz"
    np.savez(src, R=d["R"][:40], z=d["z"], E=d["E"][:40], F=d["F"][:40])
    convert(src, folder / "lmdb", split="none", progress=False)
    return folder / "lmdb" / "all"


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, ethanol_lmdb):
    """A tiny DEQ1 trained for 3 epochs on ethanol through fairchem's CLI (shipped config)."""
    from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli

    run_dir = tmp_path_factory.mktemp("trained")
    run_cli(
        [
            "--mode",
            "train",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/deq1.yml"),
            "--cpu",
            "--run-dir",
            str(run_dir),
            "--identifier",
            "tiny",
            "--timestamp-id",
            "tiny",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            "--optim.max_epochs=3",
            "--optim.eval_every=1000000",
            "--optim.checkpoint_every=-1",
            "--optim.lr_initial=0.002",
        ],
        cwd=run_dir,
    )
    return run_dir / "checkpoints" / "tiny" / "checkpoint.pt"


@pytest.fixture(scope="session")
def explicit_checkpoint(tmp_path_factory, ethanol_lmdb):
    """A tiny explicit EquiformerV2 (one block) trained for one epoch on ethanol through
    fairchem's CLI (the shipped eqv2_4l recipe)."""
    from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli

    run_dir = tmp_path_factory.mktemp("explicit")
    run_cli(
        [
            "--mode",
            "train",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/eqv2_4l.yml"),
            "--cpu",
            "--run-dir",
            str(run_dir),
            "--identifier",
            "explicit",
            "--timestamp-id",
            "explicit",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            "--model.backbone.num_layers=1",
            "--optim.max_epochs=1",
            "--optim.eval_every=1000000",
            "--optim.checkpoint_every=-1",
        ],
        cwd=run_dir,
    )
    return run_dir / "checkpoints" / "explicit" / "checkpoint.pt"


@pytest.fixture
def one_thread():
    """One torch thread for tiny models and solves: they gain nothing from two, and on a busy
    2-core machine two OpenMP threads spin-wait (10-50x slower; the session default is two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
