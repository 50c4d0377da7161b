"""Train DEQ1, DEQ2, EquiformerV2 4 and 8 layers for the SAME wall-clock through fairchem's CLI.

Why: accuracy (and the DEQ iteration counts of the other benchmarks) only mean something for
trained models, and the fair comparison on one CPU is equal training time, not equal epochs.

Data: the 2,000-frame MD17 ethanol trajectory. Frames 0..1799 go through `fairchem_deq.data
.convert` (950 train / 50 val, random, seed 0); frames 1800..1999 are HELD BACK as one
consecutive test block (never seen in training) that all the MD benchmarks step along.
Each model runs the shipped config (configs/md17/ethanol/<name>.yml, the paper's MD "mini"
width, unchanged) `--parallel` at a time, is stopped after `--budget-minutes` x `--threads` of CPU time
(the machine is shared: equal CPU time is the fair equal budget; wall-clock capped), and keeps
its last checkpoint (saved every 20 optimiser steps). Warm-up is shortened to 0.1 epoch and
the cosine schedule spans `--epochs` (default 4), since the budget is a fraction of one paper run.
Runs go `--parallel` at a time (default 2), each with `--threads` torch threads (default 1), so
two models share the 2 cores and see the same load. DEQ models train with their config's
gradient rule unless `--deq-grad` names one (`ift` or k phantom steps). `--snapshot-minutes`
copies each run's checkpoint every so many CPU-minutes (benchmarks.learning_curves).

    .venv/bin/python -m benchmarks.train_models [--budget-minutes 1] [--parallel 2] [--threads 1]

Checkpoints: benchmarks/work/runs/checkpoints/<name>/checkpoint.pt (benchmarks/work/ is scratch).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED_DATA, machine, read_json, write_json

REPO = Path(__file__).parents[1]
WORK = Path(__file__).parent / "work"
LMDB = WORK / "md17_ethanol"
RUNS = WORK / "runs"
MODELS = ("deq1", "deq2", "eqv2_4l", "eqv2_8l")  # the equal-budget comparison
EXTRA_MODELS = ("deq1_conservative",)  # variants, trained with the same recipe on request
LABELS = {
    "deq1": "DEQ1",
    "deq2": "DEQ2",
    "eqv2_4l": "EquiformerV2-4",
    "eqv2_8l": "EquiformerV2-8",
    "deq1_conservative": "DEQ1 (energy-gradient forces)",
    "deq1_dens": "DEQ1 + DeNS",
    "deq1_nodens": "DEQ1 (no DeNS)",
    "oc20_deq1": "DEQ1 (OC20)",
    "oc20_eqv2_4l": "EquiformerV2-4 (OC20)",
    "oc20_eqv2_8l": "EquiformerV2-8 (OC20)",
}
# run name -> configs/md17/ethanol/<config>.yml where they differ (benchmarks.dens_accuracy's
# control is DEQ1 under its own run name, so it never touches the deq1 checkpoint)
CONFIG_OF = {"deq1_nodens": "deq1"}
N_TRAINVAL_FRAMES = 1800  # frames >= this are the held-back consecutive test block
KCAL_PER_EV = 23.060548


def ethanol_npz() -> Path:
    return SHARED_DATA / "md17_ethanol_2000.npz"


def held_out_frames(n: int | None = None):
    """Held-back consecutive ethanol frames as ASE Atoms (with reference energy/forces in eV)."""
    from ase import Atoms

    d = np.load(ethanol_npz())
    stop = len(d["R"]) if n is None else min(len(d["R"]), N_TRAINVAL_FRAMES + n)
    frames = []
    for i in range(N_TRAINVAL_FRAMES, stop):
        atoms = Atoms(numbers=d["z"], positions=d["R"][i], pbc=False)
        atoms.info.update(
            frame=i, energy_ev=float(np.ravel(d["E"][i])[0]) / KCAL_PER_EV, forces_ev=d["F"][i] / KCAL_PER_EV
        )
        frames.append(atoms)
    return frames


def checkpoint(name: str) -> Path:
    return RUNS / "checkpoints" / name / "checkpoint.pt"


def deq_calculator(name: str, **kwargs):
    """The DEQCalculator of run `name`'s checkpoint (CPU, seed 0); `kwargs` as DEQCalculator's."""
    from fairchem_deq.simulate import DEQCalculator

    return DEQCalculator(checkpoint(name), cpu=True, seed=0, **kwargs)


def prepare_data() -> Path:
    """LMDB splits of frames 0..1799 (once)."""
    from fairchem_deq.data.convert import convert

    if (LMDB / "train").is_dir():
        return LMDB
    WORK.mkdir(parents=True, exist_ok=True)
    d = dict(np.load(ethanol_npz()))
    head = WORK / "md17_ethanol_first1800.npz"
    per_frame = {k for k, v in d.items() if np.ndim(v) and len(v) == len(d["R"])}
    np.savez(head, **{k: (v[:N_TRAINVAL_FRAMES] if k in per_frame else v) for k, v in d.items()})
    convert(head, LMDB, n_train=950, n_val=50, seed=0, progress=False)
    return LMDB


def _cpu_seconds(pid: int) -> float:
    """user+sys CPU time of a running process (Linux /proc), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config_path(name: str) -> str:
    """The shipped config of `name`, or a generated one (an absolute path in CONFIG_OF)."""
    config = CONFIG_OF.get(name, name)
    return config if config.endswith(".yml") else f"configs/md17/ethanol/{config}.yml"


