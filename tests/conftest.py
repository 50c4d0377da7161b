"""Shared fixtures: real frames from tests/data turned into fairchem batches, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"

# A DEQuiformer small enough for CPU tests (same structure as the paper's MD "mini" model).
TINY_BACKBONE = dict(
    use_pbc=True,
    regress_forces=True,
    otf_graph=True,
    max_neighbors=20,
    max_radius=5.0,
    max_num_elements=90,
    sphere_channels=16,
    attn_hidden_channels=8,
    num_heads=2,
    attn_alpha_channels=8,
    attn_value_channels=4,
    ffn_hidden_channels=16,
    norm_type="rms_norm_sh",
    lmax_list=[2],
    mmax_list=[2],
    grid_resolution=8,
    num_sphere_samples=32,
    edge_channels=16,
    alpha_drop=0.0,
    drop_path_rate=0.0,
)


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
    from fairchem_deq.atoms_batch import atoms_to_batch

    return atoms_to_batch(atoms_list, sids=sids)


def make_model(deq=None, num_layers=1, seed=0, **overrides):
    """fairchem hydra model with our backbone and fairchem's EquiformerV2 heads."""
    from fairchem.core.models.base import HydraModel

    torch.manual_seed(seed)
    backbone = dict(TINY_BACKBONE, model="deq_equiformer_v2_backbone", num_layers=num_layers,
                    deq=deq or {}, **overrides)
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
