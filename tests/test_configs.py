"""Every runnable config under configs/ loads with fairchem's own loader, names classes that
fairchem's registry resolves, and builds as a (tiny) hydra model.

Runnable = every .yml under configs/ outside configs/includes/. The model of each distinct
(backbone class, num_layers, heads) is built once at a CPU-test width and run on a real
structure; every file is still loaded and resolved on its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from cli_helpers import REPO
from tiny_model import TINY_WIDTH

CONFIGS = REPO / "configs"
RUNNABLE = sorted(p for p in CONFIGS.rglob("*.yml") if "includes" not in p.relative_to(CONFIGS).parts)
OC20 = [p for p in RUNNABLE if p.relative_to(CONFIGS).parts[0] == "oc20"]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.fixture(scope="module")
def registry():
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports

    setup_imports()
    return registry


@pytest.fixture(scope="module")
def loaded():
    """path -> merged config, via fairchem.core.common.utils.load_config (what the CLI uses)."""
    from fairchem.core.common.utils import load_config

    configs = {}
    for path in RUNNABLE:
        config, _warnings, errors = load_config(path)
        assert not errors, f"{_rel(path)}: conflicting keys between its includes: {errors}"
        configs[path] = config
    return configs


def test_config_inventory():
    # MD17 (8 molecules) and MD22 (7) x 7 variants (deq1, deq2, eqv2_4l, eqv2_8l,
    # deq1_conservative, deq1_paper, deq2_paper), and the OC20 set
    assert len([p for p in RUNNABLE if p.parts[-3] == "md17" and "dens" not in p.name]) == 56
    assert len([p for p in RUNNABLE if p.parts[-3] == "md22" and "dens" not in p.name]) == 49
    names = {str(p.relative_to(CONFIGS / "oc20").with_suffix("")) for p in OC20}
    for size in ("200k", "2M", "all_md"):
        for variant in ("deq1", "deq2", "eqv2_8l"):
            assert f"s2ef/{size}/{variant}" in names
            assert f"relax/{size}/{variant}" in names
    assert {
        "s2ef/200k/eqv2_4l",
        "s2ef/2M/eqv2_n12_l6_m2",
        "s2ef/all_md/eqv2_n8_l4_m2",
        "s2ef/all_md/eqv2_n20_l6_m3",
        "converted/deq1",
        "relax/converted/deq1",
    } <= names
    # every S2EF/converted config has a relaxation twin (a *_paper variant differs only in its
    # training gradient: it relaxes with its model's twin)
    for name in names:
        if not name.startswith("relax/"):
            twin = "relax/" + name.removeprefix("s2ef/").removesuffix("_paper")
            assert twin in names, f"{name} has no {twin}"


def test_every_config_resolves_through_fairchems_registry(loaded, registry):
    for path, config in loaded.items():
        where = _rel(path)
        assert registry.get_trainer_class(config["trainer"]) is not None, where
        model = config["model"]
        assert model["name"] == "hydra", where
        assert registry.get_model_class(model["name"]) is not None
        backbone = registry.get_model_class(model["backbone"]["model"])
        assert backbone is not None, where
        if model.get("pass_through_head_outputs"):  # one head returns energy and forces
            assert set(model["heads"]) == {"energy_and_forces"}, where
            assert model["backbone"]["direct_forces"] is False, where
        else:
            assert set(model["heads"]) == {"energy", "forces"}, where
        for head in model["heads"].values():
            assert registry.get_model_class(head["module"]) is not None, where
        assert registry.get_logger_class(config["logger"]) is not None, where
        datasets = config["dataset"]
        assert registry.get_dataset_class(datasets["train"].get("format", "lmdb")) is not None, where
        assert datasets["train"]["src"] and datasets["val"]["src"], where
        for loss in config["loss_functions"]:
            for target, spec in loss.items():
                assert target in config["outputs"], where
                assert registry.get_loss_class(spec["fn"]) is not None, where
        # hydra needs the head property names (fairchem's _forward reads out[target][property])
        assert config["outputs"]["energy"]["property"] == "energy", where
        assert config["outputs"]["forces"]["property"] == "forces", where
        assert config["evaluation_metrics"]["primary_metric"] == "forces_mae", where
        # DEQ blocks and trainer options parse (a typo is an error there, not silently ignored)
        if backbone.__name__ in ("DEQEquiformerV2Backbone", "DEQEquiformerV2DeNSBackbone"):
            from fairchem_deq.config.blocks import parse_options
            from fairchem_deq.models import DEQBackboneOptions
            from fairchem_deq.reuse import ReuseOptions
            from fairchem_deq.trainers.dens_options import check_dens_options
            from fairchem_deq.trainers.train_options import DEQTrainOptions

            dens = backbone.__name__ == "DEQEquiformerV2DeNSBackbone"  # DeNS: its trainer and keys
            assert config["trainer"].endswith("DEQDeNSTrainer" if dens else "DEQForcesTrainer"), where
            DEQBackboneOptions.from_dict(model["backbone"]["deq"])
            parse_options(ReuseOptions, config.get("task", {}).get("deq"), "task.deq")
            parse_options(DEQTrainOptions, config["optim"].get("deq"), "optim.deq")
            if dens:
                check_dens_options(copy.deepcopy(config["optim"]))
        else:
            assert config["trainer"] in ("equiformerv2_forces", "fairchem_deq.trainers.ExplicitEquiformerV2Trainer"), (
                where
            )
            assert model["backbone"]["model"] == "equiformer_v2_backbone", where


def test_oc20_settings_follow_the_paper_and_fairchem(loaded):
    from fairchem_deq.models import DEQBackboneOptions

    for path in OC20:
        config, where = loaded[path], _rel(path)
        bb = config["model"]["backbone"]
        assert (bb["max_radius"], bb["max_neighbors"], bb["use_pbc"], bb["otf_graph"]) == (12.0, 20, True, True), where
        assert (bb["sphere_channels"], bb["num_heads"], bb["max_num_elements"]) == (128, 8, 90), where
        optim = config["optim"]
        assert (optim["clip_grad_norm"], optim["ema_decay"], optim["optimizer"]) == (100, 0.999, "AdamW"), where
        assert optim["scheduler_params"]["lambda_type"] == "cosine", where
        coefficients = {k: v["coefficient"] for loss in config["loss_functions"] for k, v in loss.items()}
        assert coefficients["forces"] == 100, where
        train = config["dataset"]["train"]
        assert train["key_mapping"] == {"y": "energy", "force": "forces"}, where
        converted = "converted" in path.parts
        normalizer = train["transforms"]["normalizer"]
        if converted:  # total energies: fitted references and normaliser
            assert "fit" in normalizer and "fit" in train["transforms"]["element_references"], where
        else:
            assert normalizer["energy"] == {"mean": -0.7554450631141663, "stdev": 2.887317180633545}, where
        size = next((s for s in ("200k", "2M", "all_md") if s in path.parts), None)
        if size == "200k":
            assert (optim["max_epochs"], optim["batch_size"], coefficients["energy"]) == (3, 4, 2), where
            assert 2e-4 <= optim["lr_initial"] <= 4e-4, where
        elif size == "2M":
            assert (optim["max_epochs"], optim["batch_size"], coefficients["energy"]) == (30, 4, 2), where
            assert optim["scheduler_params"]["warmup_epochs"] == 0.1, where
        elif size == "all_md":
            assert coefficients["energy"] == 4 and optim["scheduler_params"]["warmup_epochs"] == 0.01, where
            expected = (4, 1) if path.stem == "eqv2_n20_l6_m3" else (8, 3)
            assert (optim["batch_size"], optim["max_epochs"]) == expected, where
        if path.stem.startswith("deq"):
            assert (bb["lmax_list"], bb["mmax_list"], bb["num_layers"]) == ([3], [2], int(path.stem[3])), where
            deq = DEQBackboneOptions.from_dict(bb["deq"])
            assert deq.solver == "anderson", where
            for phase in ("train", "eval_cold", "eval_warm"):
                settings = deq.phase(phase)
                assert (settings.tol, settings.max_iter, settings.stop_mode) == (1e-4, 40, "rel"), where
        if "relax" in path.parts:
            task = config["task"]
            assert task["write_pos"] is True and task["relaxation_steps"] > 0, where
            assert set(task["relax_opt"]) <= {"maxstep", "memory", "damping", "alpha", "traj_dir"}, where
            assert config["dataset"]["relax"]["src"], where
        else:
            assert "relax" not in config["dataset"], where  # train mode would open it


def _tiny_model_config(config: dict) -> dict:
    """The config's model at test width, `auto` readout constants measured on real frames."""
    from conftest import measure_auto_readout_constants

    model = copy.deepcopy(config["model"])
    model["backbone"].update(TINY_WIDTH)
    measure_auto_readout_constants(model["backbone"])
    return model


