"""What does an MD step cost: every DEQ setting of interest against EquiformerV2-1/4/8, all
through the same DEQCalculator path; and one solver evaluation against one explicit block?

Per system (the held-back MD17 ethanol frames 1800.., 0.5 fs apart, and consecutive
optimiser steps of a 100+ atom OC20 slab), every calculator takes one step per frame,
interleaved frame by frame in this one process (`fixtures.step_along`), one torch thread:
each DEQ setting (`fixtures.Setting`, its own warm chain), EquiformerV2-4 (and on ethanol -8)
reference models, the depths without one derived from EquiformerV2-4 (`fixtures.DERIVED`:
an explicit model's cost does not depend on its weights), and two DEQ1 calculators solving
from zero with exactly 4 and 12 evaluations (an unreachable tolerance). Reported: median
and mean ms per step, ratios of medians to EquiformerV2-4 and -8, evaluations per step, the
load average before and after (ratios taken under load drift); cost per evaluation =
(T(12 evaluations) - T(4)) / 8 against cost per block = (T(EquiformerV2-8) - T(-1)) / 7.
The plot: force error against the exact fixed point (from benchmarks.solving's JSON in the
same --out, same setting labels) against cost per MD step, EquiformerV2-1/4/8 as points on the
floor (an explicit model has no fixed point to miss).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.speed [--frames 40] [--oc20-frames 20] [--settings ...]
"""

from __future__ import annotations

import os
import statistics

from benchmarks import fixtures as fx

SETTINGS = (  # labels as benchmarks.solving writes them
    "rel/0.01/cold/anderson",
    "rel/0.01/last/anderson",
    "rel/0.01/aspc/anderson",
    "rel/0.01/last/broyden_reuse",
    "rel/0.01/aspc/broyden_reuse",
    "rel/0.003/last/anderson",
    "rel/0.003/aspc/broyden_reuse",
    "error/0.01/last/anderson",
)
LO, HI = 4, 12  # evaluations of the capped DEQ1 solves


def calculators(system: str, settings: list[str], models) -> dict:
    deq, explicit = fx.SYSTEMS[system]
    calcs = {s.label: s.calculator(models, deq) for s in map(fx.Setting.parse, settings)}
    for n in (LO, HI):
        calcs[f"DEQ1 {n} evaluations"] = models.calculator(deq, reuse=False, tol=1e-12, max_iter=n)
    calcs.update({fx.LABELS[name]: models.calculator(name) for name in explicit})
    return calcs


def time_system(system: str, n: int, settings: list[str], models) -> dict:
    frames = fx.system_frames(system, n + 1)
    calcs = calculators(system, settings, models)
    evaluations = {fx.Setting.parse(spec).label: [] for spec in settings}

    def record(label, calc, _atoms):
        if label in evaluations:
            evaluations[label].append(calc.last_solver_stats["nstep"])

    load_before = os.getloadavg()
    with fx.quiet():
        times = fx.step_along(calcs, frames, record)
    med = {k: statistics.median(v) for k, v in times.items()}
    evaluation = (med[f"DEQ1 {HI} evaluations"] - med[f"DEQ1 {LO} evaluations"]) / (HI - LO)
    block = (med["EquiformerV2-8"] - med["EquiformerV2-1"]) / 7
    steps = {
        label: {
            "median_ms": 1e3 * med[label],
            "mean_ms": 1e3 * statistics.mean(times[label]),
            "over_EquiformerV2-4": med[label] / med["EquiformerV2-4"],
            "over_EquiformerV2-8": med[label] / med["EquiformerV2-8"],
            **({"evaluations": statistics.mean(evaluations[label])} if label in evaluations else {}),
        }
        for label in calcs
    }
    deq, explicit = fx.SYSTEMS[system]
    return {
        "frames": f"{frames[0].info['system']} {frames[1].info['frame']}..{frames[-1].info['frame']} (timed)",
        "held_out": frames[0].info.get("held_out", True),
        "atoms": len(frames[0]),
        "checkpoints": {name: str(models.path(name)) for name in (deq, *explicit)},
        "load_before_after": [load_before, os.getloadavg()],
        "per_step": steps,
        "per_evaluation": {"evaluation_ms": 1e3 * evaluation, "block_ms": 1e3 * block, "ratio": evaluation / block},
    }


def plot(results: dict, errors: dict, out) -> None:
    plt = fx.pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, (system, res) in zip(axes[0], results.items()):
        rows = errors.get(system, {}).get("settings", {})
        points = [
            (k, r["over_EquiformerV2-4"], 100 * rows[k]["force_error_mean"])
            for k, r in res["per_step"].items()
            if k in rows
        ]
        floor = min((y for *_, y in points), default=1.0) / 3
        for label, x, y in points:
            ax.plot(x, y, "o", color="tab:blue")
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        for label in ("EquiformerV2-1", "EquiformerV2-4", "EquiformerV2-8"):
            ax.plot(res["per_step"][label]["over_EquiformerV2-4"], floor, "s", color="tab:red")
            ax.annotate(label, (res["per_step"][label]["over_EquiformerV2-4"], floor), fontsize=7, rotation=45)
        ax.set_yscale("log")
        ax.set_xlabel("cost per MD step / EquiformerV2-4 (median)")
        ax.set_ylabel("force error vs exact fixed point, mean (%)")
        missing = "" if points else " (no solving.json errors)"
        ax.set_title(f"{system}, {res['atoms']} atoms: DEQ1 settings; squares: explicit{missing}", fontsize=9)
    fx.save_figure(fig, "speed", out)


def main(argv=None) -> dict:
    p = fx.parser(__doc__, systems=True)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), help="stop/tol/predictor/solver")
    args = p.parse_args(argv)
    models = fx.start(args)
    results = {s: time_system(s, n, args.settings, models) for s, n in fx.frames_of(args).items()}
    for system, res in results.items():
        for label, row in res["per_step"].items():
            print(
                f"{system} {label:30s} {row['median_ms']:8.1f} ms  {row['over_EquiformerV2-4']:.3f}x EqV2-4", flush=True
            )
        print(f"{system} per evaluation / per block: {res['per_evaluation']['ratio']:.3f}", flush=True)
    payload = {
        "command": fx.command("speed", argv),
        "machine": fx.machine(),
        "settings": args.settings,
        "systems": results,
    }
    fx.write_json("speed", payload, args.out)
    plot(results, fx.read_json("solving", args.out).get("systems", {}), args.out)
    return payload


if __name__ == "__main__":
    main()
