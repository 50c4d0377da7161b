"""OC20 relaxations with fixed-point reuse vs the same relaxations solved cold (issue 13, item 5).

The DEQ1 trained on the bundled OC20 trajectories (`benchmarks.train_oc20`) relaxes the
initial structure of each held-out system (and of the validation systems) twice with ASE's
LBFGS through `fairchem_deq.simulate.run_relaxation`: once with `DEQCalculator(reuse=True)`
(each step starts from the previous step's fixed point) and once with `reuse=False` (every
step solved from zero), at the checkpoint's solver settings. The two runs of a system are
timed back to back in this process (one torch thread), alternating which goes first.
Reported: wall time per relaxation and the ratio of totals, optimiser steps, solver
evaluations per step, relaxed energies and their difference (target: reuse <= 0.5x cold wall
time, energies within 10 meV).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.oc20_relax_reuse [--steps 100] [--fmax 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.common import machine, save_figure, write_json
from benchmarks.train_models import checkpoint, deq_calculator
from benchmarks.train_oc20 import TRAJS, split_sids

NAME = "oc20_deq1"


def initial_structures(splits=("test", "val")) -> dict:
    """sid -> (split, first frame of the system's DFT relaxation, with its FixAtoms)."""
    from ase.io import read

    sids = split_sids()
    out = {}
    for split in splits:
        for sid in sids.get(split, []):
            out[str(sid)] = (split, read(TRAJS / f"random{sid}.traj", index=0))
    return out


def relax(atoms, reuse: bool, args) -> dict:
    from fairchem_deq.simulate import run_relaxation

    calc = deq_calculator(NAME, reuse=reuse, tol=args.tol)
    t0 = time.perf_counter()
    _, report = run_relaxation(atoms, calc, optimizer="lbfgs", fmax=args.fmax, steps=args.steps)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "steps": report.steps,
        "converged": report.converged,
        "final_energy_eV": report.final_energy_eV,
        "final_fmax_eVA": report.final_fmax_eVA,
        "evaluations_per_step": report.mean_solver_iterations,
        "wall_s_per_step": wall / max(report.steps + 1, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="LBFGS step cap")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--tol", type=float, default=None, help="solver tolerance (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    systems = {}
    for i, (sid, (split, atoms)) in enumerate(initial_structures().items()):
        order = (True, False) if i % 2 == 0 else (False, True)
        runs = {("reuse" if r else "cold"): relax(atoms, r, args) for r in order}
        reuse, cold = runs["reuse"], runs["cold"]
        systems[sid] = {
            "split": split,
            "atoms": len(atoms),
            **runs,
            "wall_ratio": reuse["wall_s"] / cold["wall_s"],
            "per_step_ratio": reuse["wall_s_per_step"] / cold["wall_s_per_step"],
            "energy_difference_meV": 1e3 * abs(reuse["final_energy_eV"] - cold["final_energy_eV"]),
        }
        print(sid, json.dumps(systems[sid]), flush=True)
    total = {k: sum(s[k]["wall_s"] for s in systems.values()) for k in ("reuse", "cold")}
    summary = {
        "wall_ratio_total": total["reuse"] / total["cold"],
        "per_step_ratio_mean": sum(s["per_step_ratio"] for s in systems.values()) / len(systems),
        "max_energy_difference_meV": max(s["energy_difference_meV"] for s in systems.values()),
    }
    print(json.dumps(summary, indent=1))
    write_json(
        "oc20_relax_reuse",
        {
            "command": f"OMP_NUM_THREADS=1 python -m benchmarks.oc20_relax_reuse --steps {args.steps} "
            f"--fmax {args.fmax:g} --threads {args.threads}" + (f" --tol {args.tol:g}" if args.tol else ""),
            "machine": machine(),
            "load_before_after": [load_before, os.getloadavg()],
            "checkpoint": str(checkpoint(NAME)),
            "targets": {"wall_ratio_total": 0.5, "max_energy_difference_meV": 10.0},
            "summary": summary,
            "systems": systems,
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    sids = list(systems)
    x = range(len(sids))
    ax.bar([i - 0.2 for i in x], [systems[s]["cold"]["wall_s"] for s in sids], width=0.4, label="cold every step")
    ax.bar([i + 0.2 for i in x], [systems[s]["reuse"]["wall_s"] for s in sids], width=0.4, label="fixed point reused")
    ax.set_xticks(list(x), [f"{s}\n({systems[s]['split']})" for s in sids])
    ax.set_ylabel("wall time of the relaxation (s)")
    ax.set_title(f"OC20 relaxations, DEQ1 trained on OC20: reuse / cold = {summary['wall_ratio_total']:.2f}")
    ax.legend()
    save_figure(fig, "oc20_relax_reuse")


if __name__ == "__main__":
    main()
