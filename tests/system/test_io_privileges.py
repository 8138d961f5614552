"""The start-up permission check, in processes whose capabilities ``setpriv`` changes (root required;
CI runs as root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway_io.privileges import effective_capabilities, has_necessary_permissions, has_net_admin

pytestmark = [pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]
PROBE = "from gateway_io.privileges import *; print(has_net_admin(), has_necessary_permissions())"


def probe(*setpriv: str) -> str:
    argv = ["setpriv", *setpriv, sys.executable, "-c", PROBE]
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def test_parse_status() -> None:
    assert effective_capabilities("Name:\tx\nCapEff:\t0000000000001000\n") == 1 << 12
    assert has_net_admin("CapEff:\t0000000000001000\n")
    assert not has_net_admin("CapEff:\t0000000000000fff\n")
    assert not has_net_admin("CapInh:\t0000000000001000\n")  # not the effective set
    assert effective_capabilities("CapEff:\tzz\n") == 0


def test_root_passes() -> None:
    assert has_necessary_permissions()


def test_capabilities_dropped_or_only_net_admin() -> None:
    # Stays root (so the process can still read the repository wherever CI checks it out) and changes
    # only the capability sets: root without capabilities has no CAP_NET_ADMIN but passes by its UID.
    assert probe("--inh-caps=-all", "--bounding-set=-all") == "False True"
    assert probe("--inh-caps=-all", "--bounding-set=-all,+net_admin") == "True True"
    assert probe("--inh-caps=-all", "--bounding-set=-all,+net_raw") == "False True"
