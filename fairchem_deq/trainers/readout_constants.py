"""EquiformerV2's readout constants taken from the training data, for any trainer.

`avg_num_nodes` and `avg_degree` of the backbone may be `auto`: before the model is built,
they are measured on the training set (`fairchem_deq.data.graph_stats`, at the backbone's
cutoff and neighbour cap) and written into the config, so the checkpoint stores the numbers
(evaluation from a checkpoint takes them from there). Numbers given explicitly are checked
against the same measurement: more than 2x off gets a loud warning (fairchem's OC20 values
on a molecule are 9x off for ethanol).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from fairchem_deq.data.graph_stats import dataset_graph_statistics

READOUT_KEYS = ("avg_num_nodes", "avg_degree")
AUTO = "auto"
# how far a given constant may be from the training data's before the warning
TOLERATED_RATIO = 2.0
# structures the measurement reads (evenly spaced over the training set)
SAMPLE = 1000


def _backbone(model_config: dict) -> dict:
    return model_config.get("backbone", model_config)


def _from_checkpoint(path) -> dict:
    if not path or not Path(path).is_file():
        return {}
    stored = torch.load(path, map_location="cpu", weights_only=False).get("config", {})
    backbone = _backbone(stored.get("model", {}))
    return {k: backbone[k] for k in READOUT_KEYS if isinstance(backbone.get(k), (int, float))}


def _train_dataset(config: dict):
    """The training set as fairchem's trainer builds it (its `config["dataset"]` is the train
    block; a raw YAML config has it under `dataset.train`)."""
    from fairchem.core.datasets.base_dataset import create_dataset

    dataset = config.get("dataset") or {}
    train = copy.deepcopy(dataset if "src" in dataset else dataset.get("train") or {})
    if not train.get("src") or not Path(train["src"]).exists():
        return None
    if "train_split_settings" in train:  # as fairchem's load_datasets does
        train["splits"] = {"train": train.pop("train_split_settings")}
    return create_dataset(train, "train")


def _statistics(dataset, backbone: dict):
    return dataset_graph_statistics(
        dataset, float(backbone.get("max_radius", 5.0)), int(backbone.get("max_neighbors", 20)), sample=SAMPLE
    )


def resolve_auto_readout_constants(config: dict) -> bool:
    """Replaces `auto` readout constants in `config` (in place): from the checkpoint being
    loaded when it stores them, else measured on the training set. True if measured."""
    backbone = _backbone(config["model"])
    auto = [k for k in READOUT_KEYS if backbone.get(k) == AUTO]
    if not auto:
        return False
    stored = _from_checkpoint(config.get("checkpoint"))
    for key in [k for k in auto if k in stored]:
        backbone[key] = stored[key]
        logging.info("readout constant %s = %.4g (from the checkpoint)", key, stored[key])
    auto = [k for k in auto if k not in stored]
    if not auto:
        return False
    dataset = _train_dataset(config)
    if dataset is None:
        raise ValueError(
            f"model.backbone {', '.join(f'{k}: auto' for k in auto)} is measured on the training set, "
            "but dataset.train.src is missing or does not exist (give numbers, or a checkpoint that "
            "stores them)"
        )
    try:
        stats = _statistics(dataset, backbone)
    finally:  # an LMDB can be open once per process: fairchem opens it again next
        _close(dataset)
    for key in auto:
        backbone[key] = getattr(stats, key)
        logging.info(
            "readout constant %s = %.4g, measured on %d training structures (cutoff %g Å, at most %d neighbours)",
            key,
            getattr(stats, key),
            stats.structures,
            stats.cutoff,
            stats.max_neighbors,
        )
    return True


def _close(dataset) -> None:
    """Closes the LMDB environments of a fairchem dataset (its Subset wraps the LMDB one)."""
    inner = getattr(dataset, "dataset", dataset)
    for env in [*(getattr(inner, "envs", None) or []), getattr(inner, "env", None)]:
        if env is not None:
            env.close()


def check_readout_constants(config: dict, dataset) -> list[str]:
    """Warns (loudly) for each readout constant more than 2x off the training data's.
    Returns the keys it warned about."""
    backbone = _backbone(config["model"])
    given = [k for k in READOUT_KEYS if isinstance(backbone.get(k), (int, float))]
    if not given or dataset is None or len(dataset) == 0:
        return []
    stats = _statistics(dataset, backbone)
    off = []
    for key in given:
        measured = getattr(stats, key)
        ratio = float(backbone[key]) / measured if measured else float("inf")
        if not 1 / TOLERATED_RATIO <= ratio <= TOLERATED_RATIO:
            off.append(key)
            logging.warning(
                "!!! model.backbone.%s = %g is %.1fx the training data's %.4g (%d structures, cutoff "
                "%g Å): the energy readout / edge-degree embedding is mis-scaled. Set it to `auto` or "
                "to the measured value.",
                key,
                float(backbone[key]),
                ratio,
                measured,
                stats.structures,
                stats.cutoff,
            )
    return off


class ReadoutConstantsMixin:
    """Trainer mixin: resolves `auto` readout constants just before the model is built, and
    checks given ones against the training set once it is loaded (training runs only)."""

    _readout_measured = False

    def load_model(self) -> None:
        self._readout_measured = resolve_auto_readout_constants(self.config)
        super().load_model()

    def load_datasets(self) -> None:
        super().load_datasets()
        if not self._readout_measured and getattr(self, "train_dataset", None) is not None:
            check_readout_constants(self.config, self.train_dataset)
