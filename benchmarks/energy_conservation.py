"""NVE energy conservation and cost per step: DEQ1 with direct forces vs energy-gradient forces.

Why: the paper's forces come from a direct head, so NVE MD drifts; `deq1_conservative`
takes forces = -dE/dpos through the fixed point (fairchem_deq/models/gradient_forces_head.py).
Both checkpoints come from benchmarks.train_models (same recipe and CPU budget; the
conservative one is trained with its config's 6-step phantom gradient).

Method: the same NVE run for every model, through the product path (`fairchem_deq.simulate
.run_md` with a `DEQCalculator`, warm starts on): held-back ethanol frame 1800, Maxwell-
Boltzmann velocities at `--temperature` (same seed), velocity Verlet, `--timestep` fs,
`--steps` steps. Drift = slope of a linear fit of E_tot(t) per atom (meV/atom/ps); also the
largest |E_tot(t) - E_tot(0)|. A run that turns unphysical (run_md's force / distance
thresholds) stops there; the drifts are then also compared over the window every run
survived (`window_drift_meV_per_atom_per_ps`), which is what the ratio uses. The conservative model is run at its evaluation tolerance and
at `--tight-tol` (an inexact fixed point is what breaks exact conservation). Cost per MD step:
the calculators interleaved frame by frame over held-back consecutive frames (warm starts),
median ms, reported as a ratio to direct DEQ1, with the adjoint iterations per step and the
force error against exact energy-gradient forces. Energy-gradient variants: the adjoint
solve from zero or from the previous step's adjoint (issue 13 item 6), at the checkpoint's
relative b_tol and at `--loose-b-tol`.

    .venv/bin/python -m benchmarks.energy_conservation [--steps 400] [--timestep 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import checkpoint, deq_calculator, held_out_frames


def variants(args) -> dict:
    """label -> (checkpoint name, DEQCalculator keyword arguments). Energy-gradient forces
    solve an adjoint fixed point per step; the checkpoint's is relative b_tol 1e-4, started
    from the previous step's adjoint (reuse_adjoint) or from zero."""
    return {
        "DEQ1 direct": ("deq1", {}),
        "EG, adjoint from zero": ("deq1_conservative", {"reuse_adjoint": False}),
        "EG, adjoint reused": ("deq1_conservative", {}),
        f"EG, adjoint reused, b_tol {args.loose_b_tol:g}": ("deq1_conservative", {"b_tol": args.loose_b_tol}),
        **{
            f"EG, adjoint extrapolated (linear), b_tol {b_tol:g}": (
                "deq1_conservative",
                {"b_tol": b_tol, "warm_start": "linear"},
            )
            for b_tol in (args.loose_b_tol, *args.extra_b_tols)
        },
        f"EG, tol {args.tight_tol:g}": ("deq1_conservative", {"tol": args.tight_tol, "max_iter": 200}),
    }


def nve_runs(args) -> tuple[dict, dict]:
    """-> (report per run, MD log rows per run)."""
    from fairchem_deq.simulate import run_md

    start = held_out_frames(1)[0]
    runs, rows = {}, {}
    for label, (name, kwargs) in variants(args).items():
        calc = deq_calculator(name, **kwargs)
        t0 = time.perf_counter()
        report = run_md(
            start,
            calc,
            ensemble="nve",
            timestep_fs=args.timestep,
            steps=args.steps,
            temperature_K=args.temperature,
            seed=0,
            progress=False,
            max_force=args.max_force,
        )
        etot = np.array([r["etot_eV"] for r in report.rows])
        rows[label] = report.rows
        runs[label] = {
            **report.to_dict(),
            "checkpoint": str(checkpoint(name)),
            "calculator": kwargs,
            "max_abs_etot_change_meV_per_atom": float(np.abs(etot - etot[0]).max() / len(start) * 1000),
            "wall_s": time.perf_counter() - t0,
            "etot_minus_start_meV_per_atom": ((etot - etot[0]) / len(start) * 1000).tolist(),
        }
        print(label, {k: v for k, v in runs[label].items() if not isinstance(v, list)}, flush=True)
    return runs, rows


def add_window_drift(runs: dict, rows: dict) -> int:
    """Drift of every run over the steps all runs survived -> that window (steps)."""
    from fairchem_deq.simulate.md import energy_drift

    window = min(r["steps_run"] - (1 if r["unphysical_step"] is not None else 0) for r in runs.values())
    for label, r in runs.items():
        r["window_drift_meV_per_atom_per_ps"] = energy_drift(rows[label][: window + 1], r["natoms"])
        de = np.array(r["etot_minus_start_meV_per_atom"][: window + 1])
        r["window_max_abs_etot_change_meV_per_atom"] = float(np.abs(de).max())
    return window


