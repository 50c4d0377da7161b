"""Smoke test of the benchmark suite (benchmarks/), so that it cannot rot: every script runs
through `run_all`'s "smoke" profile (two frames, a few steps) on the tiny test checkpoints,
and writes its JSON and plot, with the keys RESULTS.md is written from, into a tmp folder
(never benchmarks/results/), `speed --replicas` too (2 replicas, 2 steps); reference_models'
`status` and `export` run on tiny checkpoints in tmp folders instead of training. The data is a stand-in of ../shared/data made from
tests/data (`FAIRCHEM_DEQ_DATA`): the 300 ethanol frames repeated to 2,000, and two OC20
relaxations; scratch (derived checkpoints, cached tight solves) goes to a tmp folder too."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch
from conftest import DATA

# script -> keys its JSON must hold (nested keys as paths)
EXPECTED = {
    "accuracy": [
        ("systems", "ethanol", "models", "ethanol_deq1", "forces_mae"),
        ("systems", "ethanol", "models", "ethanol_eqv2_8l", "force_cosine"),
        ("systems", "ethanol", "constant_prediction_energy_mae"),
        ("systems", "oc20", "models", "oc20_eqv2_4l", "parameters"),
        ("learning_curves", "ethanol_deq1", 0, "cpu_minutes"),
    ],
    "solving": [
        ("systems", "ethanol", "settings", "rel/0.01/last/anderson", "evaluations_cold"),
        ("systems", "ethanol", "settings", "error/0.01/cold/anderson", "force_error_max"),
        ("systems", "ethanol", "settings", "rel/0.01/last/anderson/one_step", "evaluations"),
        ("systems", "oc20", "settings", "rel/0.01/last/anderson", "markov_deviation_max"),
        ("systems", "oc20", "step_displacement_A", "max"),
    ],
    "speed": [
        ("systems", "ethanol", "per_step", "rel/0.01/last/broyden_reuse", "evaluations"),
        ("systems", "ethanol", "per_step", "EquiformerV2-1", "over_EquiformerV2-8"),
        ("systems", "ethanol", "per_evaluation", "ratio"),
        ("systems", "ethanol", "load_before_after"),
    ],
    "memory": [("results", "ethanol", "DEQ1", "step_mb"), ("results", "ethanol", "DEQ1", "step_s_median")],
    "md": [
        ("summary", "DEQ1 300 K", "steps_survived_median"),
        ("summary", "EquiformerV2-4 300 K", "h_r_error_percent_median"),
        ("nve", "DEQ1", "drift_meV_per_atom_per_ps"),
        ("runs", 0, "evaluations_per_step"),
    ],
    "oc20_relax": [("summary", "wall_ratio_total"), ("summary", "evaluations_ratio_mean")],
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, trained_checkpoint, explicit_checkpoint):
    """Stand-in data, scratch and snapshot folders; -> (tmp root, --checkpoints arguments)."""
    from benchmarks import fixtures, reference_models

    root = tmp_path_factory.mktemp("bench")
    trajs = root / "data" / "oc20_relax_trajs"
    trajs.mkdir(parents=True)
    d = dict(np.load(DATA / "md17_ethanol_300.npz"))
    np.savez(
        root / "data" / "md17_ethanol_2000.npz",
        **{k: np.resize(v, (2000, *v.shape[1:])) for k, v in d.items() if k != "z"},
        z=d["z"],
    )
    for name in ("random1000156.traj", "random1000163.traj"):
        shutil.copy(DATA / name, trajs)
    snapshot = root / "snapshots" / "ethanol_deq1" / "cpu_0010.0.pt"
    snapshot.parent.mkdir(parents=True)
    shutil.copy(trained_checkpoint, snapshot)
    deq, explicit = str(trained_checkpoint), str(explicit_checkpoint)
    checkpoints = [f"ethanol_deq1={deq}", f"oc20_deq1={deq}"]
    checkpoints += [f"{name}={explicit}" for name in ("ethanol_eqv2_4l", "ethanol_eqv2_8l", "oc20_eqv2_4l")]
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRCHEM_DEQ_DATA", str(root / "data"))
        mp.setattr(fixtures, "WORK", root / "work")
        mp.setattr(reference_models, "SNAPSHOTS", root / "snapshots")
        yield root, checkpoints
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def suite(bench):
    from benchmarks import run_all

    root, checkpoints = bench
    out = root / "results"
    assert run_all.main(["--profile", "smoke", "--out", str(out), "--checkpoints", *checkpoints]) == 0
    return out


@pytest.mark.parametrize("script", list(EXPECTED))
def test_every_script_writes_its_json_and_plot(suite, script):
    result = json.loads((suite / f"{script}.json").read_text())
    assert result["command"].startswith(f"python -m benchmarks.{script} ")
    assert result["machine"]["threads"] == 1
    for path in EXPECTED[script]:
        value = result
        for key in path:
            value = value[key]
        assert value is not None, (script, path)
    assert (suite / f"{script}.png").stat().st_size > 0


def test_speed_replicas_section_runs_torch_sim_replicas_against_one_at_a_time_ase(bench):
    """`benchmarks.speed --replicas`: 2 ethanol replicas and 2 OC20 slabs, 2 timed steps."""
    from benchmarks import speed

    root, checkpoints = bench
    out = root / "replicas"
    args = ["--replicas", "2", "--slabs", "2", "--steps", "2", "--thread-counts", "1", "--out", str(out)]
    speed.main([*args, "--checkpoints", *checkpoints])
    result = json.loads((out / "speed_replicas.json").read_text())
    assert result["command"].startswith("python -m benchmarks.speed --replicas 2")
    for system in ("ethanol", "oc20"):
        row = result["systems"][system]["2"]["1"]
        assert set(row["models"]) == {"DEQ1", "EquiformerV2-4", "EquiformerV2-8", speed.ASE}
        assert row["models"][speed.ASE]["evaluations_per_replica_step"] >= 1
        assert row["models"]["DEQ1"]["evaluations_per_replica_step"] >= 1
        assert row["DEQ1_over_EquiformerV2-4"] > 0 and row["over_ase"] > 0
    assert (out / "speed_replicas.png").stat().st_size > 0


def test_gpu_check_says_cuda_is_absent_and_writes_nothing(suite):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: run_all ran the real GPU check")
    assert not (suite / "gpu_check.json").exists()


def test_reference_models_status_and_export_into_tmp_folders(
    bench, trained_checkpoint, explicit_checkpoint, monkeypatch, tmp_path, capsys
):
    import fairchem_deq.reference
    from benchmarks import reference_models
    from fairchem_deq import DEQCalculator
    from fairchem_deq.reference import reference_checkpoint

    for name, checkpoint in (("ethanol_deq1", trained_checkpoint), ("ethanol_eqv2_4l", explicit_checkpoint)):
        (tmp_path / "training" / name).mkdir(parents=True)
        shutil.copy(checkpoint, tmp_path / "training" / name / "checkpoint.pt")
    monkeypatch.setattr(reference_models, "TRAINING", tmp_path / "training")
    monkeypatch.setattr(fairchem_deq.reference, "REFERENCE_MODELS", tmp_path / "models")
    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own
    try:
        assert reference_models.main(["status"]) == 0
        assert "ethanol_deq1: 0.0 CPU-min" in capsys.readouterr().out
        assert reference_models.main(["export", "--models", "ethanol_deq1", "ethanol_eqv2_4l"]) == 0
    finally:
        signal.signal(signal.SIGTERM, handler)
    for name in ("ethanol_deq1", "ethanol_eqv2_4l"):
        card = json.loads((tmp_path / "models" / f"{name}.json").read_text())
        assert card["weights"] == "ema" and card["test"]["frames"] == "1800..1999"
        assert card["test"]["forces_mae_kcal_mol_A"] > 0
        calc = DEQCalculator(reference_checkpoint(name, tmp_path / "models"))  # checksum verified
        assert calc.is_deq == (name == "ethanol_deq1")