def fairchem_train(config: str, name: str) -> list[str]:
    """fairchem's CLI training `config` (relative to the repository) as run `name` under RUNS
    (checkpoints/<name>/, logs and results likewise), on the CPU."""
    return [
        str(Path(sys.executable).parent / "fairchem"),
        "--mode",
        "train",
        "--config-yml",
        str(REPO / config),
        "--cpu",
        "--run-dir",
        str(RUNS),
        "--identifier",
        name,
        "--timestamp-id",
        name,
        "--print-every",
        "5",
    ]


def train_command(name: str, epochs: float, deq_grad: str | None) -> list[str]:
    """The fairchem CLI command line of one benchmark training run (deq_grad None: the
    config's own gradient rule)."""
    args = [
        *fairchem_train(config_path(name), name),
        f"--dataset.train.src={LMDB / 'train'}",
        f"--dataset.val.src={LMDB / 'val'}",
        f"--dataset.test.src={LMDB / 'test'}",
        "--optim.num_workers=0",
        f"--optim.max_epochs={epochs:g}",
        "--optim.scheduler_params.warmup_epochs=0.1",
        "--optim.eval_every=100000000",
        "--optim.checkpoint_every=20",
    ]
    if deq_grad not in (None, "config") and name.startswith("deq") and "conservative" not in name:
        # (energy-gradient forces keep their config's k-step phantom gradient: k=1 would
        # train on a poor approximation of -dE/dpos)
        args.append(f"--model.backbone.deq.grad={deq_grad}")
    return args


