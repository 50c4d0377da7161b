"""DEQForcesTrainer writes checkpoints atomically (fairchem 1.10 writes them in place)."""

from __future__ import annotations

import shutil

import pytest
import torch


def test_interrupted_save_keeps_the_previous_checkpoint(trained_checkpoint, tmp_path, monkeypatch):
    import fairchem.core.trainers.base_trainer as base_trainer

    from fairchem_deq import DEQCalculator

    trainer = DEQCalculator(trained_checkpoint).trainer
    trainer.is_debug = False
    trainer.config["cmd"]["checkpoint_dir"] = str(tmp_path)
    good = tmp_path / "checkpoint.pt"
    shutil.copy(trained_checkpoint, good)
    before = good.read_bytes()

    def killed_while_writing(state, checkpoint_dir, checkpoint_file):
        (tmp_path / checkpoint_file).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # preemption in the middle of torch.save

    monkeypatch.setattr(base_trainer, "save_checkpoint", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(checkpoint_file="checkpoint.pt", training_state=False)
    assert good.read_bytes() == before  # fairchem alone would have truncated it
    assert (tmp_path / ".checkpoint.pt.partial").is_file()  # hidden, never named like a checkpoint
    assert torch.load(good, map_location="cpu", weights_only=False)["config"]["model"]

    monkeypatch.undo()
    path = trainer.save(checkpoint_file="checkpoint.pt", training_state=False)
    assert path == str(good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert "state_dict" in torch.load(good, map_location="cpu", weights_only=False)
