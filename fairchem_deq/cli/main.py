"""`fairchem-deq`: fairchem's own CLI with fairchem_deq imported, plus our subcommands.

Anything that is not one of our subcommands goes to fairchem's CLI unchanged, so
`fairchem-deq --mode train --config-yml ...` behaves like `fairchem ...` but short registry
names of fairchem_deq classes resolve too, and the config's DEQ blocks are checked before
fairchem creates run folders. Subcommands are thin wrappers over library functions; each
module in SUBCOMMANDS exposes `add_arguments(parser)` and `run(args)`, and all follow one
convention for errors and signals (fairchem_deq.command: rc 2 with a one-line message for
user errors, 130 for Ctrl-C, 143 for SIGTERM, nothing half-written).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, str] = {
    "config": "fairchem_deq.cli.config",
    "convert": "fairchem_deq.cli.convert",
    "md": "fairchem_deq.cli.md",
    "relax": "fairchem_deq.cli.relax",
    "replicas": "fairchem_deq.cli.replicas",
    "submission": "fairchem_deq.cli.leaderboard",
    "sweep": "fairchem_deq.cli.sweep",
}


def _subcommand_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairchem-deq",
        description=(
            "DEQuiformer for fairchem v1. Subcommands: "
            + ", ".join(SUBCOMMANDS)
            + ". Any other arguments are passed to fairchem's CLI "
            "(e.g. fairchem-deq --mode train --config-yml configs/md17/ethanol/deq1.yml --cpu)."
        ),
    )
    subparsers = parser.add_subparsers(dest="subcommand")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        from fairchem_deq.command import run_command

        # start-up (imports, argument parsing) included: Ctrl-C there is rc 130 too
        return run_command(argv[0], lambda: _run_subcommand(argv))
    import fairchem_deq  # noqa: F401  (registers our classes under their short names)

    if argv and argv[0] in ("-h", "--help"):
        _subcommand_parser().print_help()
        print("\nfairchem's CLI options:\n")
    return _fairchem(argv)


def run_subcommand(name: str, argv: list[str] | None = None) -> int:
    """`fairchem-deq <name> ARGS`, for a subcommand module run on its own (`python -m
    fairchem_deq.cli.<module>`, tests): the same parsing and exit codes as the dispatcher."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


def _run_subcommand(argv: list[str]) -> int:
    import fairchem_deq  # noqa: F401

    args = _subcommand_parser().parse_args(argv)
    return int(args._run(args) or 0)


def _fairchem(argv: list[str]) -> int:
    """fairchem's own CLI, after checking the DEQ blocks of the config (one line, rc 2, and
    no run folders created, when they are invalid)."""
    from fairchem.core._cli import main as fairchem_main
    from fairchem.core.common.flags import flags

    from fairchem_deq.command import RC_INTERRUPTED, RC_TERMINATED, Terminated, report_error, sigterm_as_interrupt
    from fairchem_deq.config.check import DEQConfigError, check_deq_blocks

    sys.argv = ["fairchem", *argv]
    args, override_args = flags.get_parser().parse_known_args(argv)
    if getattr(args, "config_yml", None) is not None:
        try:
            check_deq_blocks(args, override_args)
        except DEQConfigError as exc:
            report_error(args.mode or "", str(exc))
            return 2
    try:
        with sigterm_as_interrupt():
            fairchem_main(args, override_args)
    except Terminated:
        print("fairchem-deq: terminated (SIGTERM)", file=sys.stderr)
        return RC_TERMINATED
    except KeyboardInterrupt:
        print("fairchem-deq: interrupted", file=sys.stderr)
        return RC_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
