"""Warm and cold structures in one batch: each row is solved with its own phase's settings,
and the contraction estimate of a structure's last solve is handed to its next one."""

from __future__ import annotations

import pytest
import torch
from conftest import ethanol_atoms, make_model, to_batch

from fairchem_deq.reuse import FixedPointCache, forward_with_reuse
from fairchem_deq.solve import WarmStart

TIGHT = {"max_iter": 80, "tol": 1e-5, "stop_mode": "rel"}
LOOSE = {"max_iter": 80, "tol": 1e-2, "stop_mode": "rel"}


def _solve(model, batch, guess=None):
    if guess is not None:
        batch.warm_start = WarmStart.at(guess, len(batch.natoms))
    with torch.no_grad():
        return model.backbone(batch)


@pytest.mark.usefixtures("one_thread")
def test_a_cold_row_does_not_make_a_warm_row_cold():
    """Frame 7 warm (its fixed point to the loose tolerance) beside frame 9 cold: the warm row
    is judged by eval_warm (loose: one evaluation), the cold row by eval_cold (tight)."""
    model = make_model({"eval_cold": LOOSE, "eval_warm": LOOSE}).eval()
    fixed_point = _solve(model, to_batch(ethanol_atoms([7])))["deq"].fixed_point
    model.backbone.set_solver_settings("eval_cold", **TIGHT)
    guess = torch.cat([fixed_point, torch.zeros_like(fixed_point)])  # frame 7 warm, frame 9 cold
    stats = _solve(model, to_batch(ethanol_atoms([7, 9])), guess)["deq"].stats
    assert stats["converged"].tolist() == [True, True]
    assert int(stats["nstep"][0]) == 1, stats  # the warm row met the warm tolerance at once
    assert float(stats["rel_residual"][1]) < TIGHT["tol"]  # the cold row kept the cold one
    assert int(stats["nstep"][1]) > 3
    assert not bool(stats["fallback"].any())


@pytest.mark.usefixtures("one_thread")
def test_a_failed_warm_row_falls_back_to_cold_in_a_mixed_batch():
    model = make_model({"eval_cold": TIGHT, "eval_warm": TIGHT}).eval()
    fixed_point = _solve(model, to_batch(ethanol_atoms([7])))["deq"].fixed_point
    guess = torch.cat([fixed_point * float("nan"), torch.zeros_like(fixed_point)])
    stats = _solve(model, to_batch(ethanol_atoms([7, 9])), guess)["deq"].stats
    assert stats["fallback"].tolist() == [True, False]
    assert stats["converged"].tolist() == [True, True]
    assert bool((stats["rel_residual"] < TIGHT["tol"]).all())


@pytest.mark.usefixtures("one_thread")
def test_warm_start_uses_the_cached_contraction_estimate():
    """stop_mode "error": a warm solve judged after one evaluation bounds its error with the
    contraction that the structure's previous solve measured, not the prior error_q0."""
    error_rule = {"max_iter": 80, "stop_mode": "error", "error_q0": 0.5}
    model = make_model({"eval_cold": {**error_rule, "tol": 1e-5}, "eval_warm": {**error_rule, "tol": 1e-3}}).eval()
    cache = FixedPointCache()
    with torch.no_grad():
        cold = forward_with_reuse(model, model.backbone, to_batch(ethanol_atoms([4])), cache)
        q_cold = float(cold.solution.stats["contraction"][0])
        assert int(cold.solution.stats["nstep"][0]) > 3
        assert abs(q_cold - 0.5) > 0.05  # the measured estimate is not the prior
        warm = forward_with_reuse(model, model.backbone, to_batch(ethanol_atoms([4])), cache)
    stats = warm.solution.stats
    assert bool(warm.warm_start.warm.all()) and int(stats["nstep"][0]) == 1
    assert float(stats["contraction"][0]) == pytest.approx(q_cold, rel=1e-6)
    expected = q_cold / (1 - q_cold) * float(stats["rel_residual"][0])
    assert float(stats["error_estimate"][0]) == pytest.approx(expected, rel=1e-5)
