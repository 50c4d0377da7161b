"""Geometry relaxation with a DEQuiformer checkpoint (LBFGS or FIRE), warm-started per step."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from fairchem_deq.simulate.cli_common import (
    add_model_and_structure_arguments, load_calculator_and_structure, write_report,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_structure_arguments(parser)
    parser.add_argument("--optimizer", choices=["lbfgs", "fire"], default="lbfgs")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--steps", type=int, default=200)


def run(args: argparse.Namespace) -> int:
    from ase.io import write

    from fairchem_deq.simulate.relax import run_relaxation

    calc, atoms = load_calculator_and_structure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    relaxed, report = run_relaxation(atoms, calc, optimizer=args.optimizer, fmax=args.fmax,
                                     steps=args.steps, trajectory=out / "relax.traj",
                                     logfile=None if args.no_progress else "-")
    write(out / "relaxed.extxyz", relaxed)
    summary = asdict(report)
    write_report(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "solver_iterations_per_step"}, indent=2))
    return 0
