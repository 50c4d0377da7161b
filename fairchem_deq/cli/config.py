"""Show a config as fairchem loads it: includes merged, overrides applied.

    fairchem-deq config show configs/md17/ethanol/deq1.yml [--optim.batch_size=4] [--mode train]

prints, as YAML on stdout, the config that `fairchem-deq --config-yml <yml> [same arguments]`
would run (fairchem's own `build_config`, so also the run keys it adds: mode, seed, cpu, ...).
A missing file, a missing or conflicting include, or a malformed override is an error (rc 2).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print the merged config as YAML",
        description="Print the merged config as YAML (see `fairchem-deq config -h`).",
    )
    show.add_argument("config_yml", metavar="YML", help="fairchem config file")
    show.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="after YML: overrides such as --optim.batch_size=4 and fairchem flags such as --mode train",
    )


def run(args: argparse.Namespace) -> int:
    from fairchem_deq.config.show import config_yaml, merged_config

    sys.stdout.write(config_yaml(merged_config(args.config_yml, args.args)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`fairchem-deq config ARGS` (the dispatcher's parsing and exit codes)."""
    from fairchem_deq.cli.main import run_subcommand

    return run_subcommand("config", argv)


if __name__ == "__main__":
    sys.exit(main())
