"""Reference models: an exported inference checkpoint evaluates exactly what its training
checkpoint's EMA weights evaluate, and a checkpoint whose checksum differs from its card's
is refused before it is loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms

from fairchem_deq.command import CheckpointError
from fairchem_deq.reference import export_inference_checkpoint, reference_checkpoint, reference_models
from fairchem_deq.simulate import DEQCalculator


def _forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_exported_checkpoint_is_verified_and_evaluates_the_ema_weights(trained_checkpoint, tmp_path):
    trained = DEQCalculator(trained_checkpoint, weights="ema", reuse=False)
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=False)
    card = export_inference_checkpoint(trained.model, checkpoint, tmp_path / "tiny_deq1.pt", {"name": "tiny_deq1"})
    assert reference_models(tmp_path)["tiny_deq1"]["sha256"] == card["sha256"]
    saved = torch.load(tmp_path / "tiny_deq1.pt", map_location="cpu", weights_only=False)
    assert "optimizer" not in saved and "ema" not in saved  # inference only: the EMA weights are the weights

    shipped = DEQCalculator(reference_checkpoint("tiny_deq1", tmp_path), reuse=False)
    assert shipped.weights == "ema"
    for atoms in ethanol_atoms([0, 150]):
        (e_ref, f_ref), (e, f) = _forces(trained, atoms), _forces(shipped, atoms)
        assert e == pytest.approx(e_ref, abs=1e-9)
        np.testing.assert_allclose(f, f_ref, rtol=0, atol=1e-6)

    with open(tmp_path / "tiny_deq1.pt", "ab") as fh:
        fh.write(b"\0")  # a damaged file
    with pytest.raises(CheckpointError, match="sha256"):
        reference_checkpoint("tiny_deq1", tmp_path)
    with pytest.raises(CheckpointError, match="unknown reference model 'nope'.*tiny_deq1"):
        reference_checkpoint("nope", tmp_path)
