"""DEQForcesTrainer: fixed-point reuse in predict / validate / run-relaxations, and DDP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs/md17/ethanol/deq1.yml")
# evaluation at tol 1e-3 so that warm vs cold compares reuse, not two loose solutions
TIGHT = ["--model.backbone.deq.eval_cold.tol=0.001", "--model.backbone.deq.eval_warm.tol=0.001"]


def _predict(tmp_path, checkpoint, ethanol_lmdb, test_src, name, extra=()):
    run_cli([
        "--mode", "predict", "--config-yml", CONFIG, "--cpu", "--checkpoint", str(checkpoint),
        "--run-dir", str(tmp_path), "--identifier", name, "--timestamp-id", name,
        *TINY_OVERRIDES, *dataset_overrides(ethanol_lmdb), f"--dataset.test.src={test_src}", *TIGHT, *extra,
    ], cwd=tmp_path)
    results = tmp_path / "results" / name
    return np.load(results / "s2ef_predictions.npz"), json.loads((results / "s2ef_predictions_deq_stats.json").read_text())


def test_predict_in_trajectory_order_reuses_fixed_points(tmp_path, trained_checkpoint, ethanol_lmdb,
                                                         ethanol_trajectory_lmdb):
    preds, stats = _predict(tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb, "reuse")
    # fairchem's S2EF file (fairchem sorts ids as strings), ids "sid_fid" for all 40 frames
    assert sorted(preds["ids"].tolist()) == sorted(f"0_{i}" for i in range(40))
    assert preds["forces"].shape == (40 * 9, 3)
    assert stats["deq_nstep_warm_count"] == 39  # every frame after the first is warm-started
    assert stats["deq_nstep_warm_mean"] < stats["deq_nstep_cold_mean"]
    assert stats["deq_markov_dev_max"] < 0.01  # the paper's Markov check: < 1 % force change

    cold_preds, cold_stats = _predict(tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb,
                                      "noreuse", extra=["--task.deq.reuse=False"])
    assert "deq_nstep_warm_mean" not in cold_stats
    assert stats["deq_nstep_mean"] < cold_stats["deq_nstep_mean"]
    rel = np.linalg.norm(preds["forces"] - cold_preds["forces"]) / np.linalg.norm(cold_preds["forces"])
    assert rel < 0.01


def test_validate_reports_solver_statistics(tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb):
    proc = run_cli([
        "--mode", "validate", "--config-yml", CONFIG, "--cpu", "--checkpoint", str(trained_checkpoint),
        "--run-dir", str(tmp_path), "--identifier", "val", *TINY_OVERRIDES,
        *dataset_overrides(ethanol_lmdb), f"--dataset.val.src={ethanol_trajectory_lmdb}",
    ], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    for key in ("forces_mae", "deq_nstep:", "deq_nstep_cold:", "deq_markov_dev:", "deq_nstep_max:"):
        assert key in log, key


def _relax(tmp_path, checkpoint, ethanol_lmdb, relax_src, name, reuse):
    run_cli([
        "--mode", "run-relaxations", "--config-yml", CONFIG, "--cpu", "--checkpoint", str(checkpoint),
        "--run-dir", str(tmp_path), "--identifier", name, "--timestamp-id", name,
        *TINY_OVERRIDES, *dataset_overrides(ethanol_lmdb),
        f"--dataset.relax.src={relax_src}", "--dataset.relax.format=lmdb",
        "--task.relaxation_steps=6", "--task.relaxation_fmax=0.0001", "--task.write_pos=True",
        "--task.relax_opt={'maxstep': 0.04, 'memory': 50, 'damping': 1.0, 'alpha': 70.0}",
        f"--task.deq.reuse={reuse}",
    ], cwd=tmp_path)
    results = tmp_path / "results" / name
    assert (results / "relaxed_positions.npz").is_file()
    return json.loads((results / "s2ef_relaxations_deq_stats.json").read_text())


def test_run_relaxations_reuses_fixed_points_across_optimiser_steps(tmp_path, trained_checkpoint, ethanol_lmdb):
    from ase.io import read

    from conftest import DATA
    from fairchem_deq.data import convert

    initial = tmp_path / "initial.traj"
    read(DATA / "random1000163.traj", index=0).write(initial)
    convert(initial, tmp_path / "relax", split="none", oc20_tags=True, progress=False)
    src = tmp_path / "relax" / "all"
    warm = _relax(tmp_path, trained_checkpoint, ethanol_lmdb, src, "relax-reuse", True)
    cold = _relax(tmp_path, trained_checkpoint, ethanol_lmdb, src, "relax-cold", False)
    assert warm["deq_nstep_warm_count"] >= 5
    assert warm["deq_nstep_total"] < cold["deq_nstep_total"], (warm, cold)


def test_two_rank_ddp_training_logs_solver_statistics(tmp_path, ethanol_lmdb):
    proc = run_cli([
        "--mode", "train", "--config-yml", CONFIG, "--cpu", "--num-gpus", "2",
        "--run-dir", str(tmp_path), "--identifier", "ddp", "--timestamp-id", "ddp", "--print-every", "2",
        *TINY_OVERRIDES, *dataset_overrides(ethanol_lmdb), "--optim.max_epochs=1",
        "--optim.eval_every=1000000", "--optim.checkpoint_every=-1",
        "--optim.scheduler_params.warmup_epochs=0.25",  # >= 1 step of the 8 per epoch per rank
    ], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "Running in local mode with 2 ranks" in log
    assert "deq_nstep:" in log and "deq_nonconverged:" in log
    state = torch.load(tmp_path / "checkpoints" / "ddp" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 64 // (4 * 2)  # 64 frames, batch 4 per rank, 2 ranks
