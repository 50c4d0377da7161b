"""Solver iterations per MD step (cold vs warm start, tolerance sweep) and Markov deviation.

Why: the DEQ only pays off in MD if reusing the previous step's fixed point cuts the solver
iterations, and reuse is only harmless if the warm-started forces equal the cold ones (the
model stays Markovian). Both come from the same solves, so one module measures both.

Along consecutive frames (batch 1), for each tolerance: frame t is solved from zero (cold) and
from frame t-1's warm fixed point (the warm chain runs at the same tolerance). Recorded: the
solver's nstep (the function evaluation at which the tolerance was first met) and nfe (the
evaluations actually spent: TorchDEQ's Anderson may run past the first hit) per frame, and the
Markov deviation
||F_warm - F_cold|| / ||F_cold|| per frame. Trajectories:
  * MD17 ethanol: the held-back consecutive frames 1800.. of the 2,000-frame trajectory;
  * OC20: consecutive optimiser steps of DFT relaxations. The models are trained on ethanol
    only (no OC20 training fitted in the budget): their OC20 numbers show the solver's
    behaviour on unfamiliar chemistry, not an OC20 model's.

    .venv/bin/python -m benchmarks.iterations [--frames 40] [--oc20-trajs 1 --oc20-steps 12]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from benchmarks.common import SHARED_DATA, machine, save_figure, write_json
from benchmarks.train_models import Trained, held_out_frames

TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)


def oc20_frames(n_trajs: int, n_steps: int) -> list[list]:
    from ase.io import read

    paths = sorted((SHARED_DATA / "oc20_relax_trajs").glob("*.traj"))[:n_trajs]
    return [read(p, index=f":{n_steps}") for p in paths]


def along(model: Trained, frames: list, tol: float) -> dict:
    """Cold and warm solves of every frame after the first; per-frame nstep and deviation."""
    model.set_tol(tol)
    cold_n, warm_n, cold_nfe, warm_nfe, dev = [], [], [], [], []
    _, _, fp, _ = model.predict(frames[0])  # frame 0 cold: seeds the warm chain
    for atoms in frames[1:]:
        _, f_cold, _, s_cold = model.predict(atoms)
        _, f_warm, fp, s_warm = model.predict(atoms, initial_guess=fp)
        cold_n.append(s_cold["nstep"])
        warm_n.append(s_warm["nstep"])
        cold_nfe.append(s_cold["nfe"])
        warm_nfe.append(s_warm["nfe"])
        dev.append(float(np.linalg.norm(f_warm - f_cold) / np.linalg.norm(f_cold)))
    return {
        "cold_nstep": cold_n,
        "warm_nstep": warm_n,
        "cold_nfe": cold_nfe,
        "warm_nfe": warm_nfe,
        "markov_rel_force_dev": dev,
    }


def summarise(r: dict) -> dict:
    cold, warm = statistics.mean(r["cold_nstep"]), statistics.mean(r["warm_nstep"])
    return {
        "cold_mean": cold,
        "warm_mean": warm,
        "warm_over_cold": warm / cold,
        "cold_nfe_mean": statistics.mean(r["cold_nfe"]),
        "warm_nfe_mean": statistics.mean(r["warm_nfe"]),
        "markov_mean": statistics.mean(r["markov_rel_force_dev"]),
        "markov_max": max(r["markov_rel_force_dev"]),
        "n": len(r["cold_nstep"]),
    }


def plot(summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for (system, model), rows in summary.items():
        tols = sorted(rows, key=float)
        t = [float(x) for x in tols]
        (line,) = ax1.plot(t, [rows[x]["cold_mean"] for x in tols], "o--", label=f"{model} {system} cold")
        ax1.plot(t, [rows[x]["warm_mean"] for x in tols], "o-", color=line.get_color(), label=f"{model} {system} warm")
        ax2.plot(t, [100 * rows[x]["markov_mean"] for x in tols], "o-", label=f"{model} {system}")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("solver tolerance (relative)")
    ax1.set_ylabel("solver iterations per MD step (mean)")
    ax1.legend(fontsize=7)
    ax2.axhline(1.0, color="k", lw=0.8, ls=":")
    ax2.set_ylabel("Markov deviation |F_warm-F_cold|/|F_cold| (%)")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    return save_figure(fig, "iterations")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40, help="consecutive held-back ethanol frames")
    parser.add_argument("--oc20-trajs", type=int, default=1)
    parser.add_argument("--oc20-steps", type=int, default=12)
    parser.add_argument("--oc20-tols", type=float, nargs="+", default=[1e-1, 1e-2])
    args = parser.parse_args(argv)
    ethanol = held_out_frames(args.frames + 1)
    oc20 = oc20_frames(args.oc20_trajs, args.oc20_steps)
    raw, summary = {}, {}
    for name in ("deq1", "deq2"):
        model = Trained(name)
        runs = [("ethanol", [ethanol], TOLS), ("oc20", oc20, args.oc20_tols)]
        for system, trajs, tols in runs:
            for tol in tols:
                parts = [along(model, frames, tol) for frames in trajs]
                r = {k: [x for p in parts for x in p[k]] for k in parts[0]}
                raw[f"{model.label}/{system}/{tol:g}"] = r
                summary.setdefault((system, model.label), {})[f"{tol:g}"] = s = summarise(r)
                print(
                    f"{model.label} {system} tol {tol:g}: cold {s['cold_mean']:.2f} warm {s['warm_mean']:.2f} "
                    f"ratio {s['warm_over_cold']:.2f} (nfe {s['cold_nfe_mean']:.2f}/{s['warm_nfe_mean']:.2f}) markov {100 * s['markov_mean']:.3f}% "
                    f"(max {100 * s['markov_max']:.3f}%)",
                    flush=True,
                )
    command = "python -m benchmarks.iterations --frames %d --oc20-trajs %d --oc20-steps %d --oc20-tols %s" % (
        args.frames,
        args.oc20_trajs,
        args.oc20_steps,
        " ".join(f"{t:g}" for t in args.oc20_tols),
    )
    write_json(
        "iterations",
        {
            "command": command,
            "machine": machine(),
            "ethanol_frames": f"{ethanol[0].info['frame']}..{ethanol[-1].info['frame']} (first = cold seed)",
            "oc20": [f"{len(f)} steps of {f[0].get_chemical_formula()}" for f in oc20],
            "caveat": "models trained on MD17 ethanol only; OC20 numbers are out-of-distribution",
            "summary": {f"{m}/{s}": v for (s, m), v in summary.items()},
            "per_frame": raw,
        },
    )
    plot(summary)


if __name__ == "__main__":
    main()
