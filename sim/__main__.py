"""``python -m sim``: the simulator CLI (same as ``firezone-sim``)."""

import sys

from sim.cli import main

sys.exit(main())
