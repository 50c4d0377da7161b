"""DeNS for DEQuiformer: the DEQ DeNS backbone, DEQDeNSTrainer and configs/md17/ethanol/deq1_dens.yml.

Real fairchem throughout: its DeNS backbone/heads/trainer underneath ours, its CLI for training.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from cli_helpers import REPO, TINY_OVERRIDES, dataset_overrides, run_cli
from conftest import DATA, TINY_BACKBONE, ethanol_atoms, measure_auto_readout_constants, to_batch

CONFIG = REPO / "configs/md17/ethanol/deq1_dens.yml"
DENS_HEADS = {"energy": {"module": "eqV2_DeNS_scalar_head"}, "forces": {"module": "eqV2_DeNS_vector_head"}}


pytestmark = pytest.mark.usefixtures("one_thread")


def _labelled_batch(frames):
    d = np.load(DATA / "md17_ethanol_300.npz")
    batch = to_batch(ethanol_atoms(frames))
    batch.energy = torch.tensor(np.ravel(d["E"][frames]), dtype=torch.float32)
    batch.forces = torch.tensor(d["F"][frames].reshape(-1, 3), dtype=torch.float32)
    return batch


def _dens_model(seed=0, **overrides):
    from fairchem.core.models.base import HydraModel

    torch.manual_seed(seed)
    backbone = dict(TINY_BACKBONE, model="deq_equiformer_v2_dens_backbone", num_layers=1, deq={}, **overrides)
    return HydraModel(backbone=backbone, heads=copy.deepcopy(DENS_HEADS), otf_graph=True)


def _config(path=CONFIG):
    from fairchem.core.common.utils import load_config

    config, _, errors = load_config(path)
    assert not errors
    config["model"]["backbone"].update(TINY_BACKBONE)
    measure_auto_readout_constants(config["model"]["backbone"])
    return config


def _trainer(config):
    """DEQDeNSTrainer built in-process the way fairchem's OCPCalculator builds one."""
    from fairchem.core.common.registry import registry

    return registry.get_trainer_class(config["trainer"])(
        task=config.get("task", {}),
        model=config["model"],
        outputs=config["outputs"],
        dataset=[{"format": "lmdb"}],
        loss_functions=config["loss_functions"],
        evaluation_metrics=config["evaluation_metrics"],
        optimizer=config["optim"],
        identifier="",
        local_rank=0,
        is_debug=True,
        cpu=True,
        inference_only=True,
    )


# ---- backbone ---------------------------------------------------------------------------


def _injection(model, batch):
    """x handed to the fixed-point layer (the DEQ injection), and the fixed point."""
    seen = {}

    def keep(_module, args):
        seen["x"] = args[0].embedding.clone()

    from fairchem_deq.reuse import run_capturing_backbone

    handle = model.backbone.deq_layer.register_forward_pre_hook(keep)
    torch.manual_seed(0)  # EquiformerV2's random edge frames: the same for both calls
    try:
        with torch.no_grad():
            _, backbone_output = run_capturing_backbone(model, model.backbone, batch)
    finally:
        handle.remove()
    return seen["x"], backbone_output["deq"].fixed_point


@pytest.mark.parametrize("encode", [True, False])
def test_force_encoding_of_a_noisy_structure_enters_the_deq_injection(encode):
    model = _dens_model(use_force_encoding=encode).eval()
    clean = _labelled_batch([0, 1])
    noisy = clean.clone()
    noisy.denoising_pos_forward = True  # what fairchem's add_gaussian_noise_to_position sets
    x_clean, z_clean = _injection(model, clean)
    x_noisy, z_noisy = _injection(model, noisy)
    if encode:  # the solve sees the forces: injection and fixed point change
        assert (x_noisy - x_clean).abs().max() > 1e-3
        assert (z_noisy - z_clean).abs().max() > 1e-3
    else:  # fairchem's ablation switch zeroes the encoding: nothing changes
        assert torch.equal(x_noisy, x_clean) and torch.equal(z_noisy, z_clean)


def test_dens_backbone_refuses_energy_gradient_forces():
    with pytest.raises(ValueError, match="direct forces"):
        _dens_model(direct_forces=False)


# ---- bad configs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda o: o["denoising_pos_params"].update(stdd=0.1), r"stdd.*optim.denoising_pos_params"),
        (lambda o: o.pop("use_denoising_pos"), "use_denoising_pos"),
        (lambda o: o["denoising_pos_params"].pop("std"), r"denoising_pos_params.std must be a number"),
        (lambda o: o["denoising_pos_params"].update(prob=2), r"prob must be in \[0, 1\]"),
        (lambda o: o["denoising_pos_params"].update(fixed_noise_std=False), "num_steps"),
        (lambda o: o.update(denoising_pos_coefficient=0), "denoising_pos_coefficient must be > 0"),
    ],
)
def test_bad_dens_options_fail_with_the_key_named(change, match):
    from fairchem_deq.trainers.dens_options import check_dens_options

    optim = copy.deepcopy(_config()["optim"])
    check_dens_options(optim)  # the shipped block is valid
    change(optim)
    with pytest.raises(ValueError, match=match):
        check_dens_options(optim)


