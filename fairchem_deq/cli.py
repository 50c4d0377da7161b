"""`fairchem-deq`: fairchem's own CLI with fairchem_deq imported, plus our subcommands.

Anything that is not one of our subcommands goes to fairchem's CLI unchanged, so
`fairchem-deq --mode train --config-yml ...` behaves like `fairchem ...` but short registry
names of fairchem_deq classes resolve too. Subcommands are thin wrappers over library
functions; each module in SUBCOMMANDS exposes `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, str] = {
    "convert": "fairchem_deq.data.convert_cli",
    "md": "fairchem_deq.simulate.md_cli",
    "relax": "fairchem_deq.simulate.relax_cli",
    "submission": "fairchem_deq.leaderboard_cli",
    "sweep": "fairchem_deq.launch.sweep",
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
    import fairchem_deq  # noqa: F401  (registers our classes under their short names)

    if argv and argv[0] in SUBCOMMANDS:
        args = _subcommand_parser().parse_args(argv)
        return int(args._run(args) or 0)
    if argv and argv[0] in ("-h", "--help"):
        _subcommand_parser().print_help()
        print("\nfairchem's CLI options:\n")
    from fairchem.core._cli import main as fairchem_main

    sys.argv = ["fairchem", *argv]
    fairchem_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
