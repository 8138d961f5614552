"""The drop-reason coverage plugin sees drops counted through ``Stats``."""

from __future__ import annotations

from gateway_core.errors import DropReason
from gateway_core.stats import Stats
from tests import drop_coverage


def test_plugin_records_drops() -> None:
    Stats().drop(DropReason.QUEUE_FULL)
    assert DropReason.QUEUE_FULL.value not in drop_coverage.missing_reasons()


def test_plugin_keeps_counting() -> None:
    s = Stats()
    s.drop(DropReason.UNROUTABLE, 3)
    assert s.drops[DropReason.UNROUTABLE] == 3
