"""DEQCalculator, MD and relaxations on a briefly trained DEQuiformer (real ethanol frames)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from cli_helpers import run_cli
from conftest import DATA, ethanol_atoms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calc(trained_checkpoint):
    from fairchem_deq import DEQCalculator

    # tol 1e-3: each solution within ~0.1 % of the fixed point, so warm vs cold compares
    # reuse, not two loose approximations (at the paper's 1e-2 both can be off by ~2 %)
    return DEQCalculator(trained_checkpoint, tol=1e-3)


def test_calculator_warm_starts_consecutive_frames_and_matches_cold(trained_checkpoint, calc):
    from fairchem_deq import DEQCalculator

    frames = ethanol_atoms(range(6))
    cold_calc = DEQCalculator(trained_checkpoint, reuse=False, tol=1e-3)
    calc.reset_fixed_point()
    warm_iters, cold_iters = [], []
    for atoms in frames:
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = calc, cold_calc
        fw, fc = a.get_forces(), b.get_forces()
        assert fw.shape == (9, 3) and np.isfinite(a.get_potential_energy())
        warm_iters.append(calc.last_solver_stats["nstep"])
        cold_iters.append(cold_calc.last_solver_stats["nstep"])
        assert np.linalg.norm(fw - fc) / np.linalg.norm(fc) < 0.01
    assert warm_iters[0] == cold_iters[0]  # the first frame has nothing to start from
    assert np.mean(warm_iters[1:]) < np.mean(cold_iters[1:])
    assert calc.last_solver_stats["converged"]


def test_fixed_point_is_reset_when_the_atoms_change(calc):
    from ase import Atoms

    ethanol = ethanol_atoms([0])[0]
    ethanol.calc = calc
    ethanol.get_forces()
    smaller = Atoms(numbers=ethanol.numbers[:8], positions=ethanol.positions[:8])
    smaller.calc = calc
    forces = smaller.get_forces()  # 8 atoms now: no stale 9-atom fixed point may be used
    assert forces.shape == (8, 3)
    assert calc.fixed_point_cache.misses >= 1
    swapped = ethanol.copy()
    swapped.numbers = swapped.numbers[::-1].copy()  # same count, other species order
    swapped.calc = calc
    assert swapped.get_forces().shape == (9, 3)
    swapped.get_forces()
    warm_hits = calc.fixed_point_cache.hits
    periodic = swapped.copy()
    periodic.cell, periodic.pbc = [20.0, 20.0, 20.0], True  # same atoms, now periodic
    periodic.calc = calc
    periodic.get_forces()
    assert calc.fixed_point_cache.hits == warm_hits  # reset: solved from zero


def test_a_distant_structure_is_solved_cold_not_from_the_stored_fixed_point(trained_checkpoint):
    """Reuse only for a nearby structure: an unrelated frame of the same molecule (1-2 Å
    away) used to start from the previous frame's fixed point."""
    from fairchem_deq import DEQCalculator

    calc = DEQCalculator(trained_checkpoint, tol=1e-3)
    cache = calc.fixed_point_cache
    first, next_frame, unrelated = ethanol_atoms([0, 1, 150])
    for atoms in (first, next_frame, unrelated):
        atoms.calc = calc
        atoms.get_forces()
        if atoms is next_frame:
            assert cache.hits == 1 and cache.refused == 0  # an MD step apart: reused
    assert cache.refused == 1 and cache.hits == 1  # the unrelated frame started from zero
    loose = DEQCalculator(trained_checkpoint, tol=1e-3, reuse_max_displacement=None)
    for atoms in (first, unrelated):
        atoms.calc = loose
        atoms.get_forces()
    assert loose.fixed_point_cache.hits == 1  # no bound: reused


