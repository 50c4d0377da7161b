"""Geometry relaxation with a DEQuiformer checkpoint (LBFGS or FIRE), warm-started per step."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fairchem_deq.cli.common import (
    add_model_and_structure_arguments,
    load_calculator_and_structure,
    write_report,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_structure_arguments(parser)
    parser.add_argument("--optimizer", choices=["lbfgs", "fire"], default="lbfgs")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--compare-cold",
        action="store_true",
        help="also solve every warm-started step from zero: solver evaluations without "
        "reuse and the warm-vs-cold force deviation per step (costs a second solve)",
    )


def print_step(row: dict) -> None:
    cold = (
        f"  (from zero {row['solver_iterations_cold']}, force deviation {row['markov_dev']:.2e})"
        if row["solver_iterations_cold"] is not None
        else ""
    )
    print(
        f"step {row['step']:4d}  E {row['epot_eV']:.6f} eV  fmax {row['fmax_eVA']:.4f} eV/Å  "
        f"solver iterations {row['solver_iterations']}{cold}",
        flush=True,
    )


OUTPUTS = ("relax.traj", "relaxed.extxyz", "relax_log.csv", "report.json")


def run(args: argparse.Namespace) -> int:
    from ase.io import write

    from fairchem_deq.outputs import staged_outputs
    from fairchem_deq.simulate.relax import run_relaxation

    with staged_outputs(args.out, OUTPUTS, overwrite=args.overwrite) as out:
        calc, atoms = load_calculator_and_structure(args, compare_cold=args.compare_cold)
        relaxed, report = run_relaxation(
            atoms,
            calc,
            optimizer=args.optimizer,
            fmax=args.fmax,
            steps=args.steps,
            trajectory=out / "relax.traj",
            log=out / "relax_log.csv",
            on_step=None if args.no_progress else print_step,
        )
        write(out / "relaxed.extxyz", relaxed, format="extxyz")  # the staging folder is hidden
        summary = report.to_dict()
        final = Path(args.out).absolute()
        summary["trajectory"], summary["log"] = str(final / "relax.traj"), str(final / "relax_log.csv")
        write_report(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "solver_iterations_per_step"}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq relax ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("relax", argv)


if __name__ == "__main__":
    sys.exit(main())
