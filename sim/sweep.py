"""``firezone-sim sweep --seeds A..B``: seeded stateful programs fanned out over the cores by pytest-xdist.

Theory of operation: :func:`sweep` starts ``pytest -n WORKERS`` on *this file* with the seed range and the
step count in the environment (``FZ_SWEEP_SEEDS``, ``FZ_SWEEP_STEPS``); :func:`pytest_generate_tests`
turns the range into one test item per seed, so xdist's own scheduler (``--dist load``) hands seeds to
the workers; each item runs :func:`sim.stateful.run_seeded` (the world and every step drawn from the seed,
the same program as ``firezone-sim replay --seed N --steps K``). pytest writes a JUnit XML report;
:func:`failures` reads the failing seeds and the first line of each failure from it, and the sweep prints
one replay command per failing seed. The exit status is 0 when every seed passed, 1 when one failed, and
pytest's own status when the run itself broke (e.g. 2 for an interrupted run).

No scheduler of our own: pytest-xdist is the engine; this module only names the items and reads the
report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SEEDS_ENV = "FZ_SWEEP_SEEDS"
STEPS_ENV = "FZ_SWEEP_STEPS"
ROOT = Path(__file__).resolve().parents[1]


def _seeds() -> range:
    text = os.environ.get(SEEDS_ENV, "")
    first, _, last = text.partition("..")
    return range(int(first), int(last) + 1) if text else range(0)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sweep_seed" in metafunc.fixturenames:
        seeds = list(_seeds())
        metafunc.parametrize("sweep_seed", seeds, ids=[str(s) for s in seeds])


def test_seed(sweep_seed: int) -> None:
    """One seeded program: raises (fails) on any invariant or contract violation."""
    from sim.stateful import run_seeded

    steps = int(os.environ.get(STEPS_ENV, "15"))
    h = run_seeded(sweep_seed, steps)
    assert h.steps_done == steps


def replay_command(seed: int, steps: int) -> str:
    return f"firezone-sim replay --seed {seed} --steps {steps} --trace seed-{seed}.jsonl"


def failures(report: Path) -> list[tuple[int, str]]:
    """``(seed, first line of the failure)`` for every failed or erroring item of a JUnit XML report."""
    out: list[tuple[int, str]] = []
    for case in ET.parse(report).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is None:
            continue
        name = case.get("name", "")
        seed = name[name.index("[") + 1 : -1] if "[" in name else ""
        if not seed.isdigit():
            continue
        message = (bad.get("message") or bad.text or "").strip().splitlines()
        out.append((int(seed), message[0] if message else "failed"))
    return sorted(out)


def sweep(seeds: range, steps: int, workers: str = "auto") -> int:
    """Run the seeds over ``workers`` pytest-xdist workers; print the failing seeds with replay commands."""
    env = {**os.environ, SEEDS_ENV: f"{seeds.start}..{seeds.stop - 1}", STEPS_ENV: str(steps)}
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    with tempfile.TemporaryDirectory(prefix="fz-sweep-") as tmp:
        report = Path(tmp) / "report.xml"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).resolve()),
            "-n",
            workers,
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            f"--rootdir={tmp}",
            f"--junitxml={report}",
            "--timeout=3600",
        ]
        print(f"sweep: seeds {seeds.start}..{seeds.stop - 1} ({len(seeds)} programs of {steps} steps)")
        sys.stdout.flush()
        with subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # pytest's progress, as it comes
                print(line, end="", flush=True)
        rc = proc.returncode
        failed = failures(report) if report.exists() else []
    if failed:
        print(f"\nsweep: {len(failed)} of {len(seeds)} seeds failed:")
        for seed, message in failed:
            print(f"  seed {seed}: {message}")
            print(f"    replay: {replay_command(seed, steps)}")
        return 1
    if rc != 0:
        print(f"sweep: pytest exited with status {rc} and no failing seed in its report", file=sys.stderr)
        return rc
    print(f"sweep: all {len(seeds)} seeds passed")
    return 0
