import sys

from gateway_io.cli import main

sys.exit(main())
