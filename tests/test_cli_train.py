"""Training DEQuiformer through fairchem's own CLI with the shipped config (dotted paths)."""

from __future__ import annotations

import glob

import pytest
from cli_helpers import logged_losses, logged_steps, run_cli, train_args

pytestmark = pytest.mark.slow


def _train_args(run_dir, data_dir, identifier, epochs):
    return train_args(
        "configs/md17/ethanol/deq1.yml",
        run_dir,
        data_dir,
        identifier,
        epochs,
        "--optim.lr_initial=0.002",
        "--optim.checkpoint_every=-1",  # fairchem: save checkpoint.pt at the end of every epoch
    )


def test_training_through_fairchem_cli_lowers_loss_and_logs_solver_stats(ethanol_lmdb, tmp_path):
    proc = run_cli(_train_args(tmp_path, ethanol_lmdb, "deq-train", epochs=3), cwd=tmp_path)
    log = proc.stdout + proc.stderr
    losses = logged_losses(log)
    assert len(losses) >= 8, log[-3000:]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses
    assert "deq_nstep:" in log and "deq_rel_residual:" in log and "deq_nonconverged:" in log
    # fairchem's tensorboard logger got the run
    assert glob.glob(str(tmp_path / "logs" / "tensorboard" / "deq-train" / "events.out.*"))
    assert (tmp_path / "checkpoints" / "deq-train" / "checkpoint.pt").is_file()


def test_train_stop_resume_continues_step_counter_and_loss(ethanol_lmdb, tmp_path):
    first = run_cli(_train_args(tmp_path, ethanol_lmdb, "deq-part1", epochs=2), cwd=tmp_path)
    log1 = first.stdout + first.stderr
    steps1, losses1 = logged_steps(log1), logged_losses(log1)
    checkpoint = tmp_path / "checkpoints" / "deq-part1" / "checkpoint.pt"
    assert checkpoint.is_file()
    second = run_cli(
        [*_train_args(tmp_path, ethanol_lmdb, "deq-part2", epochs=3), "--checkpoint", str(checkpoint)],
        cwd=tmp_path,
    )
    log2 = second.stdout + second.stderr
    steps2, losses2 = logged_steps(log2), logged_losses(log2)
    assert steps2 and min(steps2) > max(steps1), (steps1, steps2)
    # weights and optimiser state came back: the loss carries on below where run 1 began
    assert sum(losses2) / len(losses2) < sum(losses1[:3]) / 3, (losses1, losses2)
    import torch

    state = torch.load(tmp_path / "checkpoints" / "deq-part2" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 * 64 // 4  # 3 epochs of 64 frames in batches of 4, across both runs
    assert state["optimizer"] and state["scheduler"] and state["ema"]


def test_fixed_point_correction_loss_adds_decoded_intermediate_states(ethanol_lmdb, tmp_path):
    """Same seed, same first batch: with n_states=2 and fpc_weight 0.8 the first loss grows by
    0.8 x the loss of the decoded intermediate state, and training runs."""
    common = ["--print-every", "1", "--optim.max_epochs=1", "--model.backbone.deq.train.max_iter=8"]
    base = run_cli([*_train_args(tmp_path, ethanol_lmdb, "plain", epochs=1), *common], cwd=tmp_path)
    fpc = run_cli(
        [
            *_train_args(tmp_path, ethanol_lmdb, "fpc", epochs=1),
            *common,
            "--model.backbone.deq.n_states=2",
            "--optim.deq.fpc_weight=0.8",
        ],
        cwd=tmp_path,
    )
    loss_plain = logged_losses(base.stdout + base.stderr)[0]
    loss_fpc = logged_losses(fpc.stdout + fpc.stderr)[0]
    assert loss_fpc > 1.2 * loss_plain, (loss_plain, loss_fpc)


def test_reuse_in_training_warm_starts_from_the_cache(ethanol_lmdb, tmp_path):
    """optim.deq.reuse_in_training: training batches start from cached fixed points (sid-keyed:
    for one MD17 molecule, the molecule's latest frame) and training still runs. Random
    frames are far apart: the default displacement bound refuses them, a loose one reuses."""
    proc = run_cli(
        [
            *_train_args(tmp_path, ethanol_lmdb, "reuse-train", epochs=1),
            "--print-every",
            "1",
            "--optim.deq.reuse_in_training=True",
            "--task.deq.reuse_max_displacement=100",
        ],
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert "deq_nstep_warm:" in log  # logged only for warm-started batches
    assert (tmp_path / "checkpoints" / "reuse-train" / "checkpoint.pt").is_file()
