"""Readout constants measured on the training data (`auto`), checked when given, and the
EMA warm-up: the MD recipe inherited OC20's 77.81 atoms / 23.4 neighbours and nothing
learned the energy."""

from __future__ import annotations

import logging

import pytest
import torch

from fairchem_deq.trainers.ema_warmup import initial_weight_share
from fairchem_deq.trainers.readout_constants import check_readout_constants, resolve_auto_readout_constants


def _config(ethanol_lmdb, **backbone):
    return {
        "model": {"name": "hydra", "backbone": {"max_radius": 5.0, "max_neighbors": 1000, **backbone}},
        "dataset": {"train": {"format": "lmdb", "src": str(ethanol_lmdb / "train")}},
    }


def test_auto_constants_are_measured_on_the_training_set(ethanol_lmdb):
    config = _config(ethanol_lmdb, avg_num_nodes="auto", avg_degree="auto")
    assert resolve_auto_readout_constants(config)
    backbone = config["model"]["backbone"]
    # ethanol: 9 atoms, each within 5 Å of all 8 others
    assert backbone["avg_num_nodes"] == 9.0 and backbone["avg_degree"] == 8.0
    # a cap of 4 neighbours is what the model's graph would have
    capped = _config(ethanol_lmdb, avg_num_nodes="auto", avg_degree="auto", max_neighbors=4)
    resolve_auto_readout_constants(capped)
    assert capped["model"]["backbone"]["avg_degree"] == 4.0


def test_auto_without_training_data_is_a_clear_error(tmp_path):
    config = {
        "model": {"backbone": {"avg_num_nodes": "auto"}},
        "dataset": {"train": {"src": str(tmp_path / "missing")}},
    }
    with pytest.raises(ValueError, match="avg_num_nodes: auto.*dataset.train.src"):
        resolve_auto_readout_constants(config)


def test_constants_far_from_the_data_get_a_loud_warning(ethanol_lmdb, caplog):
    from fairchem.core.datasets.base_dataset import create_dataset

    dataset = create_dataset({"format": "lmdb", "src": str(ethanol_lmdb / "train")}, "train")
    with caplog.at_level(logging.WARNING):
        off = check_readout_constants(_config(ethanol_lmdb, avg_num_nodes=77.81, avg_degree=23.4), dataset)
    assert off == ["avg_num_nodes", "avg_degree"]
    assert "avg_num_nodes = 77.81 is 8.6x the training data's 9" in caplog.text
    assert check_readout_constants(_config(ethanol_lmdb, avg_num_nodes=12.0, avg_degree=6.0), dataset) == []


def test_ema_warmup_forgets_the_initial_weights():
    assert initial_weight_share(0.999, 1420, warmup=False) == pytest.approx(0.2415, abs=1e-4)
    assert initial_weight_share(0.999, 100, warmup=True) < 1e-10


@pytest.mark.slow
def test_shipped_md_config_trains_with_measured_constants_stored_in_the_checkpoint(explicit_checkpoint):
    """The eqv2_4l recipe (one block here) trained through fairchem's CLI (conftest)."""
    state = torch.load(explicit_checkpoint, map_location="cpu", weights_only=False)
    backbone = state["config"]["model"]["backbone"]
    assert (backbone["avg_num_nodes"], backbone["avg_degree"]) == (9.0, 8.0)
    assert state["ema"]["num_updates"] is not None  # fairchem's EMA with warm-up
