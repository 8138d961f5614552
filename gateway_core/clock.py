"""Time as integers.

Every instant in the core is an integer count of nanoseconds on a monotonic clock whose origin the caller
chooses (the IO layer reads the monotonic clock in nanoseconds, the simulator starts at 0). Durations are
integers of the same unit. Integers keep simulated traces byte-identical across runs and platforms;
floats drift. See ``docs/decisions/0001-time-as-integer-nanoseconds.md``.

Wall-clock time (UTC, needed for the portal's expiry timestamps) is passed in separately as integer
seconds or nanoseconds since the Unix epoch; the core never reads a clock of either kind.
"""

from __future__ import annotations

from typing import NewType

Instant = NewType("Instant", int)
"""Monotonic time in integer nanoseconds."""

Duration = int
"""A length of time in integer nanoseconds."""

NANOS_PER_MICRO = 1_000
NANOS_PER_MILLI = 1_000_000
NANOS_PER_SEC = 1_000_000_000


def secs(n: int) -> Duration:
    """``n`` seconds as a duration in nanoseconds."""
    return n * NANOS_PER_SEC


def millis(n: int) -> Duration:
    """``n`` milliseconds as a duration in nanoseconds."""
    return n * NANOS_PER_MILLI


def micros(n: int) -> Duration:
    """``n`` microseconds as a duration in nanoseconds."""
    return n * NANOS_PER_MICRO


def instant(ns: int) -> Instant:
    """Wrap an integer nanosecond count as an :data:`Instant`."""
    return Instant(ns)


def add(t: Instant, d: Duration) -> Instant:
    """``t + d`` as an :data:`Instant`."""
    return Instant(t + d)


def fmt(t: int) -> str:
    """Render a nanosecond count as seconds with millisecond precision, e.g. ``12.345s``."""
    sign = "-" if t < 0 else ""
    t = abs(t)
    return f"{sign}{t // NANOS_PER_SEC}.{(t % NANOS_PER_SEC) // NANOS_PER_MILLI:03d}s"
