"""Which weights a checkpoint is evaluated with (EMA as fairchem's validation, or raw), and
fairchem's own OCPCalculator on a DEQ checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ethanol_atoms

from fairchem_deq.command import CheckpointError

# ---- fairchem_deq.checkpoint_weights on a small module --------------------------------


def _linear_checkpoint(ema: str):
    """A Linear layer and a checkpoint of it: `ema` "entry" (averages under "ema"), "none"
    ("ema": None, trained without EMA), "baked" (no "ema" key, EMA config: best_checkpoint.pt)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    shadow = [p.detach() + 1.0 for p in model.parameters()]
    checkpoint = {"state_dict": model.state_dict(), "config": {"optim": {"ema_decay": 0.999}}}
    if ema == "entry":
        checkpoint["ema"] = {"decay": 0.999, "num_updates": 5, "shadow_params": shadow, "collected_params": []}
    elif ema == "none":
        checkpoint["ema"] = None
        checkpoint["config"]["optim"] = {}
    return model, checkpoint, shadow


def test_apply_weights_copies_the_ema_entry_unless_raw_is_asked_for():
    from fairchem_deq.checkpoint_weights import apply_weights

    model, checkpoint, shadow = _linear_checkpoint("entry")
    raw = [p.detach().clone() for p in model.parameters()]
    assert apply_weights(model, checkpoint, "raw") == "raw"
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    assert apply_weights(model, checkpoint) == "ema"  # "auto"
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), shadow))


def test_apply_weights_errors_and_checkpoints_without_an_ema_entry():
    from fairchem_deq.checkpoint_weights import apply_weights

    model, checkpoint, _ = _linear_checkpoint("none")
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        apply_weights(model, checkpoint, "ema")
    assert apply_weights(model, checkpoint) == "raw"
    with pytest.raises(ValueError, match="unknown weights 'bogus'"):
        apply_weights(model, checkpoint, "bogus")
    # saved without training state by a trainer with an EMA: state_dict holds the averages
    model, checkpoint, _ = _linear_checkpoint("baked")
    before = [p.detach().clone() for p in model.parameters()]
    assert apply_weights(model, checkpoint) == "ema"
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(CheckpointError, match="holds only EMA weights"):
        apply_weights(model, checkpoint, "raw")
    model, checkpoint, shadow = _linear_checkpoint("entry")
    checkpoint["ema"]["shadow_params"] = shadow[:1]
    with pytest.raises(CheckpointError, match="do not fit the model: 1 averaged tensors for 2"):
        apply_weights(model, checkpoint)


def test_calculator_refuses_an_unknown_weights_choice_before_loading(tmp_path):
    from fairchem_deq import DEQCalculator

    with pytest.raises(ValueError, match="unknown weights 'best'.*'auto', 'ema', 'raw'"):
        DEQCalculator(tmp_path / "missing.pt", weights="best")


# ---- on a checkpoint trained through fairchem's CLI -----------------------------------


