"""Summarise ``mutmut results --all true`` (saved by ``make mutation`` in ``build/mutation/<group>.txt``).

Prints the count per status and the share of mutants detected among those the tests reach. Detected:
``killed`` (a test failed), ``timeout`` (the tests ran far longer than without the mutant: an endless
loop), ``segfault``. Not reached: ``no tests`` (no selected test runs the function), ``not checked`` (the
run was stopped before it), ``skipped``. Usage: ``python scripts/mutation_score.py [FILE ...]``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

DETECTED = ("killed", "timeout", "segfault")
NOT_REACHED = ("no tests", "not checked", "skipped")


def counts(path: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            out[status.strip()] += 1
    return out


def report(path: str) -> float | None:
    """Print the counts of one results file; returns the detected share of reached mutants (percent)."""
    c = counts(path)
    print(path)
    for status, n in sorted(c.items()):
        print(f"{status:>14}: {n}")
    reached = sum(n for s, n in c.items() if s not in NOT_REACHED)
    detected = sum(c[s] for s in DETECTED)
    if not reached:
        return None
    share = 100 * detected / reached
    print(f"detected {detected} of {reached} reached mutants: {share:.1f} % ({sum(c.values())} in all)")
    return share


def main(*paths: str) -> int:
    for path in paths or ("build/mutation/policy.txt", "build/mutation/wire-dns.txt"):
        if Path(path).exists():
            report(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
