"""Extrapolated warm starts vs plain reuse: solver evaluations, wall-clock and Markov deviation.

Why: plain reuse starts each MD step from the previous step's fixed point. Consecutive fixed
points move smoothly, so extrapolating the last few (fairchem_deq.reuse.predictors: linear,
quadratic, Kolafa's ASPC) should start closer and save iterations (target: <= 0.7x the
evaluations of plain reuse) without moving the forces (Markov deviation < 1 %).

Along consecutive frames (batch 1), for each model and tolerance, every frame is solved from
zero (cold: the reference forces) and, interleaved with it, once per predictor, each predictor
keeping its own chain of fixed points (frame 0 is solved cold and seeds every chain).
Recorded per predictor and frame: the solver's function evaluations (nfe: the cost) and nstep,
the distance of the prediction to the fixed point the solve then found, relative to that
fixed point (how good the guess was), the wall-clock of the step, and the Markov deviation
||F_warm - F_cold|| / ||F_cold||. Wall-clock is compared as ratios of medians to "last" (same
process, interleaved frame by frame). Trajectories: the held-back MD17 ethanol frames 1800..
(0.5 fs apart), and optionally OC20 relaxations (consecutive optimiser steps; the models are
trained on ethanol only, so OC20 shows the solver on unfamiliar chemistry). `--substeps S`
replaces the ethanol frames by a cubic-spline interpolation of their positions at 0.5/S fs
spacing (a sensitivity study: how the predictors gain as frames get closer; results go to
extrapolation_substeps<S>.json).

    .venv/bin/python -m benchmarks.extrapolation [--frames 40] [--models deq1 deq2] [--tols 1e-2 1e-3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from benchmarks.common import machine, save_figure, write_json
from benchmarks.iterations import oc20_frames
from benchmarks.train_models import Trained, held_out_frames
from fairchem_deq.reuse.predictors import PREDICTORS, FixedPointHistory

TARGET_NFE_RATIO, MARKOV_BOUND = 0.7, 0.01


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def substepped(frames: list, substeps: int, n: int) -> list:
    """n frames at 1/substeps of the spacing of `frames` (cubic spline through their positions)."""
    from scipy.interpolate import CubicSpline

    spline = CubicSpline(np.arange(len(frames)), np.stack([a.positions for a in frames]), axis=0)
    out = []
    for k in range(n):
        atoms = frames[0].copy()
        atoms.positions = spline(k / substeps)
        atoms.info = {"frame": frames[0].info["frame"] + k / substeps}
        out.append(atoms)
    return out


def _add(record: dict, seconds: float, stats: dict) -> dict:
    record["seconds"].append(seconds)
    record["nfe"].append(stats["nfe"])
    record["nstep"].append(stats["nstep"])
    return record


def along(model: Trained, frames: list, tol: float, predictors: list[str]) -> dict:
    """Per-frame records of the cold solve and of every predictor's warm chain."""
    model.set_tol(tol)
    _, _, fp0, _ = model.predict(frames[0])
    histories = {name: FixedPointHistory(name) for name in predictors}
    for h in histories.values():
        h.push(fp0)
    keys = ("nfe", "nstep", "seconds", "markov", "prediction_error", "fallback")
    records = {name: {k: [] for k in keys} for name in ["cold", *predictors]}
    for i, atoms in enumerate(frames[1:]):
        t0 = time.perf_counter()
        _, f_cold, _, s = model.predict(atoms)
        _add(records["cold"], time.perf_counter() - t0, s)
        for name in predictors[i % len(predictors) :] + predictors[: i % len(predictors)]:  # rotate: no order bias
            t0 = time.perf_counter()
            guess = histories[name].predict()  # the extrapolation's own cost counts too
            _, f, fp, s = model.predict(atoms, initial_guess=guess)
            r = _add(records[name], time.perf_counter() - t0, s)
            r["fallback"].append(s.get("fallback", 0.0))
            r["markov"].append(_rel(f, f_cold))
            r["prediction_error"].append(float((guess - fp).norm() / fp.norm()))
            histories[name].push(fp)
    return records


def summarise(records: dict) -> dict:
    last_nfe = statistics.mean(records["last"]["nfe"])
    last_s = statistics.median(records["last"]["seconds"])
    out = {}
    for name, r in records.items():
        s = {
            "nfe_mean": statistics.mean(r["nfe"]),
            "nstep_mean": statistics.mean(r["nstep"]),
            "nfe_over_last": statistics.mean(r["nfe"]) / last_nfe,
            "median_s_over_last": statistics.median(r["seconds"]) / last_s,
            "n": len(r["nfe"]),
        }
        if name != "cold":
            s.update(
                markov_mean=statistics.mean(r["markov"]),
                markov_max=max(r["markov"]),
                prediction_error_mean=statistics.mean(r["prediction_error"]),
                fallbacks=int(sum(r["fallback"])),
            )
            s["meets_target"] = s["nfe_over_last"] <= TARGET_NFE_RATIO and s["markov_max"] < MARKOV_BOUND
        out[name] = s
    return out