def test_every_distinct_model_builds_tiny_and_runs(loaded, registry, one_thread):
    from conftest import ethanol_atoms, to_batch

    batch = to_batch(ethanol_atoms([0]))
    built = {}
    for path, config in loaded.items():
        bb = config["model"]["backbone"]
        key = (
            bb["model"],
            bb["num_layers"],
            bb.get("norm_type"),
            tuple(sorted((k, v["module"]) for k, v in config["model"]["heads"].items())),
        )
        built.setdefault(key, path)
    assert len(built) >= 8, built  # DEQ1/2 x norms, 4/8/12/20-layer baselines
    for key, path in built.items():
        model_config = _tiny_model_config(loaded[path])
        name = model_config.pop("name")
        torch.manual_seed(0)
        model = registry.get_model_class(name)(**model_config)
        model.eval()
        with torch.no_grad():
            out = model(batch.clone())
        if loaded[path]["model"].get("pass_through_head_outputs"):  # energy-gradient head
            energy, forces = out["energy"], out["forces"]
        else:
            energy, forces = out["energy"]["energy"], out["forces"]["forces"]
        assert energy.shape == (1,), (key, _rel(path))
        assert forces.shape == (9, 3), (key, _rel(path))
        assert torch.isfinite(forces).all(), (key, _rel(path))
        backbone = model.backbone
        if "DEQ" in key[0]:
            assert len(backbone.deq_layer.blocks) == key[1]
        else:
            assert len(backbone.blocks) == key[1]


