"""DEQForcesTrainer: fixed-point reuse in predict / validate / run-relaxations, and DDP."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli

pytestmark = pytest.mark.slow

CONFIG = str(REPO / "configs/md17/ethanol/deq1.yml")
# evaluation at tol 1e-3 so that warm vs cold compares reuse, not two loose solutions
TIGHT = ["--model.backbone.deq.eval_cold.tol=0.001", "--model.backbone.deq.eval_warm.tol=0.001"]


def _predict(tmp_path, checkpoint, ethanol_lmdb, test_src, name, extra=()):
    """`--mode predict` of `test_src` on one CPU rank -> (predictions, solver statistics)."""
    _cli_run(tmp_path, checkpoint, ethanol_lmdb, "predict", name, "test", test_src, ranks=1, extra=extra)
    results = tmp_path / "results" / name
    return np.load(results / "s2ef_predictions.npz"), json.loads(
        (results / "s2ef_predictions_deq_stats.json").read_text()
    )


def test_predict_in_trajectory_order_reuses_fixed_points(
    tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb
):
    preds, stats = _predict(
        tmp_path,
        trained_checkpoint,
        ethanol_lmdb,
        ethanol_trajectory_lmdb,
        "reuse",
        extra=["--task.deq.compare_cold=True"],
    )
    # fairchem's S2EF file (fairchem sorts ids as strings), ids "sid_fid" for all 40 frames
    assert sorted(preds["ids"].tolist()) == sorted(f"0_{i}" for i in range(40))
    assert preds["forces"].shape == (40 * 9, 3)
    # 4 segments of 10 frames (eval batch 4): all but each segment's first frame warm-started
    assert stats["deq_nstep_warm_count"] == 36 and stats["cache_refused"] == 0
    assert stats["deq_nstep_warm_mean"] < stats["deq_nstep_cold_mean"]
    assert stats["deq_markov_dev_max"] < 0.01  # the paper's Markov check: < 1 % force change

    cold_preds, cold_stats = _predict(
        tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb, "noreuse", extra=["--task.deq.reuse=False"]
    )
    assert "deq_nstep_warm_mean" not in cold_stats and cold_stats["cache_refused"] == 0
    assert stats["deq_nstep_mean"] < cold_stats["deq_nstep_mean"]
    rel = np.linalg.norm(preds["forces"] - cold_preds["forces"]) / np.linalg.norm(cold_preds["forces"])
    assert rel < 0.01


def test_random_frames_are_not_warm_started_so_predictions_do_not_depend_on_their_order(
    tmp_path, trained_checkpoint, ethanol_lmdb
):
    """The val split holds 8 random frames of one molecule (one sid): each was warm-started
    from an unrelated frame, and forces depended on the order of the frames."""
    random_frames = tmp_path / "random_frames"  # one LMDB can be opened once per process
    shutil.copytree(ethanol_lmdb / "val", random_frames)
    preds, stats = _predict(tmp_path, trained_checkpoint, ethanol_lmdb, random_frames, "random")
    assert stats["deq_nstep_count"] == 8
    # 4 segments of 2 frames: every second frame had a cached fixed point, 1-2 Å away
    assert stats["cache_refused"] == 4 and stats["deq_reuse_refused_count"] == 8
    assert stats["deq_reuse_refused_mean"] == 0.5 and "deq_nstep_warm_count" not in stats
    cold, _ = _predict(
        tmp_path, trained_checkpoint, ethanol_lmdb, random_frames, "random-cold", extra=["--task.deq.reuse=False"]
    )
    by_id = lambda p: dict(zip(p["ids"].tolist(), p["forces"].reshape(8, 9, 3)))  # noqa: E731
    warm_f, cold_f = by_id(preds), by_id(cold)
    both = np.stack([warm_f[i] for i in cold_f]), np.stack(list(cold_f.values()))
    assert np.linalg.norm(both[0] - both[1]) / np.linalg.norm(both[1]) < 0.01  # both cold solves


def test_validate_reports_solver_statistics(tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb):
    proc = run_cli(
        [
            "--mode",
            "validate",
            "--config-yml",
            CONFIG,
            "--cpu",
            "--checkpoint",
            str(trained_checkpoint),
            "--run-dir",
            str(tmp_path),
            "--identifier",
            "val",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            f"--dataset.val.src={ethanol_trajectory_lmdb}",
            "--task.deq.compare_cold=True",
        ],
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    for key in ("forces_mae", "deq_nstep:", "deq_nstep_cold:", "deq_markov_dev:", "deq_nstep_max:"):
        assert key in log, key
    (stats_file,) = (tmp_path / "results").glob("*/s2ef_val_deq_stats.json")  # was never written
    assert json.loads(stats_file.read_text())["deq_nstep_count"] == 40


def _relax(tmp_path, checkpoint, ethanol_lmdb, relax_src, name, reuse):
    run_cli(
        [
            "--mode",
            "run-relaxations",
            "--config-yml",
            CONFIG,
            "--cpu",
            "--checkpoint",
            str(checkpoint),
            "--run-dir",
            str(tmp_path),
            "--identifier",
            name,
            "--timestamp-id",
            name,
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            f"--dataset.relax.src={relax_src}",
            "--dataset.relax.format=lmdb",
            "--task.relaxation_steps=6",
            "--task.relaxation_fmax=0.0001",
            "--task.write_pos=True",
            "--task.relax_opt={'maxstep': 0.04, 'memory': 50, 'damping': 1.0, 'alpha': 70.0}",
            f"--task.deq.reuse={reuse}",
        ],
        cwd=tmp_path,
    )
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


def test_two_rank_ddp_training_validates_and_logs_solver_statistics(tmp_path, ethanol_lmdb, ethanol_trajectory_lmdb):
    """Validation on one MD trajectory (one sid) under 2 ranks: rank 1 used to get no frames
    and die in fairchem's update_best (KeyError 'forces_mae') while rank 0 hung."""
    proc = run_cli(
        [
            "--mode",
            "train",
            "--config-yml",
            CONFIG,
            "--cpu",
            "--num-gpus",
            "2",
            "--run-dir",
            str(tmp_path),
            "--identifier",
            "ddp",
            "--timestamp-id",
            "ddp",
            "--print-every",
            "2",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            "--optim.max_epochs=1",
            f"--dataset.val.src={ethanol_trajectory_lmdb}",
            "--optim.eval_every=4",
            "--optim.checkpoint_every=-1",
            "--task.deq.compare_cold=True",
            "--optim.scheduler_params.warmup_epochs=0.25",  # >= 1 step of the 8 per epoch per rank
        ],
        cwd=tmp_path,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert "Running in local mode with 2 ranks" in log
    assert "deq_nstep:" in log and "deq_nonconverged:" in log
    assert log.count("Evaluating on val") == 2  # steps 4 and 8
    stats = json.loads((tmp_path / "results" / "ddp" / "s2ef_val_deq_stats.json").read_text())
    # 40 frames in 8 segments (2 ranks x batch 4): 8 cold starts, 32 warm, all ranks counted
    assert stats["deq_nstep_count"] == 40 and stats["deq_nstep_warm_count"] == 32
    state = torch.load(tmp_path / "checkpoints" / "ddp" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 64 // (4 * 2)  # 64 frames, batch 4 per rank, 2 ranks


def _cli_run(tmp_path, checkpoint, ethanol_lmdb, mode, name, split, src, batch=4, ranks=2, extra=()):
    """`--mode` run of the checkpoint with `split` read from `src`, on `ranks` CPU ranks."""
    return run_cli(
        [
            "--mode",
            mode,
            "--config-yml",
            CONFIG,
            "--cpu",
            *(["--num-gpus", str(ranks)] if ranks > 1 else []),
            "--checkpoint",
            str(checkpoint),
            "--run-dir",
            str(tmp_path),
            "--identifier",
            name,
            "--timestamp-id",
            name,
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            f"--dataset.{split}.src={src}",
            f"--optim.eval_batch_size={batch}",
            "--optim.scheduler_params.warmup_epochs=0.25",  # >= 1 step of the 8 per epoch per rank
            *TIGHT,
            *extra,
        ],
        cwd=tmp_path,
        timeout=400,  # a rank left waiting in a collective fails the test instead of hanging it
    )


def test_two_rank_validate_and_predict_with_uneven_batches_per_rank(tmp_path, trained_checkpoint, ethanol_lmdb):
    """25 frames in 7 segments (2 ranks x batch 4): rank 0 had 4 batches, rank 1 3, and
    validation hung on rank 0 in the loss's all-reduce. Rank 1 now runs a padding batch that
    counts nowhere: not in metrics, solver statistics, fixed-point cache or predictions."""
    from conftest import DATA

    from fairchem_deq.data import convert

    d = np.load(DATA / "md17_ethanol_300.npz")
    np.savez(tmp_path / "ethanol_25.npz", R=d["R"][:25], z=d["z"], E=d["E"][:25], F=d["F"][:25])
    convert(tmp_path / "ethanol_25.npz", tmp_path / "traj", split="none", progress=False)
    src = tmp_path / "traj" / "all"
    # as fairchem's make_lmdb_sizes writes it: the ranks read sid/fid from the LMDB, half each
    np.savez(src / "metadata.npz", natoms=np.load(src / "metadata.npz")["natoms"])

    proc = _cli_run(tmp_path, trained_checkpoint, ethanol_lmdb, "validate", "val2", "val", src)
    log = proc.stdout + proc.stderr
    assert "Running in local mode with 2 ranks" in log
    assert "Reading sid/fid of 13 items" in log and "Reading sid/fid of 12 items" in log
    val = json.loads((tmp_path / "results" / "val2" / "s2ef_val_deq_stats.json").read_text())
    # 7 segments, each solved cold once: the padding batch's 3 cold solves are not counted
    assert val["deq_nstep_count"] == 25 and val["deq_nstep_warm_count"] == 18
    # one rank with batch 8 steps the same 7 segments (8 wanted): the same solves, no padding
    single = _cli_run(tmp_path, trained_checkpoint, ethanol_lmdb, "validate", "val1", "val", src, batch=8, ranks=1)
    metrics = [dict(re.findall(r"(\w+): ([-+0-9.e]+)", p.stdout + p.stderr)) for p in (proc, single)]
    for key in ("energy_mae", "forces_mae", "forces_cosine_similarity"):
        # logged to 4 decimals; counting the 3 padding copies moved energy_mae by 1.6 %
        assert float(metrics[0][key]) == pytest.approx(float(metrics[1][key]), rel=1e-3, abs=2e-4), key

    _cli_run(tmp_path, trained_checkpoint, ethanol_lmdb, "predict", "pred2", "test", src)
    results = tmp_path / "results" / "pred2"
    preds = np.load(results / "s2ef_predictions.npz")
    assert sorted(preds["ids"].tolist()) == sorted(f"0_{i}" for i in range(25))  # each frame once
    assert preds["forces"].shape == (25 * 9, 3) and len(preds["energy"]) == 25
    stats = json.loads((results / "s2ef_predictions_deq_stats.json").read_text())
    assert stats["deq_nstep_count"] == 25 and stats["deq_nstep_warm_count"] == 18
