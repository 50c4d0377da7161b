"""Fixed-budget propagation (issue 23): k evaluations of f per warm step instead of a
converged solve, the carried history, the guard that falls back to a converged solve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import md_args, run_cli
from conftest import ethanol_atoms

from fairchem_deq.solve import Propagation, SolveScope, SolveSettings
from fairchem_deq.solve.propagation import propagate
from fairchem_deq.solve.tracker import RowRules, TrackedFunction

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_map(q: float):
    """f(z) = q z + b row-wise: fixed point b / (1 - q), contraction factor exactly q."""
    torch.manual_seed(0)
    b = torch.randn(3, 5, 4)
    return (lambda z: q * z + b), b / (1.0 - q)


@pytest.mark.parametrize("q", [0.3, 0.6])
def test_one_step_over_relaxation_lands_on_the_fixed_point_of_a_linear_contraction(q):
    """z_p + (f(z_p) - z_p) / (1 - q) is exact for f = q z + b; the carried state is f(z_p).
    (max_relaxation 3: the default 2 clips w = 1 / (1 - q) above q = 0.5.)"""
    f, z_star = _linear_map(q)
    z_p = z_star + 0.1 * torch.randn_like(z_star)
    rules = RowRules.of([SolveSettings()] * 3, "cpu")
    tracked = TrackedFunction(f, z_p, rules, SolveScope([]), prior=torch.full((3,), q))
    with torch.no_grad():
        output, carry = propagate(tracked, z_p, Propagation(1, max_relaxation=3.0))
    assert tracked.nfe == 1
    torch.testing.assert_close(carry, f(z_p))
    torch.testing.assert_close(output, z_star, atol=1e-5, rtol=1e-5)
    assert float((carry - z_star).norm()) > 10 * float((output - z_star).norm())


def test_two_step_mixing_lands_on_the_fixed_point_of_a_linear_contraction():
    """The one-step Anderson weight a = <r0, r0 - r1> / |r0 - r1|^2 is 1 / (1 - q) for f = q z + b."""
    f, z_star = _linear_map(0.5)
    z_p = z_star + 0.1 * torch.randn_like(z_star)
    rules = RowRules.of([SolveSettings()] * 3, "cpu")
    tracked = TrackedFunction(f, z_p, rules, SolveScope([]))
    with torch.no_grad():
        output, carry = propagate(tracked, z_p, Propagation(2))
    assert tracked.nfe == 2 and carry is output
    torch.testing.assert_close(output, z_star, atol=1e-5, rtol=1e-5)


def test_propagation_settings_are_checked():
    with pytest.raises(ValueError, match="unknown propagation 'three_step'; choose one of"):
        Propagation.named("three_step")
    with pytest.raises(ValueError, match="guard must be > 0"):
        Propagation.named("one_step", guard=0.0)


def _forces(calc, frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        out.append((atoms.get_forces().copy(), dict(calc.last_solver_stats)))
    return out


@pytest.mark.parametrize(("name", "evaluations"), [("one_step", 1), ("two_step", 2)])
def test_warm_calls_take_exactly_k_evaluations_near_the_exact_fixed_point(trained_checkpoint, name, evaluations):
    from fairchem_deq import DEQCalculator

    frames = ethanol_atoms(list(range(10, 18)))
    calc = DEQCalculator(trained_checkpoint, propagation=name, propagation_guard=10.0)
    exact = DEQCalculator(trained_checkpoint, reuse=False, tol=1e-6, max_iter=200)
    results = _forces(calc, frames)
    references = _forces(exact, frames)
    assert results[0][1]["nstep"] > evaluations and "propagated" not in results[0][1]  # cold: a solve
    errors = []
    for (forces, stats), (reference, _) in zip(results[1:], references[1:]):
        assert stats["nstep"] == evaluations and stats["propagated"] is True
        errors.append(np.linalg.norm(forces - reference) / np.linalg.norm(reference))
    assert calc.propagation_fallbacks == 0
    print(f"{name}: force error against the exact fixed point, mean {np.mean(errors):.2e} max {np.max(errors):.2e}")
    assert max(errors) < 0.05


def test_the_guard_falls_back_to_a_converged_solve_and_counts_it(trained_checkpoint):
    from fairchem_deq import DEQCalculator

    frames = ethanol_atoms([20, 21, 22])
    calc = DEQCalculator(trained_checkpoint, propagation="one_step", propagation_guard=1e-12)
    solved = DEQCalculator(trained_checkpoint)  # the checkpoint's warm solve
    for (forces, stats), (reference, _) in list(zip(_forces(calc, frames), _forces(solved, frames)))[1:]:
        assert stats["propagated"] is False and stats["converged"] is True
        assert stats["nstep"] > 1
        assert np.linalg.norm(forces - reference) / np.linalg.norm(reference) < 2e-2
    assert calc.propagation_fallbacks == 2


def test_propagation_is_refused_where_it_cannot_apply(explicit_checkpoint):
    from fairchem_deq import DEQCalculator

    with pytest.raises(ValueError, match="unknown propagation"):
        DEQCalculator(explicit_checkpoint, propagation="always")
    with pytest.raises(ValueError, match="explicit EquiformerV2: it has no fixed-point solve to set \\(propagation\\)"):
        DEQCalculator(explicit_checkpoint, propagation="one_step")


def test_md_command_propagates_and_reports_fallbacks(trained_checkpoint, tmp_path):
    extra = ("--propagation", "one_step", "--propagation-guard", "10")
    run_cli(md_args(trained_checkpoint, tmp_path / "md", 4, *extra), cwd=tmp_path, program="fairchem-deq")
    report = json.loads((tmp_path / "md" / "report.json").read_text())
    assert report["propagation"] == "one_step" and report["propagation_fallbacks"] == 0
    with open(tmp_path / "md" / "md_log.csv") as f:
        iterations = [float(line.split(",")[6]) for line in f.read().splitlines()[2:]]
    assert iterations == [1.0] * 4  # every step after the first: one evaluation
