"""``make mutation``: mutation testing of the gateway core, in two groups, each with its own tests.

- ``wire-dns`` (first): ``gateway_core/wire`` and ``gateway_core/dns`` mutated, killed by the unit and
  contract tests (``tests/unit``, ``tests/contract``: ~900 items, ~20 s of CPU). The simulator and IO tests
  are left out for time, and the system tests run the daemon in other processes, which mutmut's trampolines
  cannot see: a share reached with these tests is a lower bound of the whole suite's.
- ``policy``: ``gateway_core/policy`` mutated, killed by the stateful test alone (its main test with the
  ``mutation`` profile: one item per program, the regression, edge and seeded programs; the same
  configuration is in ``setup.cfg`` [mutmut], so ``mutmut`` run at the top of the tree does this group).

Each group runs in a copy of the tree under ``build/mutation/<group>`` with the group's ``setup.cfg`` (mutmut
reads its configuration from the working directory) in two steps: :mod:`scripts.mutation_prepare` (the
tests once under coverage with a context per item, both cores; mutmut's mutants of the covered lines, less
those equivalent by construction; for every mutant the items that execute its lines) and
:mod:`scripts.mutation_runner` (one pytest session forks a child per mutant, ``--children`` at a time;
decision 0124). Logging calls and exception messages are not mutated (their text is no behaviour:
``do_not_mutate_patterns``). Each group writes ``build/mutation/<group>.txt`` (``mutmut results --all
true``) and :mod:`scripts.mutation_score` prints its counts. Usage: ``python scripts/mutation.py [GROUP
...] [--children N] [--budget SECONDS] [--only PATTERN ...]`` (every group by default; ``--budget``: the
whole run's seconds, shared by :data:`SHARE`; ``--only``: judge the matching mutants in
``build/mutation/<group>-only`` and print each verdict).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = (
    "gateway_core",
    "gateway_io",
    "sim",
    "devportal",
    "devpeers",
    "devio",
    "bench",
    "e2e",
    "scripts",
    "docs",
    "packaging",
    "tests",
    "pyproject.toml",
    "README.md",
    "Makefile",
)
"""What a group's copy of the tree holds (mutmut copies the sources and the tests into its ``mutants``)."""

COMMON = r"""[mutmut]
source_paths = gateway_core
also_copy =
    conftest.py
    sim
    devportal
    devpeers
    devio
    bench
    e2e
    gateway_io
    scripts
    docs
    packaging
    README.md
    Makefile
pytest_add_cli_args =
    -p
    no:cacheprovider
    -x
    -q
mutate_only_covered_lines = true
do_not_mutate_patterns =
    ^\s*log\.(debug|info|warning|error|exception)\(
    ^\s*logger\.(debug|info|warning|error|exception)\(
    ^\s*raise (DecodeError|UnsupportedIcmpError|PatternError|UsageError|ValueError)\(
"""
GROUPS: dict[str, str] = {
    "wire-dns": COMMON
    + """only_mutate =
    gateway_core/wire/*
    gateway_core/dns/*
pytest_add_cli_args_test_selection =
    tests/unit
    tests/contract
""",
    "policy": COMMON
    + """only_mutate =
    gateway_core/policy/*
pytest_add_cli_args_test_selection =
    tests/sim/test_stateful.py::test_gateway_world_against_the_reference_model
""",
}


SHARE = {"wire-dns": 3, "policy": 2}
"""How ``--budget`` (the whole run's) is split: each group stops starting mutants at its cumulative share,
so a group may use what the groups before it left (measured on this machine at load ~3: wire-dns 815 s,
policy 555 s, both complete). A group cut short has checked a pseudo-random, unbiased sample of its mutants
(``scripts/mutation_runner.py``)."""

CONFTEST = '''"""Written by scripts/mutation.py into a copy of the tree."""

from hypothesis import Phase, settings

# Under a mutant every test runs through mutmut's trampolines on a loaded machine: no deadline (a slow
# example is no failure), the same examples every run (a mutant's verdict must not depend on luck), no
# example database (the copies are thrown away), no shrinking (a killed mutant needs no minimal example:
# shrinking took seconds per killed mutant).
settings.register_profile(
    "mutation", deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate]
)
settings.load_profile("mutation")
'''
"""The copy's root ``conftest.py``: Hypothesis' settings for the mutation check."""


def step(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Run one step of a group; stopped from outside (SIGTERM, Ctrl-C), it is asked to stop too."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def run_group(group: str, children: int, deadline: float, mutmut: str, only: list[str]) -> int:
    """One group: copy the tree, prepare (coverage, mutants, selection), judge, write the results. With
    ``only`` (mutant name patterns): judge those in ``build/mutation/<group>-only`` and print the verdicts
    (the group's results stay as they are)."""
    work = ROOT / "build" / "mutation" / (f"{group}-only" if only else group)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, work / name)
    (work / "setup.cfg").write_text(GROUPS[group], encoding="utf-8")
    (work / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    env = dict(os.environ, FZ_STATEFUL_PROFILE="mutation", FZ_MUTATION_GROUP=group, PYTHONPATH=str(work))
    started = time.monotonic()
    python = sys.executable
    print(f"mutation group {group}: prepare", flush=True)
    prep = step([python, "scripts/mutation_prepare.py", "--children", str(children)], work, env)
    if prep != 0:
        print(f"mutation group {group}: prepare failed ({prep})", flush=True)
        return prep
    left = max(1, int(deadline - time.monotonic()))
    print(f"mutation group {group}: judging on {children} children ({left} s of budget left)", flush=True)
    run = step(
        [python, "scripts/mutation_runner.py", "--children", str(children), "--budget", str(left), *only],
        work,
        env,
    )
    if only:
        return run
    results = subprocess.run(
        [mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    out = ROOT / "build" / "mutation" / f"{group}.txt"
    out.write_text(results.stdout, encoding="utf-8")
    print(f"mutation group {group}: {time.monotonic() - started:.0f} s, results in {out.name}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "mutation_score.py"), str(out)], check=False)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # No ``choices``: Python 3.11's argparse rejects an empty list against them (checked below instead).
    ap.add_argument("groups", nargs="*", help=f"of {', '.join(GROUPS)} (default: every group)")
    ap.add_argument("--children", type=int, default=os.cpu_count() or 2)
    ap.add_argument(
        "--budget", type=int, default=1740, help="seconds for the whole run; each group gets its SHARE of it"
    )
    ap.add_argument("--only", action="append", default=[], help="judge only mutants matching (repeatable)")
    args = ap.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}: choose from {list(GROUPS)}")
    failed = 0
    groups = args.groups or list(GROUPS)
    start = time.monotonic()
    share = 0.0
    for group in groups:
        # A group may use what the groups before it left, up to its cumulative share of the budget.
        share += SHARE[group] / sum(SHARE[g] for g in groups)
        failed |= run_group(group, args.children, start + share * args.budget, mutmut, args.only) != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
