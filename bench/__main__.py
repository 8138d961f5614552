"""Run every benchmark module in ``bench/`` (files named ``bench_*.py``), each printing its own ratios."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> int:
    here = Path(__file__).parent
    only = set(sys.argv[1:])
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    for name in names:
        if only and name not in only:
            continue
        print(f"== {name}")
        mod = importlib.import_module(f"bench.{name}")
        mod.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
