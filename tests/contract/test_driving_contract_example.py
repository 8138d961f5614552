"""The runnable example of docs/design/driving-contract.md works and follows the contract."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gateway_core import Instant, UsageError, secs

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "design" / "driving_contract_example.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("driving_contract_example", EXAMPLE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_probes_once_a_second_and_counts_garbage() -> None:
    p = load().drive(Instant(secs(10)))
    assert p.replies == 11  # probes at 0, 1, ..., 10 s
    assert p.stats.snapshot() == {"drop.datagram_unclassified": 11}


def test_example_rejects_time_going_backwards() -> None:
    mod = load()
    p = mod.drive(Instant(secs(2)))
    with pytest.raises(UsageError):
        p.handle_timeout(Instant(0))


def test_example_deadline_is_pure() -> None:
    p = load().drive(Instant(secs(3)))
    assert p.poll_timeout() == p.poll_timeout()
    assert p.poll_command() is None


def test_example_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "replies=11 drops={'drop.datagram_unclassified': 11}"