def test_integer_noise_std_is_accepted_as_float():
    from fairchem_deq.trainers.dens_options import check_dens_options

    optim = copy.deepcopy(_config()["optim"])
    optim["denoising_pos_params"]["std"] = 1
    check_dens_options(optim)
    assert isinstance(optim["denoising_pos_params"]["std"], float)  # fairchem's Normalizer needs it


def test_trainer_refuses_a_model_without_dens_heads():
    config = _config()
    config["model"]["heads"] = {
        "energy": {"module": "equiformerV2_scalar_head"},
        "forces": {"module": "equiformerV2_vector_head"},
    }
    with pytest.raises(TypeError, match="eqV2_DeNS_vector_head"):
        _trainer(config)
    config["optim"]["denoising_pos_params"]["stdd"] = 0.1  # checked before the model is built
    with pytest.raises(ValueError, match="stdd"):
        _trainer(config)


# ---- loss on noisy batches --------------------------------------------------------------


def _noised(batch, seed, corrupt_ratio=None):
    from fairchem.core.models.equiformer_v2.trainers.dens_trainer import add_gaussian_noise_to_position

    torch.manual_seed(seed)
    return add_gaussian_noise_to_position(batch.clone(), std=0.05, corrupt_ratio=corrupt_ratio)


def test_noisy_batch_loss_is_the_dens_objective_and_trains():
    from fairchem.core.models.equiformer_v2.trainers.dens_trainer import DenoisingForcesTrainer

    config = _config()
    config["model"]["backbone"]["deq"]["grad"] = 1  # phantom gradient: a cheaper backward
    trainer = _trainer(config)
    trainer.load_loss()  # inference_only skips it
    trainer.model.train()
    clean = _labelled_batch([0, 1])

    # all atoms noised: energy MAE (weight 1) + 5 x L2-MAE to the noise / std
    noisy = _noised(clean, seed=0)
    out = trainer._forward(noisy)
    dens = (out["forces"] - noisy.noise_vec / 0.05).norm(dim=-1).mean()
    energy = (out["energy"].view(-1) - noisy.energy).abs().mean()
    assert torch.allclose(trainer._compute_loss(out, noisy), energy + 5 * dens, rtol=1e-5)
    # why DeNSPaperLoss exists: fairchem 1.10 adds the forces term (weight 80) a second time
    fairchem = DenoisingForcesTrainer._compute_loss(trainer, out, noisy)
    assert torch.allclose(fairchem, energy + (5 + 80) * dens, rtol=1e-5)

    # a quarter of the atoms noised: those at weight 5 to the noise, the rest at 80 to the forces
    noisy = _noised(clean, seed=1, corrupt_ratio=0.25)
    mask = noisy.noise_mask.view(-1, 1)
    assert 0 < int(mask.sum()) < len(mask)
    out = trainer._forward(noisy)
    target = torch.where(mask, noisy.noise_vec / 0.05, noisy.forces)
    per_atom = (out["forces"] - target).norm(dim=-1, keepdim=True) * torch.where(mask, 5.0, 80.0)
    energy = (out["energy"].view(-1) - noisy.energy).abs().mean()
    assert torch.allclose(trainer._compute_loss(out, noisy), energy + per_atom.mean(), rtol=1e-5)

    # and it trains: a few optimiser steps on one noisy batch lower its denoising loss
    noisy = _noised(clean, seed=2)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        out = trainer._forward(noisy.clone())
        losses.append(float((out["forces"] - noisy.noise_vec / 0.05).norm(dim=-1).mean().detach()))
        optimizer.zero_grad()
        trainer._compute_loss(out, noisy).backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_oc20_fixed_atoms_stay_out_of_the_dens_loss():
    """OC20 slab with fixed atoms, the OC20 DeNS config (half the atoms noised): fixed atoms
    neither move nor count in the loss, as in fairchem's train_on_free_atoms."""
    from conftest import oc20_atoms

    config = _config(REPO / "configs/oc20/s2ef/200k/deq1_dens.yml")
    config["model"]["backbone"].update(max_neighbors=20, max_radius=6.0)
    trainer = _trainer(config)
    trainer.load_loss()
    atoms = oc20_atoms()
    clean = to_batch([atoms])
    clean.energy = torch.tensor([atoms.get_potential_energy()], dtype=torch.float32)
    clean.forces = torch.tensor(atoms.get_forces(), dtype=torch.float32)
    params = trainer.denoising_pos_params
    from fairchem.core.models.equiformer_v2.trainers.dens_trainer import add_gaussian_noise_to_position

    torch.manual_seed(3)
    noisy = add_gaussian_noise_to_position(clean.clone(), std=params.std, corrupt_ratio=params.corrupt_ratio)
    fixed = clean.fixed == 1
    assert torch.equal(noisy.pos[fixed], clean.pos[fixed]) and not torch.equal(noisy.pos, clean.pos)
    with torch.no_grad():
        out = trainer._forward(noisy)
        loss = trainer._compute_loss(out, noisy)
    mask = noisy.noise_mask.view(-1, 1)
    target = torch.where(mask, noisy.noise_vec / params.std, noisy.forces)
    weight = torch.where(mask, float(params.denoising_pos_coefficient), 100.0)
    per_atom = ((out["forces"] - target).norm(dim=-1, keepdim=True) * weight)[~fixed]
    energy = 2 * (out["energy"].view(-1) - noisy.energy).abs().mean()
    assert torch.allclose(loss, energy + per_atom.mean(), rtol=1e-5)


