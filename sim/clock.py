"""The simulator's virtual clock.

Theory of operation: one :class:`VirtualClock` per world. It holds the monotonic ``now`` as integer
nanoseconds (an :data:`~gateway_core.clock.Instant`, starting at 0) and moves only forward, only when the
event loop says so (:meth:`advance_to`). The wall clock (UTC, needed later for portal expiry timestamps and
for pcap timestamps) is a fixed epoch plus ``now``, so both clocks advance in step and nothing in a run
ever reads the host's real time.
"""

from __future__ import annotations

from gateway_core.clock import Duration, Instant
from gateway_core.errors import UsageError

DEFAULT_EPOCH_UNIX_NS = 1_762_214_400 * 1_000_000_000
"""Wall-clock time at ``now == 0``: 2025-11-04T00:00:00Z, the date of the Firezone reference commit.

A fixed value (instead of the real time, which Firezone's FluxCapacitor uses) keeps traces and pcap files
byte-identical between runs."""


class VirtualClock:
    """Monotonic virtual time in integer nanoseconds, plus a wall clock that advances in step."""

    __slots__ = ("_now", "epoch_unix_ns")

    def __init__(self, start: int = 0, epoch_unix_ns: int = DEFAULT_EPOCH_UNIX_NS) -> None:
        if start < 0:
            raise UsageError("a virtual clock starts at a non-negative instant")
        self._now = Instant(start)
        self.epoch_unix_ns = epoch_unix_ns

    @property
    def now(self) -> Instant:
        """The current virtual instant (ns)."""
        return self._now

    def advance_to(self, t: Instant) -> None:
        """Move to ``t``; moving backwards is a :class:`UsageError` (R2)."""
        if t < self._now:
            raise UsageError(f"virtual time cannot go backwards ({t} < {self._now})")
        self._now = t

    def advance_by(self, d: Duration) -> Instant:
        """Move forward by ``d`` ns (``d >= 0``) and return the new instant."""
        if d < 0:
            raise UsageError(f"cannot advance by a negative duration ({d})")
        self._now = Instant(self._now + d)
        return self._now

    def unix_ns(self, t: Instant | None = None) -> int:
        """Wall-clock nanoseconds since the Unix epoch at instant ``t`` (default: now)."""
        return self.epoch_unix_ns + (self._now if t is None else t)
