"""How much does fixed-point reuse save in OC20 relaxations, and does it change where they end?

The reference DEQ1 trained on the bundled OC20 trajectories (`oc20_deq1`) relaxes the
initial structure (with its FixAtoms) of each held-out system (test and validation split of
the conversion; every bundled system where this machine has none) twice with ASE's LBFGS
through `fairchem_deq.run_relaxation`: with `DEQCalculator(reuse=True)` (each optimiser step
starts from the previous step's fixed point) and `reuse=False` (every step from zero), at the
checkpoint's solver settings. The two runs of a system go back to back in this process (one
torch thread), alternating which goes first. Reported: optimiser steps, solver evaluations
per step, final energy and max force, wall time, and per system the ratios reuse / cold and
the final-energy difference.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.oc20_relax [--steps 100] [--fmax 0.05]
"""

from __future__ import annotations

import os
import time

from benchmarks import fixtures as fx

NAME = "oc20_deq1"


def relax(atoms, calc, args) -> dict:
    from fairchem_deq import run_relaxation

    t0 = time.perf_counter()
    _, report = run_relaxation(atoms, calc, optimizer="lbfgs", fmax=args.fmax, steps=args.steps)
    row = {"steps": report.steps, "converged": report.converged, "evaluations_per_step": report.mean_solver_iterations}
    row |= {"final_energy_eV": report.final_energy_eV, "final_fmax_eVA": report.final_fmax_eVA}
    return row | {"wall_s": time.perf_counter() - t0}


def main(argv=None) -> dict:
    from ase.io import read

    p = fx.parser(__doc__)
    p.add_argument("--steps", type=int, default=100, help="LBFGS step cap")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--max-systems", type=int, default=None)
    args = p.parse_args(argv)
    models = fx.start(args)
    paths, held_out = fx.oc20_systems(("test", "val"))
    load_before, systems = os.getloadavg(), {}
    for i, path in enumerate(paths[: args.max_systems]):
        atoms = read(path, index=0)
        order = (True, False) if i % 2 == 0 else (False, True)
        runs = {("reuse" if r else "cold"): relax(atoms, models.calculator(NAME, reuse=r), args) for r in order}
        reuse, cold = runs["reuse"], runs["cold"]
        systems[path.stem] = {"atoms": len(atoms), **runs}
        systems[path.stem]["evaluations_ratio"] = reuse["evaluations_per_step"] / cold["evaluations_per_step"]
        systems[path.stem]["wall_ratio"] = reuse["wall_s"] / cold["wall_s"]
        systems[path.stem]["energy_difference_meV"] = 1e3 * abs(reuse["final_energy_eV"] - cold["final_energy_eV"])
        print(path.stem, systems[path.stem], flush=True)
    total = {k: sum(s[k]["wall_s"] for s in systems.values()) for k in ("reuse", "cold")}
    summary = {"wall_ratio_total": total["reuse"] / total["cold"]}
    summary["evaluations_ratio_mean"] = sum(s["evaluations_ratio"] for s in systems.values()) / len(systems)
    summary["max_energy_difference_meV"] = max(s["energy_difference_meV"] for s in systems.values())
    payload = {"command": fx.command("oc20_relax", argv), "machine": fx.machine()}
    payload |= {"load_before_after": [load_before, os.getloadavg()], "checkpoint": str(models.path(NAME))}
    payload |= {"held_out_systems": held_out, "summary": summary, "systems": systems}
    fx.write_json("oc20_relax", payload, args.out)
    plt = fx.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(systems))
    for shift, key in ((-0.2, "cold"), (0.2, "reuse")):
        ax.bar([i + shift for i in x], [s[key]["evaluations_per_step"] for s in systems.values()], 0.4, label=key)
    ax.set_xticks(list(x), list(systems), fontsize=7)
    ax.set_ylabel("solver evaluations per optimiser step")
    ax.set_title(f"OC20 relaxations ({NAME}): wall time reuse / cold = {summary['wall_ratio_total']:.2f}")
    ax.legend()
    fx.save_figure(fig, "oc20_relax", args.out)
    return payload


if __name__ == "__main__":
    main()
