"""Every config block is declared by the class that reads it and checked, once, before a run
makes any folder: the backbone's `deq` (injection included), the trainer's `task.deq` and
`optim.deq`."""

from __future__ import annotations

import pytest
from cli_helpers import REPO

from fairchem_deq.config.check import DEQConfigError, check_config
from fairchem_deq.config.show import merged_config
from fairchem_deq.models import DEQBackboneOptions
from fairchem_deq.reuse import ReuseOptions
from fairchem_deq.trainers.train_options import DEQTrainOptions

CONFIG = REPO / "configs/md17/ethanol/deq1.yml"


def test_the_blocks_of_the_trainer_and_the_backbone_are_parsed():
    blocks = check_config(merged_config(CONFIG))
    assert isinstance(blocks["model.backbone.deq"], DEQBackboneOptions)
    assert isinstance(blocks["task.deq"], ReuseOptions)
    assert isinstance(blocks["optim.deq"], DEQTrainOptions)
    assert blocks["model.backbone.deq"].grad == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model.backbone.deq.injection=nrom_add", r"model\.backbone\.deq.*Unknown DEQ injection 'nrom_add'"),
        ("--task.deq.warm_strat=linear", r"Unknown key\(s\) \['warm_strat'\] in `task\.deq`"),
        ("--optim.deq.fpc_weight=-1", r"optim\.deq"),
    ],
)
def test_a_bad_block_is_one_error_naming_it(override, message):
    with pytest.raises(DEQConfigError, match=message):
        check_config(merged_config(CONFIG, [override]))


def test_a_config_without_deq_classes_has_no_blocks():
    assert check_config(merged_config(REPO / "configs/md17/ethanol/eqv2_4l.yml")) == {}
