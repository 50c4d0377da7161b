"""Arguments shared by `fairchem-deq md`, `relax` and `replicas`, and their output folder.

All write named files into --out through `staged_outputs`: all appear at the end or none
(error, Ctrl-C, SIGTERM), and a previous run's files are not replaced without --overwrite.
"""

from __future__ import annotations

import argparse

from fairchem_deq.reuse.predictors import PREDICTORS


def add_model_and_structure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="DEQuiformer checkpoint (checkpoint.pt or best_checkpoint.pt)"
    )
    parser.add_argument(
        "--structure", required=True, help="starting structure: sGDML .npz (MD17/MD22), extxyz or ASE .traj"
    )
    parser.add_argument("--frame", type=int, default=0, help="frame of --structure to start from (default 0)")
    parser.add_argument("--no-reuse", action="store_true", help="solve every step from zero (no warm start)")
    parser.add_argument(
        "--warm-start",
        choices=list(PREDICTORS),
        default=None,
        help="next fixed point: copy of the last step's (last) or extrapolated "
        "from the last 2, 3 or 4 steps (linear, quadratic, aspc); default last (linear with --propagation two_step)",
    )
    parser.add_argument("--gpu", action="store_true", help="run on the GPU (default CPU)")
    parser.add_argument("--out", required=True, help="output folder (trajectory, log, report.json)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of a previous run in --out (default: refuse)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="show fairchem's INFO logging")


def add_propagation_arguments(parser: argparse.ArgumentParser) -> None:
    from fairchem_deq.solve.propagation import PROPAGATIONS

    parser.add_argument(
        "--propagation",
        choices=sorted(PROPAGATIONS),
        default=None,
        help="warm steps take a fixed number of evaluations of f (one_step: 1, two_step: 2) instead of a "
        "converged solve; default: converged solve every step",
    )
    parser.add_argument(
        "--propagation-guard",
        type=float,
        default=0.05,
        help="with --propagation: a step whose error estimate exceeds this falls back to a converged solve",
    )


def load_structure(args):
    """The --frame of --structure (no calculator attached), with fairchem's logging quiet
    unless --verbose (its setup_logging reads LOGLEVEL; it dumps the whole config at INFO)."""
    import os

    if not args.verbose:
        os.environ["LOGLEVEL"] = "WARNING"
    from fairchem_deq.command import UserError
    from fairchem_deq.data.readers import read_frames

    frames = read_frames(args.structure)
    if not -len(frames) <= args.frame < len(frames):
        raise UserError(f"--frame {args.frame} out of range: {args.structure} has {len(frames)} frames")
    atoms = frames[args.frame].copy()
    atoms.calc = None
    return atoms


def load_calculator_and_structure(args, **calculator_options):
    atoms = load_structure(args)
    from fairchem_deq.simulate.calculator import DEQCalculator

    calc = DEQCalculator(
        args.checkpoint, cpu=not args.gpu, reuse=not args.no_reuse, warm_start=args.warm_start, **calculator_options
    )
    return calc, atoms


def write_report(out_dir, report: dict) -> None:
    import json
    from pathlib import Path

    from fairchem_deq.outputs import write_text_atomic

    write_text_atomic(Path(out_dir) / "report.json", json.dumps(report, indent=2))
