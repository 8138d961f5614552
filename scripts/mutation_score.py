"""Summarise ``mutmut results --all true`` (saved by ``make mutation`` in mutation-results.txt).

Prints the count per status and the share of mutants killed among those the tests reach (mutants in
code no selected test runs are reported apart: no test can kill them).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def main(path: str = "mutation-results.txt") -> int:
    counts: Counter[str] = Counter()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            counts[status.strip()] += 1
    reached = sum(n for s, n in counts.items() if s not in ("no tests", "not checked", "skipped"))
    killed = counts["killed"]
    for status, n in sorted(counts.items()):
        print(f"{status:>12}: {n}")
    if reached:
        print(f"killed {killed} of {reached} reached mutants: {100 * killed / reached:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
