"""DEQuiformer in torch-sim (fairchem_deq.simulate.torchsim): each system of a batched state
gets what DEQCalculator gives that structure alone, reuses its own fixed point, and is not
changed by its neighbours; replicas run through torch-sim's integrators, FIRE and reporter,
and `fairchem-deq replicas` writes trajectories and a report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DATA, ethanol_atoms, oc20_atoms
from periodic import mic_displacements

torch_sim = pytest.importorskip("torch_sim")

TIGHT = {"tol": 1e-6, "max_iter": 200}
pytestmark = pytest.mark.usefixtures("one_thread")


def _state(frames):
    return torch_sim.initialize_state(frames, torch.device("cpu"), torch.float64)


def _model(checkpoint, **options):
    from fairchem_deq.simulate.torchsim import DEQTorchSimModel

    return DEQTorchSimModel(checkpoint, **options)


def _alone(calcs, frames):
    """(energies, forces) of each frame through its own calculator."""
    energies, forces = [], []
    for calc, atoms in zip(calcs, frames):
        atoms = atoms.copy()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces(apply_constraint=False).copy())
    return np.array(energies), forces


def _split(forces, frames):
    return np.split(forces.numpy(), np.cumsum([len(a) for a in frames])[:-1])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_the_batch_is_the_one_atoms_to_batch_builds():
    from fairchem_deq.data.atoms_graphs import atoms_to_batch, systems_to_batch

    for frames in (ethanol_atoms([0, 5]), [oc20_atoms(), oc20_atoms("random1000163.traj")]):
        state = _state(frames)
        batch = systems_to_batch(
            state.positions, state.row_vector_cell, state.pbc, state.atomic_numbers, state.n_atoms_per_system, fids=3
        )
        reference = atoms_to_batch(frames, fids=[3] * len(frames))
        for key in ("natoms", "atomic_numbers", "cell", "pbc", "sid", "fid", "batch", "ptr"):
            assert torch.equal(batch[key], reference[key]), key
        for a, b, cell, pbc in zip(
            *(_split(x, frames) for x in (batch.pos, reference.pos)), reference.cell, reference.pbc
        ):
            assert mic_displacements(a, b, cell.numpy(), pbc.numpy()).max() < 1e-5


def test_each_system_of_a_batch_equals_the_calculator_on_it_alone_cold_and_warm(trained_checkpoint):
    """Two ethanol trajectories side by side, three consecutive frames: every system's energy
    and forces equal a DEQCalculator's on that structure alone (tight tolerance), the first
    call cold, the later ones warm from the system's own previous fixed point."""
    from fairchem_deq import DEQCalculator

    model = _model(trained_checkpoint, **TIGHT)
    assert model.is_deq and model.weights == "ema" and not model.compute_stress
    calcs = [DEQCalculator(trained_checkpoint, **TIGHT) for _ in range(2)]
    for step in range(3):
        frames = ethanol_atoms([step, 100 + step])
        out = model(_state(frames))
        assert out["energy"].dtype == torch.float64 and out["energy"].shape == (2,)
        energies, forces = _alone(calcs, frames)
        np.testing.assert_allclose(out["energy"].numpy(), energies, rtol=0, atol=1e-4)
        for batched, alone in zip(_split(out["forces"], frames), forces):
            assert _rel(batched, alone) < 1e-4
        stats = model.last_solver_stats
        assert stats["warm"] == [step > 0] * 2 and stats["converged"] == [True, True]


def test_periodic_slabs_relax_with_torch_sims_fire_as_each_would_alone(trained_checkpoint):
    """Batched FIRE (torch-sim's optimizer and reporter) of two OC20 slabs: the first forces
    equal DEQCalculator's, and each slab's path equals its path relaxed alone (positions
    under the minimum image)."""
    from torch_sim.optimizers import fire

    from fairchem_deq import DEQCalculator

    frames = [oc20_atoms(), oc20_atoms("random1000163.traj")]
    paths = []
    for group in (frames, frames[:1], frames[1:]):
        model = _model(trained_checkpoint, **TIGHT)
        init, update = fire(model)
        state = init(_state(group))
        if len(group) == 2:
            _, forces = _alone([DEQCalculator(trained_checkpoint, **TIGHT) for _ in group], group)
            for batched, alone in zip(_split(state.forces, group), forces):
                assert _rel(batched, alone) < 1e-4
        reporter = torch_sim.TrajectoryReporter(None, prop_calculators={1: {"energy": lambda s: s.energy}})
        for step in range(1, 3):
            state = update(state)
            assert model.last_solver_stats["warm"] == [True] * len(group)
            assert len(reporter.report(state, step, model)) == len(group)
        paths.append(_split(state.positions, group))
    batched = paths[0]
    for alone, together, atoms in zip((paths[1][0], paths[2][0]), batched, frames):
        assert mic_displacements(together, alone, atoms.cell.array, atoms.pbc).max() < 1e-4


