"""How many solver evaluations does an MD step need, and how far are its forces from the
exact fixed point, for each way of solving?

One grid: stop rule x tolerance x predictor (the warm start; "cold" solves every frame from
zero) x solver x propagation ("solve": converged solves; "one_step"/"two_step": a fixed
number of evaluations per warm step, `fairchem_deq.solve.propagation`). Every setting
("stop/tol/predictor/solver[/propagation]", `fixtures.Setting`) is its own DEQCalculator chain along
consecutive frames, the first solved from zero: the held-back MD17 ethanol frames 1800..
(`ethanol_deq1`) and consecutive optimiser steps of a 100+ atom OC20 slab (`oc20_deq1`).
Per setting, over the frames after the first: solver evaluations per step (mean nstep); the
force error ||F - F*|| / ||F*|| (mean, max) against the exact fixed point's forces F*
(`fixtures.TightForces`: the same frame solved from zero to rel 1e-6, up to 200 iterations,
cached); cold fallbacks; non-converged solves; and beside each warm setting the evaluations
of the cold chain with the same stop rule, tolerance and solver, and the warm-vs-cold force
deviation (Markov deviation). "safe": mean error < 1 % and max < 3 %; "tight": mean < 0.3 %.
Also the largest per-atom displacement between consecutive frames (what the reuse bound
`reuse_max_displacement` sees along the chain). Evaluations are the cost measure here;
benchmarks.speed times the settings and takes its force errors from this JSON.

    .venv/bin/python -m benchmarks.solving [--frames 40] [--oc20-frames 20] [--tols 1e-2 3e-3 1e-3]
        [--predictors cold last linear quadratic aspc] [--stop-modes rel error] [--solvers anderson broyden_reuse]
        [--propagations solve one_step two_step]
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import replace

import torch

from benchmarks import fixtures as fx


def chain(setting: fx.Setting, models, name: str, frames: list, tight: fx.TightForces, max_iter: int):
    """-> (per-frame records, forces per frame) of one setting's chain along `frames`."""
    rec = {k: [] for k in ("nstep", "force_error", "fallback", "converged", "propagated")}
    forces = []

    def record(_label, calc, atoms):
        stats = calc.last_solver_stats
        rec["nstep"].append(int(stats["nstep"]))
        rec["fallback"].append(bool(stats.get("fallback")))
        rec["converged"].append(bool(stats["converged"]))
        rec["propagated"].append(stats.get("propagated"))  # None: a solve; False: the guard fell back
        forces.append(calc.results["forces"].copy())
        rec["force_error"].append(fx.rel_error(forces[-1], tight(atoms)))

    fx.step_along({setting.label: setting.calculator(models, name, max_iter)}, frames, record)
    return rec, forces


def summarise(rec: dict) -> dict:
    err = rec["force_error"]
    s = {
        "evaluations": statistics.mean(rec["nstep"]),
        "force_error_mean": statistics.mean(err),
        "force_error_max": max(err),
        "fallbacks": sum(rec["fallback"]),
        "propagation_fallbacks": rec["propagated"].count(False),
        "nonconverged": rec["converged"].count(False),
        "frames": len(err),
    }
    return {
        **s,
        "safe": s["force_error_mean"] < fx.SAFE_MEAN and s["force_error_max"] < fx.SAFE_MAX,
        "tight": s["force_error_mean"] < fx.TIGHT_MEAN,
    }


def displacements(frames: list) -> dict:
    from fairchem_deq.reuse import max_displacement

    def pos(a):
        return torch.as_tensor(a.positions)

    steps = [
        max_displacement(pos(b), pos(a), torch.as_tensor(a.cell.array), torch.as_tensor(a.pbc))
        for a, b in itertools.pairwise(frames)
    ]
    return {"median": statistics.median(steps), "max": max(steps)}


