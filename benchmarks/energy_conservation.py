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
the models interleaved frame by frame over held-back consecutive frames (warm starts),
median ms, reported as a ratio to direct DEQ1.

    .venv/bin/python -m benchmarks.energy_conservation [--steps 400] [--timestep 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import Trained, checkpoint, held_out_frames
from benchmarks.wallclock import step_fns


def nve_runs(args) -> tuple[dict, dict]:
    """-> (report per run, MD log rows per run)."""
    from fairchem_deq.simulate import DEQCalculator, run_md

    start = held_out_frames(1)[0]
    variants = {
        "DEQ1 direct": ("deq1", None),
        "DEQ1 energy-gradient": ("deq1_conservative", None),
        f"DEQ1 energy-gradient, tol {args.tight_tol:g}": ("deq1_conservative", args.tight_tol),
    }
    runs, rows = {}, {}
    for label, (name, tol) in variants.items():
        calc = DEQCalculator(checkpoint(name), cpu=True, seed=0, tol=tol, max_iter=200 if tol else None)
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
            "eval_tol": tol or "checkpoint's",
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


def step_costs(frames: int) -> dict:
    models = {m.label: m for m in (Trained("deq1"), Trained("deq1_conservative"))}
    fns = {k: v for k, v in step_fns(models).items() if k.endswith("warm")}
    times = {k: [] for k in fns}
    for i, atoms in enumerate(held_out_frames(frames + 2)):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(atoms)
            if i >= 2:  # first frames: cold start and warm-up
                times[k].append(time.perf_counter() - t0)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    base = med["DEQ1 warm"]
    return {k: {"median_ms": v, "vs_direct": v / base} for k, v in med.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--tight-tol", type=float, default=1e-4)
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
    costs = step_costs(args.cost_frames)
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
            "--tight-tol %g --max-force %g --cost-frames %d --threads %d"
            % (
                args.steps,
                args.timestep,
                args.temperature,
                args.tight_tol,
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
            "target": "|drift| of energy-gradient forces <= 0.1 x direct forces",
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
    bx.bar(list(costs), [c["vs_direct"] for c in costs.values()])
    bx.set_ylabel("time per MD step / DEQ1 direct (warm)")
    bx.set_title("cost per step (interleaved, median)")
    save_figure(fig, "energy_conservation")


if __name__ == "__main__":
    main()
