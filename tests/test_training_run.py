"""TrainingRunMixin's checks (the atomic and final checkpoints are exercised through
fairchem's CLI in test_checkpoint_save.py and test_conservative_forces.py)."""

from __future__ import annotations

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
