"""Reference models, trained once at an equal CPU budget, resumable across sessions.

Why: every benchmark round used to retrain every model, so figures of different rounds came
from different models. These runs train the shipped recipes through fairchem's CLI (one
torch thread each) and keep their full training state (weights, EMA, optimizer, schedule)
under benchmarks/reference/training/<name>/ (tracked), so a run interrupted by the end of a
session resumes where it stopped (`fairchem --checkpoint`), with the CPU time already spent
recorded in progress.json. The cosine schedule spans the whole budget from the first start
(`EPOCHS`, from the step rates measured in benchmarks/results/learning_curves.json).

    .venv/bin/python -m benchmarks.reference_models train --models ethanol_deq1 [--budget-minutes 120]
    .venv/bin/python -m benchmarks.reference_models status
    .venv/bin/python -m benchmarks.reference_models export --models ethanol_deq1

`export` writes the inference checkpoint (EMA weights, no optimizer state) of a finished run
to fairchem_deq/reference_models/<name>.pt with its card <name>.json (sha256, data, config,
command, CPU time, commit, test errors on the held-back frames), which
`DEQCalculator.from_reference(name)` verifies and loads.

Data: MD17 ethanol frames 0..1799 (950 train / 50 val, random, seed 0; frames 1800..1999
held back, `benchmarks.train_models.prepare_data`); OC20: the 20 bundled relaxations split by
system (`benchmarks.train_oc20.prepare_oc20`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.fixtures import LABELS as MODEL_LABELS
from benchmarks.fixtures import (
    MINI_WIDTH,
    REPO,
    WORK,
    _checkpoint_complete,
    _cpu_seconds,
    fairchem_train,
    prepare_data,
)

REFERENCE = Path(__file__).parent / "reference"
TRAINING = REFERENCE / "training"
RUNS = WORK / "reference_runs"
SNAPSHOTS = WORK / "reference_snapshots"  # untracked: training states every SAVE_EVERY_CPU_S


@dataclass(frozen=True)
class ReferenceRun:
    """One reference model: its shipped config, data, the epochs its cosine schedule spans
    (the budget at the measured step rate: `optim.schedule_epochs`, fractional when the
    budget buys less than an epoch) and any width overrides."""

    config: str
    dataset: str
    schedule_epochs: float
    overrides: tuple[str, ...] = ()

    @property
    def max_epochs(self) -> int:
        return max(1, math.ceil(self.schedule_epochs))


# ethanol rates (1 thread, batch 4, 238 steps an epoch on 950 frames): DEQ1 ~243 steps per
# CPU-minute, EquiformerV2-4 ~196, EquiformerV2-8 ~110 (learning_curves.json); 120 CPU-minutes.
# OC20 (2,704 training frames of 16 systems, 676 steps an epoch), at the MD "mini" width (64
# channels; the paper's 128 buys a third of an epoch): DEQ1 ~8.8 CPU-s a step
# (training_oc20.json), EquiformerV2-4 ~1.24x a DEQ1 step as on ethanol; 90 CPU-minutes (issue 27)
_OC20_MINI = tuple(f"--model.backbone.{key}={value}" for key, value in MINI_WIDTH.items())
MODELS = {
    "ethanol_deq1": ReferenceRun("configs/md17/ethanol/deq1.yml", "ethanol", 120),
    "ethanol_eqv2_4l": ReferenceRun("configs/md17/ethanol/eqv2_4l.yml", "ethanol", 100),
    "ethanol_eqv2_8l": ReferenceRun("configs/md17/ethanol/eqv2_8l.yml", "ethanol", 55),
    "oc20_deq1": ReferenceRun("configs/oc20/converted/deq1.yml", "oc20", 0.9, _OC20_MINI),
    "oc20_eqv2_4l": ReferenceRun("configs/oc20/converted/eqv2_4l.yml", "oc20", 0.73, _OC20_MINI),
}
DEFAULT_BUDGET_MINUTES = {"ethanol": 120.0, "oc20": 90.0}
SAVE_EVERY_CPU_S = 600.0  # copy the run's checkpoint into the tracked state this often


def _dataset_overrides(dataset: str) -> list[str]:
    if dataset == "ethanol":
        lmdb = prepare_data()
    else:
        from benchmarks.fixtures import prepare_oc20

        lmdb = prepare_oc20()
    return [f"--dataset.{split}.src={lmdb / split}" for split in ("train", "val", "test")]


def progress(name: str) -> dict:
    path = TRAINING / name / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {"name": name, "cpu_s": 0.0, "runs": []}


def _write_progress(name: str, record: dict) -> None:
    from fairchem_deq.outputs import write_text_atomic

    (TRAINING / name).mkdir(parents=True, exist_ok=True)
    write_text_atomic(TRAINING / name / "progress.json", json.dumps(record, indent=2))


def _save_state(name: str, run_checkpoint: Path, cpu_s: float | None = None) -> bool:
    """Copies the run's latest complete checkpoint into the tracked state (temp, then rename)
    and, with `cpu_s` (the run's CPU time over all sessions), into an untracked snapshot
    `SNAPSHOTS/<name>/cpu_<minutes>.pt` that the learning curves evaluate."""
    if not (run_checkpoint.is_file() and _checkpoint_complete(run_checkpoint)):
        return False
    targets = [TRAINING / name / "checkpoint.pt"]
    if cpu_s is not None:
        targets.append(snapshot_path(name, cpu_s))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".pt.partial")
        shutil.copyfile(run_checkpoint, tmp)
        os.replace(tmp, target)
    return True


def snapshot_path(name: str, cpu_s: float) -> Path:
    return SNAPSHOTS / name / f"cpu_{cpu_s / 60.0:06.1f}.pt"


def snapshots(name: str) -> dict[float, Path]:
    """CPU-minutes -> training-state snapshot of `name` (those this machine kept)."""
    return {float(p.stem[4:]): p for p in sorted((SNAPSHOTS / name).glob("cpu_*.pt"))}


def command(name: str) -> list[str]:
    run = MODELS[name]
    args = [
        *fairchem_train(run.config, name),
        *_dataset_overrides(run.dataset),
        *run.overrides,
        "--optim.num_workers=0",
        f"--optim.max_epochs={run.max_epochs}",
        f"--optim.schedule_epochs={run.schedule_epochs:g}",
        "--optim.eval_every=100000000",
        "--optim.checkpoint_every=50",
    ]
    args[args.index("--run-dir") + 1] = str(RUNS)
    state = TRAINING / name / "checkpoint.pt"
    if state.is_file():
        args += ["--checkpoint", str(state)]
    return args


def train(name: str, budget_cpu_s: float) -> dict:
    """Runs (or resumes) `name` until its CPU time, over all sessions, reaches the budget."""
    record = progress(name)
    if record["cpu_s"] >= budget_cpu_s:
        print(f"{name}: budget spent ({record['cpu_s'] / 60:.1f} CPU-min)", flush=True)
        return record
    args = command(name)
    RUNS.mkdir(parents=True, exist_ok=True)
    run_checkpoint = RUNS / "checkpoints" / name / "checkpoint.pt"
    run_checkpoint.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log_path = RUNS / f"{name}.log"
    start_cpu, t0 = record["cpu_s"], time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(args, cwd=WORK, env=env, stdout=log, stderr=subprocess.STDOUT)
    cpu, next_save, stopped = 0.0, SAVE_EVERY_CPU_S, False
    try:
        while proc.poll() is None:
            time.sleep(2.0)
            try:
                cpu = _cpu_seconds(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            if cpu >= next_save and _save_state(name, run_checkpoint, start_cpu + cpu):
                next_save += SAVE_EVERY_CPU_S
                _write_progress(name, {**record, "cpu_s": start_cpu + cpu, "running": True})
            # fairchem writes checkpoints in place: never stop a run in the middle of a save
            if start_cpu + cpu >= budget_cpu_s and _checkpoint_complete(run_checkpoint):
                proc.send_signal(signal.SIGTERM)  # fairchem_deq's trainers save a final checkpoint
                proc.wait(timeout=300)
                stopped = True
    finally:
        if proc.poll() is None:  # interrupted (the session ends): stop cleanly, keep the state
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
        _save_state(name, run_checkpoint, start_cpu + cpu)
        import torch

        saved = TRAINING / name / "checkpoint.pt"
        step = torch.load(saved, map_location="cpu", weights_only=False)["step"] if saved.is_file() else None
        record["cpu_s"] = start_cpu + cpu
        record["running"] = False
        run = {"cpu_s": cpu, "wall_s": time.time() - t0, "step_after": step, "stopped_by_budget": stopped}
        run |= {"returncode": proc.returncode, "commit": _commit(), "command": " ".join(map(str, args))}
        record["runs"].append(run)
        record.update(
            config=MODELS[name].config, epochs=MODELS[name].schedule_epochs, budget_cpu_s=budget_cpu_s, step=step
        )
        _write_progress(name, record)
    print(f"{name}: {record['cpu_s'] / 60:.1f} of {budget_cpu_s / 60:.1f} CPU-min, step {step}", flush=True)
    return record


LABELS = {name: MODEL_LABELS[name] + (" (OC20)" if name.startswith("oc20") else "") for name in MODELS}
DATA = {
    "ethanol": "MD17 ethanol (Chmiela et al. 2017), frames 0..1799 of the bundled 2,000: 950 train / 50 val "
    "(random, seed 0); test = held-back consecutive frames 1800..1999",
    "oc20": "the 20 bundled OC20 DFT relaxation trajectories, split by system (16 train / 2 val / 2 test)",
}


def test_errors(name: str, path: Path) -> dict:
    """Force and energy MAE on the held-back ethanol frames 1800..1999 (kcal/mol/Å, kcal/mol),
    DEQs solved cold at their config's tolerance; the constant-prediction energy MAE beside."""
    import numpy as np

    from benchmarks.fixtures import KCAL_PER_EV, Trained, held_out_frames

    model = Trained("deq" if name.endswith("deq1") else "eqv2", path, ema=True)
    force_errors, energies, references = [], [], []
    for atoms in held_out_frames():
        energy, forces, _, _ = model.predict(atoms)
        force_errors.append(np.abs(forces - atoms.info["forces_ev"]).mean() * KCAL_PER_EV)
        energies.append(energy * KCAL_PER_EV)
        references.append(atoms.info["energy_ev"] * KCAL_PER_EV)
    energies, references = np.array(energies), np.array(references)
    return {
        "frames": "1800..1999",
        "forces_mae_kcal_mol_A": float(np.mean(force_errors)),
        "energy_mae_kcal_mol": float(np.abs(energies - references).mean()),
        "constant_prediction_energy_mae_kcal_mol": float(np.abs(references - references.mean()).mean()),
        "weights": model.weights,
    }


def export(name: str) -> dict:
    """The inference checkpoint and card of `name`'s training state (EMA weights)."""
    import torch

    from benchmarks.fixtures import machine, num_params
    from fairchem_deq.reference import REFERENCE_MODELS, export_inference_checkpoint

    state = TRAINING / name / "checkpoint.pt"
    if not state.is_file():
        raise SystemExit(f"{name}: no training state in {state}; run `train` first")
    record = progress(name)
    checkpoint = torch.load(state, map_location="cpu", weights_only=False)
    model = _ema_model(name, state)
    run = MODELS[name]
    training = {"cpu_minutes": record["cpu_s"] / 60.0, "threads": 1, "steps": checkpoint.get("step")}
    training["cosine_schedule_epochs"] = run.schedule_epochs
    training["commits"] = sorted({run["commit"] for run in record["runs"]})
    training["command"] = "python -m benchmarks.reference_models train --models " + name
    training["fairchem_command"] = record["runs"][-1]["command"] if record["runs"] else None
    card = {"name": name, "model": LABELS[name], "parameters": num_params(model), "config": run.config}
    card |= {"config_overrides": list(run.overrides), "data": DATA[run.dataset], "training": training}
    card |= {"weights": "ema", "machine": machine()}
    if run.dataset == "ethanol":
        card["test"] = test_errors(name, state)
    out = REFERENCE_MODELS / f"{name}.pt"
    card = export_inference_checkpoint(model, checkpoint, out, card)
    print(json.dumps(card, indent=2))
    return card


def _ema_model(name: str, path: Path):
    """The model of a training checkpoint with its EMA weights in place."""
    from benchmarks.fixtures import Trained

    return Trained("deq" if name.endswith("deq1") else "eqv2", path, ema=True).model


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    run = sub.add_parser("train", help="train or resume reference models (one at a time, one thread)")
    run.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    run.add_argument("--budget-minutes", type=float, default=None, help="CPU-minutes per model over all sessions")
    sub.add_parser("status", help="CPU time spent and step of each model")
    out = sub.add_parser("export", help="inference checkpoints and cards of trained models")
    out.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    # SIGTERM (the end of a session, a job scheduler) stops the run through `train`'s
    # finally: the child is stopped and its latest checkpoint kept in the tracked state
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.what == "status":
        for name in MODELS:
            record = progress(name)
            print(f"{name}: {record['cpu_s'] / 60:.1f} CPU-min, step {record.get('step')}, runs {len(record['runs'])}")
        return 0
    if args.what == "export":
        for name in args.models:
            export(name)
        return 0
    for name in args.models:
        minutes = args.budget_minutes or DEFAULT_BUDGET_MINUTES[MODELS[name].dataset]
        train(name, 60.0 * minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
