"""``firezone-sim sweep``: seeds over the cores with pytest-xdist, failing seeds with replay commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main, parse_seeds
from sim.sweep import failures, replay_command


def test_seed_ranges() -> None:
    assert parse_seeds("3..6") == range(3, 7)
    assert parse_seeds("5") == range(5, 6)
    for bad in ("6..3", "a..b", "-1..2", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_seeds(bad)


def test_failures_are_read_from_a_real_junit_report(tmp_path: Path) -> None:
    """The report of a real pytest-xdist run with items named like the sweep's: the failing seeds, each
    with the first line of its failure, and nothing for the passing ones."""
    (tmp_path / "test_fake.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('sweep_seed', [1, 2, 3], ids=['1', '2', '3'])\n"
        "def test_seed(sweep_seed):\n"
        "    assert sweep_seed != 2, 'invariant broken at seed 2'\n",
        encoding="ascii",
    )
    report = tmp_path / "r.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-o", "addopts=",
         f"--rootdir={tmp_path}", f"--junitxml={report}", str(tmp_path / "test_fake.py")],
        cwd=tmp_path, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    found = failures(report)
    assert [seed for seed, _ in found] == [2]
    assert "invariant broken at seed 2" in found[0][1]
    assert replay_command(2, 15) == "firezone-sim replay --seed 2 --steps 15 --trace seed-2.jsonl"


def test_sweep_runs_seeds_on_two_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--seeds", "3..4", "--steps", "3", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "sweep: seeds 3..4 (2 programs of 3 steps)" in out
    assert "sweep: all 2 seeds passed" in out