def test_non_deq_checkpoint_and_garbage_get_clear_errors(tmp_path):
    from fairchem_deq import DEQCalculator
    from fairchem_deq.simulate import check_deq_checkpoint

    eqv2 = tmp_path / "eqv2.pt"
    torch.save({"config": {"model": {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone"}}}}, eqv2)
    with pytest.raises(ValueError, match="not a DEQuiformer checkpoint.*equiformer_v2_backbone"):
        check_deq_checkpoint(eqv2)
    other = tmp_path / "other.pt"
    torch.save({"config": {"model": {"name": "hydra", "backbone": {"model": "schnet_backbone"}}}}, other)
    with pytest.raises(ValueError, match="neither a DEQuiformer nor an EquiformerV2 checkpoint.*schnet_backbone"):
        DEQCalculator(other)
    with pytest.raises(ValueError, match="holds no model weights"):  # an EquiformerV2 config without weights
        DEQCalculator(eqv2)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        check_deq_checkpoint(garbage)
    with pytest.raises(FileNotFoundError):
        check_deq_checkpoint(tmp_path / "missing.pt")


def test_an_explicit_equiformer_v2_runs_through_the_same_calculator(explicit_checkpoint):
    """Baselines go through DEQCalculator's path (graph, weights, float64 energies), without a
    fixed point; the numbers equal fairchem's own OCPCalculator on the same weights."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    from fairchem_deq import DEQCalculator

    calc = DEQCalculator(explicit_checkpoint, weights="raw")
    assert not calc.is_deq and calc.fixed_point_cache is None and not calc.reuse
    grad_in_forward = []  # fairchem's backbone turned autograd on in every forward (direct forces need none)
    calc.model.backbone.norm.register_forward_pre_hook(lambda *_: grad_in_forward.append(torch.is_grad_enabled()))
    reference = OCPCalculator(checkpoint_path=explicit_checkpoint, cpu=True, seed=0)
    for atoms in ethanol_atoms([0, 1]):
        ours, theirs = atoms.copy(), atoms.copy()
        ours.calc, theirs.calc = calc, reference
        assert ours.get_potential_energy() == pytest.approx(theirs.get_potential_energy(), abs=1e-3)
        np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), atol=1e-5)
        assert calc.last_solver_stats == {"weights": "raw"}
    assert grad_in_forward and not any(grad_in_forward)
    assert DEQCalculator(explicit_checkpoint).weights == "ema"
    with pytest.raises(ValueError, match="explicit EquiformerV2: it has no fixed-point solve to set \\(tol\\)"):
        DEQCalculator(explicit_checkpoint, tol=1e-3)


def test_nve_md_logs_energy_temperature_and_solver_iterations(calc, tmp_path):
    from fairchem_deq import run_md

    report = run_md(
        ethanol_atoms([0])[0],
        calc,
        ensemble="nve",
        steps=8,
        timestep_fs=0.5,
        trajectory=tmp_path / "md.traj",
        log=tmp_path / "md.csv",
        progress=False,
    )
    assert report.steps_run == 8 and report.unphysical_step is None
    assert report.energy_drift_meV_per_atom_per_ps is not None
    with open(tmp_path / "md.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and all(float(r["solver_iterations"]) >= 1 for r in rows)
    from ase.io import read

    assert len(read(tmp_path / "md.traj", index=":")) == 9


def test_md_reports_the_step_it_became_unphysical_and_nvt_runs(calc, tmp_path):
    from fairchem_deq import run_md

    report = run_md(ethanol_atoms([0])[0], calc, steps=5, max_force=1e-6, progress=False)
    assert report.unphysical_step == 0 and "max force" in report.unphysical_reason
    nvt = run_md(ethanol_atoms([0])[0], calc, ensemble="nvt", steps=4, temperature_K=500, progress=False)
    assert nvt.steps_run == 4 and nvt.energy_drift_meV_per_atom_per_ps is None
    with pytest.raises(ValueError, match="unknown ensemble"):
        run_md(ethanol_atoms([0])[0], calc, ensemble="npt", steps=1)


def test_md_stops_at_the_first_stretched_bond_and_names_it(calc):
    from fairchem_deq import run_md
    from fairchem_deq.simulate.md import covalent_bonds

    ethanol = ethanol_atoms([0])[0]
    bonds, lengths = covalent_bonds(ethanol)
    assert len(bonds) == 8 and lengths.max() < 1.6  # C-C, C-O, O-H and five C-H bonds
    # 500 K velocities move atoms ~0.01 Å per 0.5 fs step: a 1e-4 Å bound is broken at step 1
    report = run_md(ethanol, calc, ensemble="nvt", steps=20, temperature_K=500, progress=False, max_bond_stretch=1e-4)
    assert report.unphysical_step == 1 and report.unphysical_reason.startswith("bond ")
    assert "from its starting length" in report.unphysical_reason
    stable = run_md(ethanol, calc, steps=3, progress=False, max_bond_stretch=0.5)
    assert stable.unphysical_step is None and stable.steps_run == 3


def test_interrupted_md_leaves_no_trajectory(calc, tmp_path, monkeypatch):
    from fairchem_deq import run_md

    calls = {"n": 0}
    original = type(calc).calculate

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(calc), "calculate", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_md(
            ethanol_atoms([0])[0],
            calc,
            steps=10,
            trajectory=tmp_path / "md.traj",
            log=tmp_path / "md.csv",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_relaxation_carries_the_fixed_point_across_steps(calc, tmp_path):
    from fairchem_deq import run_relaxation

    atoms = ethanol_atoms([0])[0]
    _, report = run_relaxation(atoms, calc, optimizer="fire", fmax=1e-4, steps=5, trajectory=tmp_path / "relax.traj")
    assert report.steps == 5 and not report.converged
    assert len(report.solver_iterations_per_step) >= 5
    assert min(report.solver_iterations_per_step[1:]) <= report.solver_iterations_per_step[0]
    assert (tmp_path / "relax.traj").is_file()
    with pytest.raises(ValueError, match="unknown optimizer"):
        run_relaxation(atoms, calc, optimizer="bfgs2")


def test_md_and_relax_commands(trained_checkpoint, tmp_path):
    proc = run_cli(
        [
            "md",
            "--checkpoint",
            str(trained_checkpoint),
            "--structure",
            str(DATA / "md17_ethanol_300.npz"),
            "--frame",
            "3",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "md"),
            "--print-every",
            "1",
            "--no-progress",
        ],
        cwd=tmp_path,
        program="fairchem-deq",
    )
    assert proc.stdout.count("solver iterations") == 5
    report = json.loads((tmp_path / "md" / "report.json").read_text())
    assert report["steps_run"] == 4 and (tmp_path / "md" / "md_log.csv").is_file()
    run_cli(
        [
            "relax",
            "--checkpoint",
            str(trained_checkpoint),
            "--structure",
            str(DATA / "md17_ethanol_300.npz"),
            "--steps",
            "3",
            "--out",
            str(tmp_path / "relax"),
            "--no-progress",
        ],
        cwd=tmp_path,
        program="fairchem-deq",
    )
    assert (tmp_path / "relax" / "relaxed.extxyz").is_file()
    assert json.loads((tmp_path / "relax" / "report.json").read_text())["steps"] == 3


def test_relax_reports_solver_evaluations_per_step_and_a_cold_comparison(trained_checkpoint, tmp_path):
    proc = run_cli(
        [
            "relax",
            "--checkpoint",
            str(trained_checkpoint),
            "--structure",
            str(DATA / "md17_ethanol_300.npz"),
            "--optimizer",
            "fire",
            "--fmax",
            "1e-4",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "relax"),
            "--compare-cold",
        ],
        cwd=tmp_path,
        program="fairchem-deq",
    )
    assert proc.stdout.count("solver iterations") == 5 and proc.stdout.count("from zero") == 5
    with open(tmp_path / "relax" / "relax_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert all(int(r["solver_iterations"]) >= 1 and int(r["solver_iterations_cold"]) >= 1 for r in rows)
    assert rows[0]["solver_iterations"] == rows[0]["solver_iterations_cold"]  # step 0 is solved from zero
    assert all(float(r["markov_dev"]) < 0.05 for r in rows)
    report = json.loads((tmp_path / "relax" / "report.json").read_text())
    assert report["mean_solver_iterations"] < report["mean_solver_iterations_cold"]
    assert report["max_markov_dev"] is not None
