"""TrainingRunMixin's checks (the atomic and final checkpoints are exercised through
fairchem's CLI in test_checkpoint_save.py and test_conservative_forces.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from fairchem_deq.trainers.training_run import check_warmup


def test_a_warmup_shorter_than_one_step_is_refused_with_the_values_that_work():
    """fairchem's scheduler raised ZeroDivisionError for warmup_epochs 0.1 at 8 steps/epoch."""
    loader = list(range(8))  # 8 training steps per epoch
    with pytest.raises(ValueError, match=r"warmup_epochs=0.1 .* 8 training steps.*0 \(no warm-up\).*0.125"):
        check_warmup({"scheduler_params": {"warmup_epochs": 0.1}}, loader)
    check_warmup({"scheduler_params": {"warmup_epochs": 0.125}}, loader)
    check_warmup({"scheduler_params": {"warmup_epochs": 0}}, loader)
    check_warmup({"scheduler_params": {"warmup_epochs": 0.1}}, None)  # no training set: nothing to check


def _training_trainer(tmp_path, ethanol_lmdb, **optim):
    """A DEQForcesTrainer with a training set, built in-process from the shipped ethanol config."""
    from cli_helpers import REPO
    from conftest import TINY_BACKBONE
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import load_config

    config, _, errors = load_config(REPO / "configs/md17/ethanol/deq1.yml")
    assert not errors
    config["model"]["backbone"].update(TINY_BACKBONE)
    config["optim"].update(batch_size=4, eval_batch_size=4, num_workers=0, **optim)
    config["optim"]["scheduler_params"]["warmup_epochs"] = 0.1
    # a copy per trainer: LMDB refuses a second open of one environment in a process
    train = Path(tempfile.mkdtemp(dir=tmp_path)) / "train"
    shutil.copytree(ethanol_lmdb / "train", train)
    return registry.get_trainer_class(config["trainer"])(
        task=config.get("task", {}),
        model=config["model"],
        outputs=config["outputs"],
        dataset={"train": {"format": "lmdb", "src": str(train)}},
        loss_functions=config["loss_functions"],
        evaluation_metrics=config["evaluation_metrics"],
        optimizer=config["optim"],
        identifier="schedule",
        run_dir=str(tmp_path),
        local_rank=0,
        is_debug=True,
        cpu=True,
    )


def test_schedule_epochs_sets_the_length_of_the_learning_rate_schedule(tmp_path, ethanol_lmdb):
    """A budgeted run of 0.5 epoch ends its cosine at the budget; the loop keeps whole epochs."""
    trainer = _training_trainer(tmp_path, ethanol_lmdb, max_epochs=3, schedule_epochs=0.5)
    steps = len(trainer.train_loader)  # 64 frames, batch 4
    assert steps == 16
    assert trainer.config["optim"]["max_epochs"] == 3
    assert trainer.config["optim"]["scheduler_params"]["epochs"] == 8
    assert trainer.scheduler.scheduler.lr_lambdas[0](8) == pytest.approx(0.01)  # lr_min_factor at step 8
    default = _training_trainer(tmp_path, ethanol_lmdb, max_epochs=3)
    assert default.config["optim"]["scheduler_params"]["epochs"] == 3 * steps
    with pytest.raises(ValueError, match="schedule_epochs must be a positive number"):
        _training_trainer(tmp_path, ethanol_lmdb, max_epochs=3, schedule_epochs=0)
