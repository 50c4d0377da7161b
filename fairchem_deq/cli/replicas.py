"""N replicas of one structure at temperature T: batched Langevin MD in torch-sim, each replica reusing its own fixed point."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fairchem_deq.cli.common import (
    add_model_and_structure_arguments,
    add_propagation_arguments,
    load_structure,
    write_report,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_structure_arguments(parser)
    add_propagation_arguments(parser)
    parser.add_argument("--replicas", type=int, default=8, help="copies of the structure integrated together")
    parser.add_argument("--temperature", type=float, default=300.0, help="K, initial velocities and the Langevin bath")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument(
        "--seed", type=int, default=0, help="replica i's initial velocities use seed + i; the thermostat's noise seed"
    )
    parser.add_argument("--state-every", type=int, default=1, help="write the positions every N steps (default 1)")


def trajectory_names(replicas: int) -> list[str]:
    """The torch-sim (HDF5) trajectory file of each replica."""
    return [f"replica_{i:03d}.h5" for i in range(replicas)]


def run(args: argparse.Namespace) -> int:
    from fairchem_deq.command import UserError
    from fairchem_deq.outputs import staged_outputs
    from fairchem_deq.simulate.replicas import run_replicas

    if args.replicas < 1 or args.steps < 0 or args.state_every < 1:
        raise UserError("--replicas and --state-every must be >= 1 and --steps >= 0")
    names = trajectory_names(args.replicas)
    with staged_outputs(args.out, [*names, "report.json"], overwrite=args.overwrite) as out:
        atoms = load_structure(args)
        from fairchem_deq.simulate.torchsim import DEQTorchSimModel

        model = DEQTorchSimModel(
            args.checkpoint,
            device="cuda" if args.gpu else "cpu",
            reuse=not args.no_reuse,
            warm_start=args.warm_start,
            propagation=args.propagation,
            propagation_guard=args.propagation_guard,
        )
        report = run_replicas(
            atoms,
            model,
            replicas=args.replicas,
            temperature_K=args.temperature,
            steps=args.steps,
            timestep_fs=args.timestep,
            friction_per_fs=args.friction,
            seed=args.seed,
            trajectories=[out / name for name in names],
            state_frequency=args.state_every,
        )
        final = Path(args.out).absolute()
        summary = {
            "checkpoint": str(Path(args.checkpoint).absolute()),
            "structure": str(args.structure),
            "frame": args.frame,
            "propagation": args.propagation,
            **report.to_dict(),
            "trajectories": [str(final / name) for name in names],
        }
        write_report(out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "evaluations_per_step"}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq replicas ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("replicas", argv)


if __name__ == "__main__":
    sys.exit(main())
