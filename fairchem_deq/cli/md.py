"""Molecular dynamics with a DEQuiformer checkpoint (NVE velocity Verlet or Langevin NVT)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fairchem_deq.cli.common import (
    add_model_and_structure_arguments,
    add_propagation_arguments,
    load_calculator_and_structure,
    write_report,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_structure_arguments(parser)
    parser.add_argument("--ensemble", choices=["nve", "nvt"], default="nve")
    add_propagation_arguments(parser)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--temperature", type=float, default=300.0, help="K, initial velocities and NVT bath")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-force", type=float, default=50.0, help="eV/Å: larger means unphysical")
    parser.add_argument("--min-distance", type=float, default=0.5, help="Å: closer means unphysical")
    parser.add_argument(
        "--max-bond-stretch",
        type=float,
        default=None,
        help="Å: stop when a covalent bond of the starting structure changes length by "
        "more than this (e.g. 0.5 from an equilibrium frame); default off",
    )
    parser.add_argument(
        "--bond-reference",
        default=None,
        metavar="FILE",
        help="reference (DFT) frames of the molecule: sGDML .npz, any file ASE reads (.xyz, .traj, ...; "
        "FILE@10: picks frames), or a saved BondReference .json. Stops at the first step where a covalent "
        "bond (covalent radii x 1.2 in the first frame) deviates from its mean length over these frames by "
        "more than --max-bond-deviation: the stability criterion of Fu et al. 2023; default off",
    )
    parser.add_argument(
        "--max-bond-deviation",
        type=float,
        default=0.5,
        help="Å, with --bond-reference: the largest allowed |bond length - reference mean| (default 0.5)",
    )
    parser.add_argument(
        "--print-every", type=int, default=0, help="print energy, temperature and solver iterations every N steps"
    )


OUTPUTS = ("md.traj", "md_log.csv", "report.json")


def run(args: argparse.Namespace) -> int:
    from fairchem_deq.outputs import staged_outputs
    from fairchem_deq.simulate.md import run_md
    from fairchem_deq.simulate.stability import BondReference

    bond_reference = BondReference.from_file(args.bond_reference) if args.bond_reference else None
    with staged_outputs(args.out, OUTPUTS, overwrite=args.overwrite) as out:
        calc, atoms = load_calculator_and_structure(
            args, propagation=args.propagation, propagation_guard=args.propagation_guard
        )
        report = run_md(
            atoms,
            calc,
            ensemble=args.ensemble,
            timestep_fs=args.timestep,
            steps=args.steps,
            temperature_K=args.temperature,
            friction_per_fs=args.friction,
            seed=args.seed,
            trajectory=out / "md.traj",
            log=out / "md_log.csv",
            max_force=args.max_force,
            min_distance=args.min_distance,
            progress=not args.no_progress,
            max_bond_stretch=args.max_bond_stretch,
            bond_reference=bond_reference,
            max_bond_deviation=args.max_bond_deviation,
            on_step=_printer(args.print_every),
        )
        summary = report.to_dict()
        summary["propagation"] = args.propagation
        if args.propagation:
            summary["propagation_fallbacks"] = calc.propagation_fallbacks
        final = Path(args.out).absolute()
        summary["trajectory"], summary["log"] = str(final / "md.traj"), str(final / "md_log.csv")
        write_report(out, summary)
    print(json.dumps(summary, indent=2))
    return 0


def _printer(every: int):
    """The MD step callback of --print-every N: prints every N-th step as it is computed."""
    if not every:
        return None

    def print_row(row: dict) -> None:
        if row["step"] % every == 0:
            print(
                f"step {row['step']:6d}  Etot {row['etot_eV']:.6f} eV  T {row['temperature_K']:7.1f} K  "
                f"solver iterations {row['solver_iterations']}",
                flush=True,
            )

    return print_row


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq md ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("md", argv)


if __name__ == "__main__":
    sys.exit(main())
