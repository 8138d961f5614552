"""``python -m e2e [demo|up]``: see :mod:`e2e.demo`."""

import sys

from e2e.demo import main

sys.exit(main())
