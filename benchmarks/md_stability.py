"""MD stability of the trained models: what users of MD force fields test first.

Langevin NVT (friction 0.01/fs) at 300 K and 500 K, 0.5 fs, from held-back frame 1800 of the
ethanol trajectory, for DEQ1 (DEQCalculator, warm-started from the previous step) and
EquiformerV2-4 (fairchem's OCPCalculator), through `fairchem_deq.run_md`, which stops at
the first unphysical event: a covalent bond of the starting frame changed by more than
0.5 Å, two atoms closer than 0.5 Å, or non-finite energies/forces. Reported per run: steps
until that event (or all), mean solver evaluations per step (DEQ1), and the deviation of the
distribution of interatomic distances h(r) from the reference data (all 2,000 DFT frames):
MAE of the normalised histograms over 0-5 Å (the stability metric of Fu et al., "Forces are
not enough", 2023).

    .venv/bin/python -m benchmarks.md_stability [--steps 10000] [--models deq1 eqv2_4l]

Writes benchmarks/results/md_stability.json and .png (runs go two at a time, 1 thread each).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from benchmarks.common import machine, read_json, save_figure, write_json
from benchmarks.train_models import (
    LABELS,
    N_TRAINVAL_FRAMES,
    WORK,
    checkpoint,
    deq_calculator,
    ethanol_npz,
    held_out_frames,
)

BINS = np.linspace(0.0, 5.0, 101)


def distance_histogram(positions: np.ndarray) -> np.ndarray:
    """Normalised histogram h(r) of all interatomic distances of frames [n_frames, n_atoms, 3]."""
    iu = np.triu_indices(positions.shape[1], 1)
    d = np.linalg.norm(positions[:, :, None, :] - positions[:, None, :, :], axis=-1)[:, iu[0], iu[1]]
    hist, _ = np.histogram(d.ravel(), bins=BINS, density=True)
    return hist


def _calculator(name: str):
    if name.startswith("deq"):
        return deq_calculator(name)
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    from fairchem_deq.checkpoint_weights import apply_weights

    calc = OCPCalculator(checkpoint_path=checkpoint(name), trainer="equiformerv2_forces", cpu=True, seed=0)
    apply_weights(calc.trainer._unwrapped_model, checkpoint(name))  # the EMA weights, as DEQCalculator's
    return calc


def run_one(job: tuple) -> dict:
    name, temperature, steps, seed = job
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from ase.io import read

    from fairchem_deq import run_md

    start = held_out_frames(1)[0]
    trajectory = WORK / "md_stability" / f"{name}_{temperature:.0f}K.traj"
    trajectory.parent.mkdir(parents=True, exist_ok=True)
    report = run_md(
        start,
        _calculator(name),
        ensemble="nvt",
        timestep_fs=0.5,
        steps=steps,
        temperature_K=temperature,
        seed=seed,
        progress=False,
        max_bond_stretch=0.5,
        min_distance=0.5,
        max_force=1e3,
        trajectory=trajectory,
    )
    positions = np.array([atoms.positions for atoms in read(trajectory, ":")])
    return {
        "model": LABELS[name],
        "temperature_K": temperature,
        "steps_requested": steps,
        "steps_stable": report.unphysical_step if report.unphysical_step is not None else report.steps_run,
        "unphysical_reason": report.unphysical_reason,
        "mean_solver_evaluations": report.mean_solver_iterations,
        "trajectory_positions": positions,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--models", nargs="+", default=["deq1", "eqv2_4l"])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[300.0, 500.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reference = distance_histogram(np.load(ethanol_npz())["R"])
    jobs = [(m, t, args.steps, args.seed) for m in args.models for t in args.temperatures]
    with ProcessPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(run_one, jobs))
    for run in runs:
        h_r = distance_histogram(run.pop("trajectory_positions"))
        run["h_r_mae"] = float(np.mean(np.abs(h_r - reference)))
        run["h_r"] = h_r.tolist()
        print({k: v for k, v in run.items() if k != "h_r"}, flush=True)
    done = {(r["model"], r["temperature_K"]) for r in runs}  # other pairs' earlier runs stay
    runs = [r for r in read_json("md_stability").get("runs", []) if (r["model"], r["temperature_K"]) not in done] + runs
    payload = {
        "command": f"python -m benchmarks.md_stability --steps {args.steps} --models {' '.join(args.models)}"
        " (runs of separate invocations are merged)",
        "machine": machine(),
        "start_frame": N_TRAINVAL_FRAMES,
        "bins_A": BINS.tolist(),
        "reference_h_r": reference.tolist(),
        "runs": runs,
    }
    write_json("md_stability", payload)
    _plot(payload)
    return payload


def _plot(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['model']}\n{r['temperature_K']:.0f} K" for r in payload["runs"]]
    ax1.bar(labels, [r["steps_stable"] for r in payload["runs"]])
    ax1.axhline(payload["runs"][0]["steps_requested"], color="k", ls="--", label="steps requested")
    ax1.set_ylabel("steps before the first unphysical event")
    ax1.legend(fontsize=8)
    centers = 0.5 * (np.asarray(payload["bins_A"][1:]) + np.asarray(payload["bins_A"][:-1]))
    ax2.plot(centers, payload["reference_h_r"], "k", lw=2, label="reference (DFT MD)")
    for label, run in zip(labels, payload["runs"]):
        ax2.plot(centers, run["h_r"], label=label.replace("\n", " "))
    ax2.set_xlabel("interatomic distance (Å)")
    ax2.set_ylabel("h(r)")
    ax2.legend(fontsize=7)
    fig.suptitle("MD17 ethanol, Langevin NVT 0.5 fs from held-back frame 1800")
    save_figure(fig, "md_stability")
    plt.close(fig)


if __name__ == "__main__":
    main()