def start(name: str, args: list[str], threads: int):
    """Launch one run in the background -> (process, log file, start time)."""
    checkpoint(name).unlink(missing_ok=True)
    log_path = RUNS / f"{name}.log"
    RUNS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(args, cwd=WORK, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path, time.perf_counter()


def _checkpoint_complete(path: Path) -> bool:
    """False while torch.save is writing `path` (the zip's central directory comes last)."""
    import zipfile

    return not path.exists() or zipfile.is_zipfile(path)


def snapshot_path(name: str, cpu_s: float) -> Path:
    return RUNS / "snapshots" / name / f"cpu{round(cpu_s):06d}.pt"


def _snapshot(name: str, cpu_s: float) -> None:
    """Copies the run's latest complete checkpoint, named by the CPU seconds spent so far."""
    import shutil

    source = checkpoint(name)
    if source.is_file() and _checkpoint_complete(source):
        target = snapshot_path(name, cpu_s)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def train_all(
    names: list[str],
    args_of,
    threads: int,
    parallel: int,
    budget_cpu_s: float,
    max_wall_s: float,
    snapshot_every_cpu_s: float | None = None,
) -> dict:
    """Run the trainings `parallel` at a time; stop each (SIGTERM) once it has used budget_cpu_s
    of CPU time (or max_wall_s of wall-clock). The machine is shared with other jobs, so equal
    CPU time is the fair "equal budget"; the wall-clock each run took is recorded too.
    `snapshot_every_cpu_s`: copy the latest checkpoint at every multiple of that CPU time
    (learning curves; `snapshot_path`)."""
    pending, running, results = list(names), {}, {}
    next_snapshot = dict.fromkeys(names, snapshot_every_cpu_s)
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            running[name] = (*start(name, args_of(name), threads), 0.0)
        time.sleep(1.0)
        for name, (proc, log_path, t0, cpu) in list(running.items()):
            try:
                cpu = _cpu_seconds(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
            running[name] = (proc, log_path, t0, cpu)
            if next_snapshot[name] is not None and cpu >= next_snapshot[name]:
                _snapshot(name, cpu)
                next_snapshot[name] += snapshot_every_cpu_s
            over = cpu >= budget_cpu_s or time.perf_counter() - t0 >= max_wall_s
            # fairchem writes checkpoints in place: never stop a run in the middle of a save
            stopped = proc.poll() is None and over and _checkpoint_complete(checkpoint(name))
            if stopped:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
            if proc.poll() is not None:
                if snapshot_every_cpu_s is not None:
                    _snapshot(name, cpu)  # the final checkpoint
                del running[name]
                results[name] = summarise(name, log_path, time.perf_counter() - t0, cpu, stopped)
                results[name]["returncode"] = proc.returncode
                print(name, results[name], flush=True)
    return results


def summarise(name: str, log_path: Path, wall_s: float, cpu: float, stopped: bool) -> dict:
    text = log_path.read_text()
    steps = [int(float(s)) for s in re.findall(r"\bstep: ([0-9.e+]+)", text)]
    losses = [float(s) for s in re.findall(r"\bloss: ([-+0-9.e]+)", text)]
    import torch

    saved = checkpoint(name)
    saved_step = torch.load(saved, map_location="cpu", weights_only=False)["step"] if saved.is_file() else None
    return {
        "model": LABELS.get(name, name),
        "config": config_path(name),
        "wall_s": wall_s,
        "cpu_s": cpu,
        "stopped_by_budget": stopped,
        "checkpoint_step": saved_step,
        "last_logged_step": max(steps, default=0),
        "first_losses": losses[:3],
        "last_losses": losses[-3:],
        "log": str(log_path.relative_to(REPO)),
    }


def add_budget_arguments(parser: argparse.ArgumentParser, budget_minutes: float, epochs: float) -> None:
    """The training-budget options every equal-budget benchmark shares (see `budget_of`)."""
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=budget_minutes,
        help="per run: CPU time of budget x threads, wall-clock cap 4x budget",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=epochs, help="span of the cosine schedule")
    parser.add_argument(
        "--deq-grad", default="config", help="'config' (the config's own rule), 'ift' or phantom steps (int)"
    )


def budget_of(args) -> tuple[float, float]:
    """-> (CPU seconds per run, wall-clock cap in seconds) from `add_budget_arguments`' options."""
    return 60 * args.budget_minutes * args.threads, 4 * 60 * args.budget_minutes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_budget_arguments(parser, budget_minutes=1.0, epochs=4.0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + EXTRA_MODELS)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--snapshot-minutes",
        type=float,
        default=None,
        help="copy each run's checkpoint every this many CPU-minutes (learning curves)",
    )
    parser.add_argument(
        "--results-name",
        default="training",
        help="benchmarks/results/<name>.json that records the runs (runs of the same budget are merged)",
    )
    args = parser.parse_args(argv)
    prepare_data()
    budget_cpu_s, max_wall_s = budget_of(args)
    snapshot = None if args.snapshot_minutes is None else 60 * args.snapshot_minutes
    new_runs = train_all(
        args.models,
        lambda name: train_command(name, args.epochs, args.deq_grad),
        args.threads,
        args.parallel,
        budget_cpu_s,
        max_wall_s,
        snapshot,
    )
    # read back only now: another train_models process may have finished meanwhile
    previous = read_json(args.results_name)
    runs = previous["runs"] if previous and previous.get("budget_cpu_s_per_model") == budget_cpu_s else {}
    command = (
        "python -m benchmarks.train_models --budget-minutes %g --threads %d --parallel %d --epochs %g --deq-grad %s --models %s --results-name %s"
        % (
            args.budget_minutes,
            args.threads,
            args.parallel,
            args.epochs,
            args.deq_grad,
            " ".join(args.models),
            args.results_name,
        )
    )
    for run in new_runs.values():
        run["command"] = command
    runs.update(new_runs)
    write_json(
        args.results_name,
        {
            "command": "see runs[*].command (runs of several invocations are merged)",
            "machine": machine(),
            "budget_cpu_s_per_model": budget_cpu_s,
            "deq_grad": args.deq_grad,
            "epochs": args.epochs,
            "budget_note": f"CPU time (user+sys, {args.threads} thread(s)) of the fairchem process incl. start-up; wall cap 4x",
            "data": {
                "npz": str(ethanol_npz()),
                "trainval_frames": f"0..{N_TRAINVAL_FRAMES - 1}",
                "split": "950 train / 50 val (random, seed 0)",
                "held_out": f"{N_TRAINVAL_FRAMES}..1999 consecutive",
            },
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()


# ---- loading the trained models for the other benchmarks -------------------------------


class Trained:
    """A checkpoint loaded through fairchem's calculators; `predict` runs the bare Hydra model
    (batch 1, no autograd) and denormalises to eV, so DEQ and explicit models share one path."""

    def __init__(self, name: str, path: Path | None = None, ema: bool = False):
        """`ema`: evaluate the checkpoint's EMA weights (the ones fairchem's validation reports);
        by default the raw weights, which fairchem's OCPCalculator evaluates (it loads a
        checkpoint in inference-only mode and drops the EMA). `self.weights`: which are used."""
        import logging

        from fairchem.core.common.relaxation.ase_utils import OCPCalculator

        from fairchem_deq.checkpoint_weights import apply_weights
        from fairchem_deq.simulate import DEQCalculator

        self.name, self.label, self.is_deq = name, LABELS.get(name, name), name.startswith("deq")
        weights = "ema" if ema else "raw"
        level = logging.getLogger().level
        if self.is_deq:
            calc = DEQCalculator(path or checkpoint(name), cpu=True, seed=0, weights=weights)
            self.weights = calc.weights
        else:
            calc = OCPCalculator(
                checkpoint_path=path or checkpoint(name), trainer="equiformerv2_forces", cpu=True, seed=0
            )
        logging.getLogger().setLevel(max(level, logging.WARNING))
        trainer = calc.trainer
        self.model = trainer._unwrapped_model.eval()
        if not self.is_deq:
            self.weights = apply_weights(self.model, path or checkpoint(name), weights)
        if not self.is_deq:
            self.model.backbone.direct_forces = True  # explicit backbone: no autograd in inference
        self.normalizers = trainer.normalizers

    def set_tol(self, tol: float, max_iter: int | None = None):
        for phase in ("eval_cold", "eval_warm"):
            self.model.backbone.set_solver_settings(phase, tol=tol, **({"max_iter": max_iter} if max_iter else {}))

    def predict(self, atoms, initial_guess=None):
        """-> (energy eV, forces eV/Å [n,3] numpy, fixed point or None, solver stats dict)."""
        import torch

        from fairchem_deq.data.atoms_graphs import atoms_to_batch
        from fairchem_deq.reuse.forward import captured_output

        batch = atoms_to_batch([atoms])
        if initial_guess is not None:
            batch.initial_guess = initial_guess
        with torch.no_grad(), captured_output(self.model.backbone) as captured:
            out = self.model(batch)
        energy = out["energy"]["energy"] if isinstance(out["energy"], dict) else out["energy"]
        forces = out["forces"]["forces"] if isinstance(out["forces"], dict) else out["forces"]
        if "energy" in self.normalizers:
            energy = self.normalizers["energy"].denorm(energy)
        if "forces" in self.normalizers:
            forces = self.normalizers["forces"].denorm(forces)
        fp, stats = None, {}
        if self.is_deq:
            last = captured["output"]
            fp = last["fixed_point"]
            stats = {k: float(v.reshape(-1)[0]) for k, v in last["deq_stats"].items() if v.dim() <= 1}
        return float(energy.reshape(-1)[0]), forces.reshape(-1, 3).numpy(), fp, stats
