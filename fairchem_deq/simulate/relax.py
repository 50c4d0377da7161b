"""Geometry relaxation with a (DEQ) ASE calculator; the fixed point is carried across
optimiser steps by the calculator, so later steps need few solver iterations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.optimize import FIRE, LBFGS

from fairchem_deq.simulate.atomic_files import partial_path

OPTIMIZERS = {"lbfgs": LBFGS, "fire": FIRE}


@dataclass
class RelaxReport:
    converged: bool
    steps: int
    final_energy_eV: float
    final_fmax_eVA: float
    total_solver_iterations: int | None
    solver_iterations_per_step: list[int]
    trajectory: str | None


def run_relaxation(
    atoms: Atoms,
    calculator,
    *,
    optimizer: str = "lbfgs",
    fmax: float = 0.05,
    steps: int = 200,
    trajectory: str | Path | None = None,
    logfile: str | None = None,
) -> tuple[Atoms, RelaxReport]:
    try:
        opt_cls = OPTIMIZERS[optimizer.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}") from None
    atoms = atoms.copy()
    atoms.calc = calculator
    tmp = partial_path(trajectory) if trajectory else None
    opt = opt_cls(atoms, trajectory=str(tmp) if tmp else None, logfile=logfile)
    iterations: list[int] = []

    def record():
        stats = getattr(calculator, "last_solver_stats", {}) or {}
        if "nstep" in stats:
            iterations.append(int(stats["nstep"]))

    opt.attach(record, interval=1)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    if hasattr(opt, "close"):
        opt.close()
    if tmp:
        os.replace(tmp, trajectory)
    forces = atoms.get_forces()
    return atoms, RelaxReport(
        converged=converged, steps=opt.get_number_of_steps(),
        final_energy_eV=float(atoms.get_potential_energy()),
        final_fmax_eVA=float(np.linalg.norm(forces, axis=1).max()),
        total_solver_iterations=sum(iterations) if iterations else None,
        solver_iterations_per_step=iterations, trajectory=str(trajectory) if trajectory else None,
    )
