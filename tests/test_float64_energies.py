"""Energies are not quantised by float32: the large offsets (normaliser mean, element
references) are added in float64, and the calculator, MD logs and prediction files carry
float64 energies (issue: at aspirin's -17,618 eV a float32 step is 1/512 eV)."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms

LARGE_MEAN = -17618.0  # rMD17 aspirin's total energy in eV


def float32_representable(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.astype(np.float32).astype(np.float64) == values


def test_denorm_adds_mean_and_element_references_in_float64():
    """fairchem's own _denorm_preds, Normalizer and LinearReferences, given a float32 output."""
    from fairchem.core.modules.normalization.element_references import LinearReferences
    from fairchem.core.modules.normalization.normalizer import Normalizer
    from fairchem.core.trainers.ocp_trainer import OCPTrainer
    from torch_geometric.data import Batch, Data

    from fairchem_deq.trainers import float64_outputs

    refs = torch.zeros(119)
    refs[[1, 6, 8]] = torch.tensor([-13.6, -1029.5, -2041.2])
    trainer = SimpleNamespace(
        output_targets={"energy": {"level": "system"}, "forces": {"level": "atom"}},
        normalizers={"energy": Normalizer(mean=LARGE_MEAN, rmsd=0.25), "forces": Normalizer(mean=0.0, rmsd=1.0)},
        elementrefs={"energy": LinearReferences(refs)},
        model=SimpleNamespace(training=False),
    )
    batch = Batch.from_data_list(
        [
            Data(
                pos=torch.zeros(9, 3),
                atomic_numbers=torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1]),
                natoms=torch.tensor([9]),
                sid=torch.tensor([7]),
                fid=torch.tensor([i]),
            )
            for i in range(3)
        ]
    )
    model_out = torch.tensor([[0.1234567], [0.1234568], [-0.0000123]], dtype=torch.float32)

    def denorm(key, pred, b):
        return OCPTrainer._denorm_preds(trainer, key, pred, b)

    float64_outputs.collect(trainer)
    energy = float64_outputs.denorm_preds(trainer, denorm, "energy", model_out, batch)
    assert energy.dtype == torch.float64
    ref_sum = float(refs.double()[[6, 6, 8, 1, 1, 1, 1, 1, 1]].sum())  # the float32 references, summed exactly
    expected = model_out.double() * 0.25 + LARGE_MEAN + ref_sum
    np.testing.assert_allclose(energy.numpy(), expected.numpy(), rtol=0, atol=1e-6)
    # float32 outputs 1e-7 apart stay apart (fairchem alone: both land on one float32 step)
    assert energy[0, 0] != energy[1, 0]
    assert not float32_representable(energy.numpy()).any()
    forces = float64_outputs.denorm_preds(trainer, denorm, "forces", torch.ones(27, 3), batch)
    assert forces.dtype == torch.float32  # no offset: left to fairchem
    # the prediction file gets the float64 values back, matched by id
    predictions = {"ids": ["7_2", "7_0", "7_1"], "energy": [np.float16(0)] * 3}
    float64_outputs.restore_float64(trainer, predictions)
    np.testing.assert_array_equal(np.array(predictions["energy"])[:, 0], energy.numpy()[[2, 0, 1], 0])


def test_calculator_adds_element_references(trained_checkpoint):
    """Checkpoints trained on total energies (OC20 converted data) carry fitted element
    references: the calculator adds their sum over the atoms (it passed a [1] energy where
    fairchem's LinearReferences needs [n_structures, 1] and failed on every such checkpoint)."""
    from fairchem.core.modules.normalization.element_references import LinearReferences

    from fairchem_deq import DEQCalculator

    atoms = ethanol_atoms([0])[0]
    calc = DEQCalculator(trained_checkpoint, reuse=False)
    atoms.calc = calc
    plain = atoms.get_potential_energy()
    refs = torch.zeros(119)
    refs[[1, 6, 8]] = torch.tensor([-13.6, -1029.5, -2041.2])
    calc.trainer.elementrefs["energy"] = LinearReferences(refs)
    calc.reset()
    with_refs = atoms.get_potential_energy()
    expected = plain + float(refs.double()[atoms.numbers].sum())
    assert with_refs == pytest.approx(expected, abs=1e-3)
    assert atoms.get_forces().shape == (9, 3)


@pytest.mark.slow
def test_calculator_and_md_log_energies_are_float64(trained_checkpoint, tmp_path):
    from fairchem_deq import DEQCalculator, run_md

    calc = DEQCalculator(trained_checkpoint)
    calc.trainer.normalizers["energy"].mean.fill_(LARGE_MEAN)
    energies = []
    for atoms in ethanol_atoms(range(4)):
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    assert all(isinstance(e, float) for e in energies)
    assert np.all(np.abs(np.array(energies) - LARGE_MEAN) < 50)
    assert not float32_representable(energies).any(), energies

    run_md(ethanol_atoms([0])[0], calc, steps=6, log=tmp_path / "md.csv", progress=False)
    with open(tmp_path / "md.csv") as f:
        epot = [float(r["epot_eV"]) for r in csv.DictReader(f)]
    assert len(set(epot)) == len(epot)  # float32: the same -17617.748046875 at every step
    assert not float32_representable(epot).any()


@pytest.mark.slow
def test_prediction_file_energies_are_float64(tmp_path, trained_checkpoint, ethanol_lmdb, ethanol_trajectory_lmdb):
    from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli

    run_cli(
        [
            "--mode",
            "predict",
            "--config-yml",
            str(REPO / "configs/md17/ethanol/deq1.yml"),
            "--cpu",
            "--checkpoint",
            str(trained_checkpoint),
            "--run-dir",
            str(tmp_path),
            "--identifier",
            "p",
            "--timestamp-id",
            "p",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            f"--dataset.test.src={ethanol_trajectory_lmdb}",
        ],
        cwd=tmp_path,
    )
    preds = np.load(tmp_path / "results" / "p" / "s2ef_predictions.npz")
    energy = preds["energy"].reshape(-1)
    assert preds["energy"].dtype == np.float64 and len(energy) == 40
    assert np.all(np.abs(energy + 4209) < 20)  # ethanol's total energy in eV, not float16-rounded
    assert not float32_representable(energy).any()
    assert len(np.unique(energy)) == 40