# deq keys an include states although they equal the default: the paper's solver tolerances,
# pinned per phase, and the gradient rule (a change of the defaults must not change the
# shipped models)
PINNED_DEFAULTS = {"train", "eval_cold", "eval_warm", "grad"}


def test_includes_do_not_restate_deq_defaults():
    """A deq key whose value is the default adds nothing; the defaults live in the options
    dataclasses (model.backbone.deq, task.deq, optim.deq), stated once."""
    import dataclasses

    import yaml

    from fairchem_deq.models import DEQBackboneOptions
    from fairchem_deq.reuse import ReuseOptions
    from fairchem_deq.trainers.train_options import DEQTrainOptions

    blocks = {
        ("model", "backbone", "deq"): dataclasses.asdict(DEQBackboneOptions()),
        ("task", "deq"): dataclasses.asdict(ReuseOptions()),
        ("optim", "deq"): dataclasses.asdict(DEQTrainOptions()),
    }
    checked = 0
    for path in sorted((CONFIGS / "includes").rglob("*.yml")):
        config = yaml.safe_load(path.read_text()) or {}
        for keys, defaults in blocks.items():
            block = config
            for key in keys:
                block = (block or {}).get(key)
            for key, value in (block or {}).items():
                checked += 1
                restated = key in defaults and value == defaults[key] and key not in PINNED_DEFAULTS
                assert not restated, f"{_rel(path)}: {'.'.join(keys)}.{key}: {value!r} is the default"
    assert checked >= 8  # the DEQ1/DEQ2 includes of MD and OC20


def test_a_broken_config_is_caught(tmp_path, registry):
    """The checks above can fail: a typo in a deq block, and a conflict between includes."""
    from fairchem.core.common.utils import load_config

    from fairchem_deq.models import DEQBackboneOptions

    bad = tmp_path / "bad.yml"
    inc = CONFIGS / "includes" / "oc20"
    bad.write_text(
        f"includes:\n  - {inc / 'base.yml'}\n  - {inc / 's2ef_200k.yml'}\n  - {inc / 'deq1.yml'}\n"
        "model:\n  backbone:\n    deq:\n      max_iters: 10\n"
    )
    config, _, errors = load_config(bad)
    assert not errors
    with pytest.raises(ValueError, match="max_iters"):
        DEQBackboneOptions.from_dict(config["model"]["backbone"]["deq"])
    clash = tmp_path / "clash.yml"
    clash.write_text(f"includes:\n  - {inc / 's2ef_200k.yml'}\n  - {inc / 's2ef_2M.yml'}\n")
    _, _, errors = load_config(clash)
    assert "optim.max_epochs" in errors
    with pytest.raises(RuntimeError, match="Failed to find"):
        registry.get_trainer_class("fairchem_deq.trainers.NoSuchTrainer")