def plot(summary: dict, predictors: list[str], result_name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(summary)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / len(predictors)
    x = np.arange(len(runs))
    for i, name in enumerate(predictors):
        for ax, key in zip(axes, ("nfe_over_last", "median_s_over_last", "markov_max")):
            values = [summary[run][name][key] * (100 if key == "markov_max" else 1) for run in runs]
            ax.bar(x + i * width, values, width, label=name)
    for ax, label in zip(
        axes, ("solver evaluations per step / last", "median wall-clock per step / last", "max Markov deviation (%)")
    ):
        ax.set_xticks(x + 0.4 - width / 2, runs, rotation=30, fontsize=7, ha="right")
        ax.set_ylabel(label)
    axes[0].axhline(TARGET_NFE_RATIO, color="k", lw=0.8, ls=":")
    axes[2].axhline(100 * MARKOV_BOUND, color="k", lw=0.8, ls=":")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(predictors), fontsize=8)
    return save_figure(fig, result_name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40, help="consecutive held-back ethanol frames")
    parser.add_argument("--models", nargs="+", default=["deq1", "deq2"], choices=["deq1", "deq2"])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--oc20-trajs", type=int, default=0, help="OC20 relaxations (0: none)")
    parser.add_argument("--oc20-steps", type=int, default=12)
    parser.add_argument("--substeps", type=int, default=1, help="interpolated ethanol frames per MD17 frame")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="print only (trial runs)")
    args = parser.parse_args(argv)
    os.environ.setdefault("LOGLEVEL", "WARNING")  # fairchem's calculator otherwise dumps the config
    torch.set_num_threads(args.threads)
    predictors = list(PREDICTORS)
    ethanol = held_out_frames(args.frames + 1)
    if args.substeps > 1:
        ethanol = substepped(held_out_frames(args.frames // args.substeps + 2), args.substeps, args.frames + 1)
    systems = {"ethanol": [ethanol]}
    if args.oc20_trajs:
        systems["oc20"] = oc20_frames(args.oc20_trajs, args.oc20_steps)
    raw, summary = {}, {}
    for name in args.models:
        model = Trained(name)
        for system, trajs in systems.items():
            for tol in args.tols:
                parts = [along(model, frames, tol, predictors) for frames in trajs]
                records = {p: {k: [x for part in parts for x in part[p][k]] for k in parts[0][p]} for p in parts[0]}
                run = f"{model.label}/{system}/{tol:g}"
                raw[run], summary[run] = records, summarise(records)
                for p, s in summary[run].items():
                    print(
                        f"{run} {p:9s} nfe {s['nfe_mean']:5.2f} ({s['nfe_over_last']:.2f}x last) "
                        f"time {s['median_s_over_last']:.2f}x last"
                        + (
                            ""
                            if p == "cold"
                            else f"  markov {100 * s['markov_mean']:.3f}% (max "
                            f"{100 * s['markov_max']:.3f}%)  guess error {s['prediction_error_mean']:.2e}"
                        ),
                        flush=True,
                    )
    if args.no_save:
        return
    command = (
        "python -m benchmarks.extrapolation --frames %d --models %s --tols %s --oc20-trajs %d --oc20-steps %d --substeps %d --threads %d"
        % (
            args.frames,
            " ".join(args.models),
            " ".join(f"{t:g}" for t in args.tols),
            args.oc20_trajs,
            args.oc20_steps,
            args.substeps,
            args.threads,
        )
    )
    result_name = "extrapolation" if args.substeps == 1 else f"extrapolation_substeps{args.substeps}"
    write_json(
        result_name,
        {
            "command": command,
            "machine": machine(),
            "ethanol_frames": "%g..%g, %g fs apart (first = cold seed)"
            % (ethanol[0].info["frame"], ethanol[-1].info["frame"], 0.5 / args.substeps),
            "oc20": [f"{len(f)} steps of {f[0].get_chemical_formula()}" for f in systems.get("oc20", [])],
            "targets": {"nfe_over_last": TARGET_NFE_RATIO, "markov_max": MARKOV_BOUND},
            "summary": summary,
            "per_frame": raw,
        },
    )
    plot(summary, predictors, result_name)


if __name__ == "__main__":
    main()