def test_identical_replicas_diverge_only_through_their_dynamics(trained_checkpoint):
    """Three copies of one structure: identical forces at step 0; NVE with different
    velocities then separates them, and each replica's path is the one it takes alone."""
    from torch_sim.integrators import nve

    from fairchem_deq.simulate.replicas import replica_momenta

    frames = ethanol_atoms([0]) * 3
    kT = torch.tensor(300 * torch_sim.units.MetalUnits.temperature, dtype=torch.float64)
    momenta = replica_momenta(_state(frames), kT, seed=7)
    dt = torch.tensor(0.5e-3 * torch_sim.units.MetalUnits.time, dtype=torch.float64)
    paths = []
    for replicas in ([0, 1, 2], [1]):
        model = _model(trained_checkpoint, **TIGHT)
        init, update = nve(model, dt=dt, kT=kT)
        state = init(_state([frames[i] for i in replicas]))
        if len(replicas) == 3:
            first = _split(state.forces, frames)
            assert _rel(first[1], first[0]) < 1e-6 and _rel(first[2], first[0]) < 1e-6
        state.momenta = torch.cat([momenta[9 * i : 9 * i + 9] for i in replicas])
        for _ in range(3):
            state = update(state)
        assert model.last_solver_stats["warm"] == [True] * len(replicas)
        paths.append(_split(state.positions, [frames[i] for i in replicas]))
    together, alone = paths
    assert np.abs(together[1] - alone[0]).max() < 1e-5  # replica 1 in the batch = replica 1 alone
    assert np.abs(together[0] - together[1]).max() > 1e-3  # different velocities: different paths
    assert np.abs(together[2] - together[1]).max() > 1e-3


@pytest.mark.parametrize("propagation", [None, "one_step"])
def test_a_replaced_replica_starts_cold_and_leaves_the_others_warm_and_unchanged(trained_checkpoint, propagation):
    """Three replicas along consecutive frames; at the third call replica 1 gets a distant
    frame (refused: solved cold) and replica 2 is forgotten (cold): replica 0 stays warm and
    its forces equal those of a run where nothing was replaced; with one-step propagation it
    still takes exactly one evaluation while the others are solved."""
    options = dict(TIGHT, propagation=propagation, propagation_guard=10.0) if propagation else TIGHT
    runs = []
    for replace in (False, True):
        model = _model(trained_checkpoint, **options)
        for step in range(3):
            frames = ethanol_atoms([step, 50 + step, 150 + step])
            if replace and step == 2:
                frames[1] = ethanol_atoms([250])[0]
                model.forget(2)
            out = model(_state(frames))
        runs.append((_split(out["forces"], frames), model.last_solver_stats))
    (kept, kept_stats), (replaced, stats) = runs
    assert kept_stats["warm"] == [True, True, True]
    assert stats["warm"] == [True, False, False] and stats["refused"] == [False, True, False]
    assert stats["nstep"][1] > 3 and stats["nstep"][2] > 3  # solved from zero
    assert _rel(replaced[0], kept[0]) < (1e-5 if propagation else 1e-4)
    if propagation:
        assert stats["nstep"][0] == 1 and stats["propagated"] == [True, None, None]
        assert kept_stats["nstep"] == [1, 1, 1]


def test_an_explicit_checkpoint_runs_through_the_same_model(explicit_checkpoint):
    from fairchem_deq import DEQCalculator

    model = _model(explicit_checkpoint)
    assert not model.is_deq and model.fixed_point_cache is None
    frames = ethanol_atoms([3, 4])
    out = model(_state(frames))
    energies, forces = _alone([DEQCalculator(explicit_checkpoint)] * 2, frames)
    np.testing.assert_allclose(out["energy"].numpy(), energies, rtol=0, atol=1e-4)
    for batched, alone in zip(_split(out["forces"], frames), forces):
        assert _rel(batched, alone) < 1e-5
    assert model.last_solver_stats == {"weights": model.weights}
    with pytest.raises(ValueError, match="explicit EquiformerV2"):
        _model(explicit_checkpoint, tol=1e-3)


def test_replicas_command_writes_trajectories_and_a_report(trained_checkpoint, tmp_path, monkeypatch):
    from torch_sim.trajectory import TorchSimTrajectory

    monkeypatch.setenv("LOGLEVEL", "WARNING")  # the command sets it in this process: restored afterwards

    from fairchem_deq.cli.main import main

    out = tmp_path / "replicas"
    args = ["replicas", "--checkpoint", str(trained_checkpoint), "--structure", str(DATA / "md17_ethanol_300.npz")]
    args += ["--replicas", "2", "--steps", "3", "--temperature", "300", "--seed", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["replicas"] == 2 and report["steps_run"] == 3 and report["is_deq"]
    assert len(report["evaluations_per_step"]) == 4 and all(len(row) == 2 for row in report["evaluations_per_step"])
    assert report["warm_starts_per_replica"] == [3, 3] and report["mean_evaluations_per_replica_step"] > 0
    with TorchSimTrajectory(out / "replica_001.h5", mode="r") as trajectory:
        assert len(trajectory.get_array("positions")) == 4
        assert len(trajectory.get_array("potential_energy")) == 4
    assert sorted(p.name for p in out.iterdir()) == ["replica_000.h5", "replica_001.h5", "report.json"]
    assert main(args) == 2  # refuses to replace the previous run's files
