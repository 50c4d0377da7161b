"""`python -m fairchem_deq.cli ...` is `fairchem-deq ...`."""

import sys

from fairchem_deq.cli.main import main

sys.exit(main())