@pytest.fixture(scope="module")
def ema_checkpoint(trained_checkpoint, tmp_path_factory):
    """A copy of the trained checkpoint whose EMA weights surely differ from its raw ones."""
    checkpoint = torch.load(trained_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["ema"] is not None  # the MD configs train with optim.ema_decay
    g = torch.Generator().manual_seed(1)
    shadow = checkpoint["ema"]["shadow_params"]
    checkpoint["ema"]["shadow_params"] = [s + 0.02 * torch.randn(s.shape, generator=g) for s in shadow]
    path = tmp_path_factory.mktemp("ema") / "checkpoint.pt"
    torch.save(checkpoint, path)
    return path


def _energy_forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    torch.manual_seed(0)  # EquiformerV2's random edge frames: the same in every compared call
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.slow
def test_calculator_evaluates_the_ema_weights_fairchem_validates(ema_checkpoint, tmp_path):
    from fairchem_deq import DEQCalculator

    atoms = ethanol_atoms([0])[0]
    calc = DEQCalculator(ema_checkpoint, reuse=False)
    assert calc.weights == "ema"
    e_ema, f_ema = _energy_forces(calc, atoms)
    assert calc.last_solver_stats["weights"] == "ema"

    raw = DEQCalculator(ema_checkpoint, reuse=False, weights="raw")
    assert raw.weights == "raw"
    e_raw, f_raw = _energy_forces(raw, atoms)
    assert raw.last_solver_stats["weights"] == "raw"
    assert abs(e_ema - e_raw) > 1e-3 and np.abs(f_ema - f_raw).max() > 1e-3

    # the reference: the raw model with the EMA shadow parameters copied in, as fairchem's
    # ExponentialMovingAverage.copy_to does (over the trainable parameters, in order)
    shadow = torch.load(ema_checkpoint, map_location="cpu", weights_only=False)["ema"]["shadow_params"]
    params = [p for p in raw.model.parameters() if p.requires_grad]
    assert len(params) == len(shadow)
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s)
    raw.reset()
    e_ref, f_ref = _energy_forces(raw, atoms)
    assert e_ema == pytest.approx(e_ref, abs=1e-9)
    np.testing.assert_allclose(f_ema, f_ref, atol=1e-6)

    assert DEQCalculator(ema_checkpoint, weights="ema").weights == "ema"
    checkpoint = torch.load(ema_checkpoint, map_location="cpu", weights_only=False)
    checkpoint["ema"] = None
    torch.save(checkpoint, tmp_path / "no_ema.pt")
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        DEQCalculator(tmp_path / "no_ema.pt", weights="ema")
    assert DEQCalculator(tmp_path / "no_ema.pt").weights == "raw"


@pytest.mark.slow
def test_fairchems_ocp_calculator_loads_a_deq_checkpoint(trained_checkpoint):
    """fairchem's OCPCalculator evaluates a DEQ checkpoint (raw weights, as it does for any
    checkpoint: it loads in inference-only mode, without the EMA), each call solved from zero,
    as DEQCalculator(reuse=False, weights="raw") does."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    from fairchem_deq import DEQCalculator

    frames = ethanol_atoms([0, 1, 150])
    reference = DEQCalculator(trained_checkpoint, reuse=False, weights="raw")
    expected = [_energy_forces(reference, atoms) for atoms in frames]
    for trainer in (None, "deq_forces", "fairchem_deq.trainers.DEQForcesTrainer"):
        calc = OCPCalculator(checkpoint_path=trained_checkpoint, cpu=True, trainer=trainer)
        assert calc.trainer.ema is None  # fairchem's inference-only load: raw weights
        for atoms, (e_ref, f_ref) in zip(frames, expected):
            energy, forces = _energy_forces(calc, atoms)
            assert energy == pytest.approx(e_ref, abs=1e-6)
            np.testing.assert_allclose(forces, f_ref, atol=1e-5)
        cache = calc.trainer.fixed_point_cache
        assert cache.hits == 0 and len(cache) == 0  # independent structures: nothing reused


def test_saved_configs_name_the_trainer_class_fairchem_can_build():
    """fairchem stores its CLI's task name ("s2ef") as config["trainer"]; the package's trainers
    store a dotted path that fairchem's registry resolves (OCPCalculator builds from it)."""
    from fairchem.core.common.registry import registry

    from fairchem_deq.trainers import DEQForcesTrainer
    from fairchem_deq.trainers.deq_dens_trainer import DEQDeNSTrainer
    from fairchem_deq.trainers.explicit_forces_trainer import ExplicitEquiformerV2Trainer
    from fairchem_deq.trainers.training_run import trainer_path

    assert trainer_path(DEQForcesTrainer) == "fairchem_deq.trainers.DEQForcesTrainer"
    for cls in (DEQForcesTrainer, DEQDeNSTrainer, ExplicitEquiformerV2Trainer):
        assert registry.get_trainer_class(trainer_path(cls)) is cls
