"""Every `fairchem-deq` command: thin argparse wrappers over library functions.

`main` (fairchem_deq.cli.main) is the `fairchem-deq` console script: it routes our
subcommands (one module each here, `add_arguments(parser)` + `run(args)`) and passes anything
else to fairchem's own CLI. All commands share fairchem_deq.command's convention for errors,
Ctrl-C and SIGTERM (rc 2, 130, 143).
"""

from fairchem_deq.cli.main import main

__all__ = ["main"]
