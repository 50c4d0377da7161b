"""Mixed precision (fairchem's --amp, or a user's autocast): the fixed-point solve keeps
float32 arithmetic, so it spends the same evaluations as without autocast. Checked on the
CPU with bfloat16 autocast, the CPU's analogue of the CUDA float16 that --amp uses."""

from __future__ import annotations

import pytest
import torch
from conftest import ethanol_atoms, make_model, to_batch

from fairchem_deq.reuse import run_capturing_backbone

TOL = {"max_iter": 60, "tol": 1e-4, "stop_mode": "rel"}


def _solve(model, autocast: bool):
    batch = to_batch(ethanol_atoms([2, 40]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return run_capturing_backbone(model, model.backbone, batch)


@pytest.mark.usefixtures("one_thread")
def test_autocast_solves_in_float32_with_the_same_evaluations():
    model = make_model({"eval_cold": TOL}).eval()
    _, plain = _solve(model, autocast=False)
    _, amp = _solve(model, autocast=True)
    assert amp["deq"].fixed_point.dtype == torch.float32
    assert bool(amp["deq"].stats["converged"].all()), amp["deq"].stats
    assert amp["deq"].stats["nstep"].tolist() == plain["deq"].stats["nstep"].tolist()
    assert bool((amp["deq"].stats["rel_residual"] < TOL["tol"]).all())


@pytest.mark.usefixtures("one_thread")
def test_blocks_may_run_under_autocast_with_a_float32_solver():
    """deq.solve_under_autocast: f's blocks in bfloat16, the solver's arithmetic float32:
    finite and converged at a tolerance above bfloat16's rounding."""
    model = make_model({"eval_cold": {**TOL, "tol": 2e-2}, "solve_under_autocast": True}).eval()
    out, amp = _solve(model, autocast=True)
    assert amp["deq"].fixed_point.dtype == torch.float32
    assert bool(amp["deq"].stats["converged"].all()) and bool(amp["deq"].stats["finite"].all())
    assert bool(torch.isfinite(out["forces"]["forces"]).all())
