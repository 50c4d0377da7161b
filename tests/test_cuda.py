"""What must hold on a GPU (`make gpu-check` runs these; skipped where CUDA is absent):
the solve on CUDA matches the CPU's, mixed precision keeps the solver in float32, and the
calculator runs there with reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms, make_model, oc20_atoms, to_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make gpu-check on a GPU machine)"),
]

TIGHT = {"max_iter": 80, "tol": 1e-5, "stop_mode": "rel"}
OC20_TOL = {"max_iter": 40, "tol": 1e-4, "stop_mode": "rel"}


def _forces(model, batch):
    return model(batch)["forces"]["forces"].detach().float().cpu()


def test_cold_solve_on_cuda_matches_the_cpu():
    model = make_model({"eval_cold": TIGHT}).eval()
    with torch.no_grad():
        cpu = _forces(model, to_batch(ethanol_atoms([0, 1])))
        gpu = _forces(model.cuda(), to_batch(ethanol_atoms([0, 1])).to("cuda"))
    assert float((gpu - cpu).norm() / cpu.norm()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_keeps_the_solver_in_float32(dtype):
    """fairchem's --amp autocasts `_forward` on CUDA: the blocks run in half precision, the
    solve's arithmetic in float32 (same evaluations as float32 within 2, forces within 1 %)."""
    from fairchem_deq.reuse import run_capturing_backbone

    model = make_model({"eval_cold": OC20_TOL}).eval().cuda()
    batch = to_batch([oc20_atoms()]).to("cuda")
    results = {}
    for amp in (False, True):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=amp):
            out, backbone_output = run_capturing_backbone(model, model.backbone, batch)
        results[amp] = (out["forces"]["forces"].float(), backbone_output["deq"].stats)
    (f32, s32), (famp, samp) = results[False], results[True]
    assert bool(samp["converged"].all()) and bool(torch.isfinite(famp).all())
    assert abs(int(samp["nstep"][0]) - int(s32["nstep"][0])) <= 2
    assert float((famp - f32).norm() / f32.norm()) < 1e-2


def test_calculator_on_cuda_reuses_its_fixed_point(trained_checkpoint):
    from fairchem_deq.simulate import DEQCalculator

    frames = ethanol_atoms([0, 1, 2])
    results = {}
    for cpu in (True, False):
        calc = DEQCalculator(trained_checkpoint, cpu=cpu, seed=0)
        results[cpu] = []
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calc
            results[cpu].append((atoms.get_forces(), calc.last_solver_stats["nstep"]))
    for (f_cpu, _), (f_gpu, _) in zip(results[True], results[False]):
        assert np.linalg.norm(f_gpu - f_cpu) / np.linalg.norm(f_cpu) < 2e-2
    assert results[False][-1][1] <= results[False][0][1]
