"""Geometry relaxation with a (DEQ) ASE calculator; the fixed point is carried across
optimiser steps by the calculator, so later steps need few solver iterations.

Every optimiser step is logged (energy, max force, solver evaluations; with a calculator
made with `compare_cold=True` also the evaluations from zero and the warm-vs-cold force
deviation), in the report's `rows` and, with `log`, in a CSV file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.optimize import FIRE, LBFGS

from fairchem_deq.outputs import partial_path, write_csv_atomic

OPTIMIZERS = {"lbfgs": LBFGS, "fire": FIRE}
LOG_FIELDS = [
    "step",
    "epot_eV",
    "fmax_eVA",
    "solver_iterations",
    "rel_residual",
    "solver_iterations_cold",
    "markov_dev",
]


@dataclass
class RelaxReport:
    converged: bool
    steps: int
    final_energy_eV: float
    final_fmax_eVA: float
    total_solver_iterations: int | None
    solver_iterations_per_step: list[int]
    trajectory: str | None
    mean_solver_iterations: float | None = None
    mean_solver_iterations_cold: float | None = None  # compare_cold only
    max_markov_dev: float | None = None  # compare_cold only: max ||F_warm - F_cold|| / ||F_cold||
    log: str | None = None
    rows: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("rows")
        return d


def run_relaxation(
    atoms: Atoms,
    calculator,
    *,
    optimizer: str = "lbfgs",
    fmax: float = 0.05,
    steps: int = 200,
    trajectory: str | Path | None = None,
    logfile: str | None = None,
    log: str | Path | None = None,
    on_step=None,
) -> tuple[Atoms, RelaxReport]:
    """`logfile`: ASE's optimiser log ("-" for stdout); `log`: CSV of the per-step rows;
    `on_step(row)` is called with each row as it is made."""
    try:
        opt_cls = OPTIMIZERS[optimizer.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}") from None
    atoms = atoms.copy()
    atoms.calc = calculator
    tmp = partial_path(trajectory) if trajectory else None
    opt = opt_cls(atoms, trajectory=str(tmp) if tmp else None, logfile=logfile)
    rows: list[dict] = []

    def record():
        stats = getattr(calculator, "last_solver_stats", {}) or {}
        rows.append(
            {
                "step": len(rows),
                "epot_eV": float(atoms.get_potential_energy()),
                "fmax_eVA": float(np.linalg.norm(atoms.get_forces(), axis=1).max()),
                "solver_iterations": _int_or_none(stats.get("nstep")),
                "rel_residual": stats.get("rel_residual"),
                "solver_iterations_cold": _int_or_none(stats.get("nstep_cold")),
                "markov_dev": stats.get("markov_dev"),
            }
        )
        if on_step is not None:
            on_step(rows[-1])

    opt.attach(record, interval=1)
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    except BaseException:
        if hasattr(opt, "close"):
            opt.close()
        if tmp:
            tmp.unlink(missing_ok=True)
        raise
    if hasattr(opt, "close"):
        opt.close()
    if tmp:
        os.replace(tmp, trajectory)
    if log:
        write_csv_atomic(log, rows, LOG_FIELDS)
    forces = atoms.get_forces()
    iterations = [r["solver_iterations"] for r in rows if r["solver_iterations"] is not None]
    cold = [r["solver_iterations_cold"] for r in rows if r["solver_iterations_cold"] is not None]
    devs = [r["markov_dev"] for r in rows if r["markov_dev"] is not None]
    return atoms, RelaxReport(
        converged=converged,
        steps=opt.get_number_of_steps(),
        final_energy_eV=float(atoms.get_potential_energy()),
        final_fmax_eVA=float(np.linalg.norm(forces, axis=1).max()),
        total_solver_iterations=sum(iterations) if iterations else None,
        solver_iterations_per_step=iterations,
        trajectory=str(trajectory) if trajectory else None,
        mean_solver_iterations=float(np.mean(iterations)) if iterations else None,
        mean_solver_iterations_cold=float(np.mean(cold)) if cold else None,
        max_markov_dev=float(max(devs)) if devs else None,
        log=str(log) if log else None,
        rows=rows,
    )


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)
