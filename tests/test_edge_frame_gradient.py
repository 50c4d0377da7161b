"""Energy-gradient forces are the exact gradient of the energy, edge frames included.

fairchem detaches the edge frames and their Wigner-D matrices; -dE/dpos then missed the
derivative through the frames (2.6e-4 of |F| along a random direction on the tiny model
below, below float32's finite-difference noise). In float64 with tight solves the
difference quotients of the energy converge to -F.v to ~1e-8; without the frames' term
they stop at ~1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms, to_batch
from test_conservative_forces import gradient_model

EXACT = {"max_iter": 400, "tol": 1e-12, "stop_mode": "rel"}


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.usefixtures("float64")
def test_frames_and_wigner_matrices_carry_the_exact_derivative():
    from fairchem.core.models.equiformer_v2.edge_rot_mat import init_edge_rot_mat
    from fairchem.core.models.equiformer_v2.so3 import SO3_Rotation
    from torch.func import jvp

    from fairchem_deq.models.edge_frames import edge_frames, replay_random, wigner_generators, wigner_with_gradient

    rotation = SO3_Rotation(3)
    torch.manual_seed(0)
    vec, direction = torch.randn(40, 3), torch.randn(40, 3)

    def fairchem_values(v):
        torch.manual_seed(5)
        frames = init_edge_rot_mat(v)
        rotation.set_wigner(frames)
        return frames, rotation.wigner

    def ours(v):
        torch.manual_seed(5)
        frames, raw = replay_random(v, lambda: init_edge_rot_mat(v))
        frames = edge_frames(v, raw, frames)
        rotation.set_wigner(frames)
        return frames, wigner_with_gradient(frames, rotation.wigner, wigner_generators(3))

    for got, expected in zip(ours(vec), fairchem_values(vec)):
        assert torch.equal(got.detach(), expected)  # the same values as fairchem's
    h = 1e-6
    plus, minus = fairchem_values(vec + h * direction), fairchem_values(vec - h * direction)
    for k in (0, 1):
        _, tangent = jvp(lambda v, k=k: ours(v)[k], (vec,), (direction,))
        difference = (plus[k] - minus[k]) / (2 * h)
        assert float((tangent - difference).norm() / tangent.norm()) < 1e-7


@pytest.mark.usefixtures("float64", "one_thread")
def test_energy_gradient_forces_equal_difference_quotients_of_the_energy():
    model = gradient_model(
        {"train": EXACT, "eval_cold": EXACT, "eval_warm": EXACT, "b_tol": 1e-12, "b_max_iter": 400, "grad": 6}
    )
    model = model.double().eval()
    atoms = ethanol_atoms([10])[0]

    def energy_forces(positions):
        batch = to_batch([atoms])
        batch.pos = torch.tensor(positions, dtype=torch.float64)  # not via float32
        torch.manual_seed(1)  # the same random edge frames at every displacement
        out = model(batch)
        return float(out["energy"].detach()), out["forces"].detach().numpy()

    _, forces = energy_forces(atoms.positions)
    direction = np.random.default_rng(0).normal(size=forces.shape)
    direction /= np.linalg.norm(direction)
    h = 1e-5
    plus, _ = energy_forces(atoms.positions + h * direction)
    minus, _ = energy_forces(atoms.positions - h * direction)
    error = abs((plus - minus) / (2 * h) + (forces * direction).sum()) / np.linalg.norm(forces)
    assert error < 1e-6, error