def step_costs(args) -> dict:
    """Every variant's calculator steps along the same held-back frames, interleaved (warm
    chains; the first two frames are not timed): median ms per step, vs direct DEQ1, mean
    adjoint iterations per step, and the force error against exact energy-gradient forces
    (forward tol 1e-6, relative b_tol 1e-8: these match finite differences of the energy,
    tests/test_conservative_forces.py)."""
    calcs = {label: deq_calculator(name, **kwargs) for label, (name, kwargs) in variants(args).items()}
    exact = deq_calculator("deq1_conservative", tol=1e-6, max_iter=300, b_tol=1e-8, b_max_iter=500, reuse=False)
    times, backward, errors = ({k: [] for k in calcs} for _ in range(3))
    for i, atoms in enumerate(held_out_frames(args.cost_frames + 2)):
        for label, calc in calcs.items():
            t0 = time.perf_counter()
            calc.calculate(atoms)
            if i >= 2:
                times[label].append(time.perf_counter() - t0)
                stats = calc.model.backbone.deq_layer.solver.last_backward_stats
                backward[label].append(
                    float(stats["nstep"].float().mean()) if stats and label != "DEQ1 direct" else 0.0
                )
        if i >= 2:
            exact.calculate(atoms)
            ref = exact.results["forces"]
            for label, calc in calcs.items():
                if label != "DEQ1 direct":
                    errors[label].append(float(np.linalg.norm(calc.results["forces"] - ref) / np.linalg.norm(ref)))
    base = statistics.median(times["DEQ1 direct"])
    return {
        k: {
            "median_ms": 1000 * statistics.median(v),
            "vs_direct": statistics.median(v) / base,
            "adjoint_iterations_per_step": statistics.mean(backward[k]),
            **(
                {"force_error_vs_exact_mean": statistics.mean(errors[k]), "force_error_vs_exact_max": max(errors[k])}
                if errors[k]
                else {}
            ),
        }
        for k, v in times.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--tight-tol", type=float, default=1e-4)
    parser.add_argument("--loose-b-tol", type=float, default=1e-2, help="relative b_tol of the loose adjoint variant")
    parser.add_argument(
        "--extra-b-tols", type=float, nargs="*", default=[3e-2], help="more extrapolated-adjoint variants"
    )
    parser.add_argument(
        "--max-force",
        type=float,
        default=10.0,
        help="eV/Å; beyond it the run counts as unphysical (ethanol at 300 K: ~2-4)",
    )
    parser.add_argument("--cost-frames", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs, rows = nve_runs(args)
    window = add_window_drift(runs, rows)
    costs = step_costs(args)
    print(costs, flush=True)
    direct = abs(runs["DEQ1 direct"]["window_drift_meV_per_atom_per_ps"])
    ratios = {
        label: abs(r["window_drift_meV_per_atom_per_ps"]) / direct
        for label, r in runs.items()
        if label != "DEQ1 direct"
    }
    print("window", window, "drift ratios", ratios, flush=True)
    write_json(
        "energy_conservation",
        {
            "command": "python -m benchmarks.energy_conservation --steps %d --timestep %g --temperature %g "
            "--tight-tol %g --loose-b-tol %g --extra-b-tols %s --max-force %g --cost-frames %d --threads %d"
            % (
                args.steps,
                args.timestep,
                args.temperature,
                args.tight_tol,
                args.loose_b_tol,
                " ".join(f"{t:g}" for t in args.extra_b_tols),
                args.max_force,
                args.cost_frames,
                args.threads,
            ),
            "machine": machine(),
            "method": __doc__.split("Method: ")[1].split("    .venv")[0].strip(),
            "nve": runs,
            "common_window_steps": window,
            "drift_ratio_vs_direct": ratios,
            "step_cost": costs,
            "targets": {
                "drift": "|drift| of energy-gradient forces <= 0.1 x direct forces",
                "cost": "energy-gradient step <= 2 x direct step",
            },
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for label, r in runs.items():
        t = np.arange(len(r["etot_minus_start_meV_per_atom"])) * args.timestep
        ax.plot(
            t,
            r["etot_minus_start_meV_per_atom"],
            label=f"{label}: {r['window_drift_meV_per_atom_per_ps']:.3g} meV/atom/ps"
            f" (first {window} steps)" + (f", unphysical at {r['unphysical_step']}" if r["unphysical_step"] else ""),
        )
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("E_tot(t) - E_tot(0) (meV/atom)")
    ax.set_title(f"NVE ethanol, {args.timestep:g} fs, {args.temperature:g} K")
    ax.legend(fontsize=8)
    bx.barh(list(costs), [c["vs_direct"] for c in costs.values()])
    bx.axvline(2.0, ls="--", color="k", lw=0.8)
    bx.set_xlabel("time per MD step / DEQ1 direct (warm); dashed: target 2x")
    bx.invert_yaxis()
    bx.set_title("cost per step (interleaved, median)")
    save_figure(fig, "energy_conservation")


if __name__ == "__main__":
    main()
