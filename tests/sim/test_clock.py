"""The virtual clock."""

from __future__ import annotations

import pytest

from gateway_core.clock import Instant, millis, secs
from gateway_core.errors import UsageError
from sim.clock import DEFAULT_EPOCH_UNIX_NS, VirtualClock


def test_starts_at_zero_and_moves_forward_only() -> None:
    c = VirtualClock()
    assert c.now == 0
    c.advance_to(Instant(millis(5)))
    assert c.now == millis(5)
    c.advance_to(Instant(millis(5)))  # standing still is fine
    assert c.advance_by(secs(1)) == secs(1) + millis(5)
    with pytest.raises(UsageError):
        c.advance_to(Instant(millis(4)))
    with pytest.raises(UsageError):
        c.advance_by(-1)
    assert c.now == secs(1) + millis(5)


def test_integer_nanoseconds_no_drift() -> None:
    c = VirtualClock()
    for _ in range(10):
        c.advance_by(millis(100))
    assert c.now == secs(1)
    assert isinstance(c.now, int)


def test_wall_clock_advances_in_step() -> None:
    c = VirtualClock(start=7, epoch_unix_ns=1_000)
    assert c.unix_ns() == 1_007
    c.advance_by(3)
    assert c.unix_ns() == 1_010
    assert c.unix_ns(Instant(0)) == 1_000
    assert VirtualClock().unix_ns() == DEFAULT_EPOCH_UNIX_NS


def test_negative_start_refused() -> None:
    with pytest.raises(UsageError):
        VirtualClock(start=-1)