# ---- end to end: fairchem's CLI ---------------------------------------------------------


@pytest.fixture(scope="module")
def dens_run(tmp_path_factory, ethanol_lmdb, ethanol_trajectory_lmdb):
    """2 epochs of the shipped DeNS config through fairchem's CLI, every batch noised
    (1-step phantom gradient for speed)."""
    run_dir = tmp_path_factory.mktemp("dens")
    test_split = run_dir / "test"  # DeNS's trainer predicts it after each improved validation
    shutil.copytree(ethanol_trajectory_lmdb, test_split)  # consecutive frames: warm starts
    proc = run_cli(
        [
            "--mode",
            "train",
            "--config-yml",
            str(CONFIG),
            "--cpu",
            "--run-dir",
            str(run_dir),
            "--identifier",
            "dens",
            "--timestamp-id",
            "dens",
            "--print-every",
            "4",
            *TINY_OVERRIDES,
            *dataset_overrides(ethanol_lmdb),
            f"--dataset.test.src={test_split}",
            "--optim.max_epochs=2",
            "--optim.eval_every=1000000",
            "--optim.lr_initial=0.002",
            "--optim.denoising_pos_params.prob=1.0",
            "--model.backbone.deq.grad=1",
        ],
        cwd=run_dir,
        threads=1,
    )
    return run_dir, proc.stdout + proc.stderr


def test_cli_training_takes_the_denoising_branch_and_validates_clean(dens_run):
    run_dir, log = dens_run
    train_lines = [line for line in log.splitlines() if "dens_trainer.py" in line and " loss: " in line]
    assert len(train_lines) >= 8, log[-3000:]
    for line in train_lines:  # fairchem's DeNS metrics exist only for noised batches
        assert "denoising_pos_mae:" in line and "denoising_force_mae:" in line, line
        assert "deq_nstep:" in line, line  # DEQ solver statistics still reach the log
    val_lines = [line for line in log.splitlines() if "base_trainer.py" in line and "forces_mae:" in line]
    assert len(val_lines) == 2, log[-3000:]  # DeNS's trainer validates after each epoch
    for line in val_lines:  # on clean structures: the S2EF metrics, no denoising ones
        assert "energy_mae:" in line and "denoising" not in line, line
        # the val split holds random frames: their cached fixed points are not reused
        assert "deq_reuse_refused:" in line and "deq_nstep_warm:" not in line, line
    stats = json.loads((run_dir / "results" / "dens" / "s2ef_predictions_deq_stats.json").read_text())
    assert stats["deq_nstep_warm_count"] > 0  # warm starts in evaluation work as for DEQ1
    assert (run_dir / "checkpoints" / "dens" / "checkpoint.pt").is_file()


def test_clean_predictions_take_the_normal_path(dens_run):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    from fairchem_deq import DEQCalculator

    run_dir, _ = dens_run
    checkpoint = run_dir / "checkpoints" / "dens" / "checkpoint.pt"
    trainer = OCPCalculator(
        checkpoint_path=checkpoint, trainer="fairchem_deq.trainers.DEQDeNSTrainer", cpu=True, seed=0
    ).trainer
    assert type(trainer).__name__ == "DEQDeNSTrainer"
    clean = _labelled_batch([5])
    predicted = trainer.predict(clean.clone(), per_image=False, disable_tqdm=True)
    assert trainer.last_step.solution.stats["converged"].all()

    # the same weights through the plain DEQ trainer (ASE calculator): the same numbers
    # (fairchem's OCPCalculator evaluates the raw weights; DEQCalculator's default is the EMA)
    atoms = ethanol_atoms([5])[0]
    atoms.calc = DEQCalculator(checkpoint, reuse=False, weights="raw")
    np.testing.assert_allclose(predicted["forces"].numpy(), atoms.get_forces(), rtol=1e-4, atol=1e-5)
    assert abs(float(predicted["energy"][0]) - atoms.get_potential_energy()) < 1e-4

    # clean predictions do not read the reference forces (DeNS's force encoding stays off) ...
    scrambled = clean.clone()
    scrambled.forces = torch.randn_like(scrambled.forces)
    trainer.fixed_point_cache.clear()
    again = trainer.predict(scrambled, per_image=False, disable_tqdm=True)
    torch.testing.assert_close(again["forces"], predicted["forces"])
    # ... which a noised-mode batch would: the test can tell the two paths apart
    model = trainer._unwrapped_model
    noisy_mode = scrambled.clone()
    noisy_mode.denoising_pos_forward = True
    with torch.no_grad():
        out = model(noisy_mode)
    assert not torch.allclose(out["forces"]["forces"], model(clean.clone())["forces"]["forces"], atol=1e-4)