def run_system(system: str, n: int, settings: list[fx.Setting], models, max_iter: int) -> dict:
    name = fx.SYSTEMS[system][0]
    frames = fx.system_frames(system, n + 1)
    tight = fx.TightForces(models.path(name))
    rows, forces = {}, {}
    for setting in settings:
        rec, forces[setting.label] = chain(setting, models, name, frames, tight, max_iter)
        rows[setting.label] = s = {**summarise(rec), "per_frame": rec}
        print(
            f"{system} {setting.label:32s} evaluations {s['evaluations']:5.2f}  force error "
            f"{100 * s['force_error_mean']:.3f} % (max {100 * s['force_error_max']:.3f} %)",
            flush=True,
        )
    tight.save()
    for setting in settings:
        cold = replace(setting, predictor="cold", propagation="solve").label
        if setting.predictor != "cold" and cold in rows:
            markov = [fx.rel_error(w, c) for w, c in zip(forces[setting.label], forces[cold])]
            rows[setting.label].update(
                evaluations_cold=rows[cold]["evaluations"],
                warm_over_cold=rows[setting.label]["evaluations"] / rows[cold]["evaluations"],
                markov_deviation_mean=statistics.mean(markov),
                markov_deviation_max=max(markov),
            )
    safe = [k for k, r in rows.items() if r["safe"] and "/cold/" not in k]
    return {
        "model": name,
        "checkpoint": str(models.path(name)),
        "frames": f"{frames[0].info['system']} {frames[0].info['frame']}..{frames[-1].info['frame']} (first: cold seed)",
        "held_out": frames[0].info.get("held_out", True),
        "atoms": len(frames[0]),
        "step_displacement_A": displacements(frames),
        "reference_unconverged": tight.unconverged(),
        "fewest_evaluations_safe": min(safe, key=lambda k: rows[k]["evaluations"]) if safe else None,
        "settings": rows,
    }


def plot(results: dict, out) -> None:
    plt = fx.pyplot()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    colors, markers = {}, {}
    for ax, (system, res) in zip(axes[0], results.items()):
        for label, row in res["settings"].items():
            stop, _, predictor, solver, *_ = label.split("/")
            color = colors.setdefault(predictor, f"C{len(colors)}")
            marker = markers.setdefault(solver, "osD^v"[len(markers) % 5])
            face = color if stop == "rel" else "none"
            ax.plot(row["evaluations"], 100 * row["force_error_mean"], marker, color=color, mfc=face, ls="none")
        ax.axhline(100 * fx.SAFE_MEAN, color="k", lw=0.8, ls=":")
        ax.axhline(100 * fx.TIGHT_MEAN, color="k", lw=0.6, ls="-.")
        ax.set_yscale("log")
        ax.set_xlabel("solver evaluations per step (mean)")
        ax.set_ylabel("force error vs exact fixed point, mean (%)")
        ax.set_title(f"{system} ({res['model']}, {res['atoms']} atoms)")
    handles = [Line2D([], [], color=c, marker="o", ls="none", label=p) for p, c in colors.items()]
    handles += [Line2D([], [], color="k", marker=m, ls="none", label=s) for s, m in markers.items()]
    handles += [Line2D([], [], color="k", marker="o", mfc="none", ls="none", label="stop rule 'error' (hollow)")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7)
    fx.save_figure(fig, "solving", out)


def main(argv=None) -> dict:
    p = fx.parser(__doc__, systems=True)
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3])
    p.add_argument("--predictors", nargs="+", default=["cold", "last", "linear", "quadratic", "aspc"])
    p.add_argument("--stop-modes", nargs="+", default=["rel", "error"])
    p.add_argument("--solvers", nargs="+", default=["anderson", "broyden_reuse"])
    p.add_argument("--propagations", nargs="+", default=["solve", "one_step", "two_step"])
    p.add_argument("--max-iter", type=int, default=40)
    args = p.parse_args(argv)
    models = fx.start(args)
    settings = [
        fx.Setting(stop, tol, predictor, solver, propagation)
        for stop in args.stop_modes
        for tol in args.tols
        for solver in args.solvers
        for predictor in args.predictors
        for propagation in args.propagations
        if propagation == "solve" or predictor != "cold"  # a cold chain has nothing to propagate
    ]
    results = {s: run_system(s, n, settings, models, args.max_iter) for s, n in fx.frames_of(args).items()}
    payload = {
        "command": fx.command("solving", argv),
        "machine": fx.machine(),
        "reference": {
            "start": "cold",
            "stop_mode": "rel",
            "tol": fx.TightForces.TOL,
            "max_iter": fx.TightForces.MAX_ITER,
        },
        "flags": {"safe": "force error mean < 1 % and max < 3 %", "tight": "mean < 0.3 %"},
        "max_iter": args.max_iter,
        "systems": results,
    }
    fx.write_json("solving", payload, args.out)
    plot(results, args.out)
    return payload


if __name__ == "__main__":
    main()
