"""TURN channel bookkeeping for one allocation (snownet's ``ChannelBindings`` in
``rust/connlib/snownet/src/allocation.rs``).

Theory of operation: a channel record is ``{peer, bound, bound_at, last_received}``; ``age = now -
bound_at``. A CHANNEL-BIND creates or rewrites the record unbound; its success marks it bound and restarts
its age. A channel is *connected* while bound and younger than 10 min, *in flight* while younger than
10 min (bound or not; data is sent optimistically), and *bound to* its peer for 15 min (its number is
reused for a new bind to the same peer). A number is reused for another peer only after 15 min without
any data received since it was bound (RFC 8656's 5 min quarantine). Channels with data received since
their last bind are refreshed at 5 min. Iteration is in channel-number order (deterministic traces).

A record that can be reused (no data since its bind, 15 min old) behaves exactly as a missing one, so it
is forgotten: every bind and confirmation queues ``(bound_at + 15 min, number, bound_at)`` in time order,
and :meth:`Channels.new_channel` and :meth:`Channels.set_confirmed` first forget the queued records that
have come due and are still idle and unchanged. snownet keeps them until the number comes round again
(up to 4,096 per allocation); here an allocation holds only the records of the last 15 minutes' binds and
of channels in use, and the queue holds at most 15 minutes of binds (no timer: it is drained on the
next bind, which is the only thing that needs the room).

The refresh deadlines are kept in a :class:`~gateway_core.contract.TimerHeap` (decision 0140): a channel
enters it when it first receives data after a bind (one check per received datagram, no rescheduling)
and leaves it when it is bound again or forgotten, so the allocation's ``poll_timeout`` does not walk its
(up to 4096) channels.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.contract import Deadline, TimerHeap, earliest
from gateway_core.wire.turn import CHANNEL_MAX, CHANNEL_MIN

CHANNEL_LIFETIME = secs(600)
"""RFC 8656 §12: a channel binding lasts 10 min (snownet and the Firezone relay: 600 s)."""
CHANNEL_REBIND_QUARANTINE = secs(300)
"""RFC 8656 §12: 5 more minutes before a number or peer may be rebound to something else."""
CHANNEL_REFRESH_AFTER = secs(300)
"""snownet refreshes channels that received data once they are 5 min old (half the lifetime)."""
_REUSABLE_AFTER = CHANNEL_LIFETIME + CHANNEL_REBIND_QUARANTINE
"""A number is free for another peer, and an idle record forgettable, this long after its bind."""


@dataclass(slots=True)
class _Channel:
    peer: SocketAddr
    bound: bool
    bound_at: Instant
    last_received: Instant

    def age(self, now: Instant) -> int:
        return now - self.bound_at

    def no_activity(self) -> bool:
        return self.last_received == self.bound_at


class Channels:
    """Channel numbers of one allocation; see the module docstring."""

    __slots__ = ("_by_number", "_by_peer", "_due", "_full_until", "_next", "_reusable")

    def __init__(self) -> None:
        self._by_number: dict[int, _Channel] = {}
        self._by_peer: dict[SocketAddr, set[int]] = {}
        """Peer -> its channel numbers: finding a peer's channel (every relayed send) walks only those."""
        self._next = CHANNEL_MIN
        self._due: TimerHeap[int] = TimerHeap()
        self._full_until = Instant(0)
        self._reusable: deque[tuple[int, int, int]] = deque()
        """``(reusable at, number, bound_at)`` per bind and confirmation, in time order (module docstring)."""

    def __len__(self) -> int:
        return len(self._by_number)

    def _find(self, peer: SocketAddr, now: Instant, max_age: int, need_bound: bool) -> int | None:
        for n in sorted(self._by_peer.get(peer, ())):
            c = self._by_number[n]
            if c.age(now) < max_age and (c.bound or not need_bound):
                return n
        return None

    def _unindex(self, n: int) -> None:
        c = self._by_number.get(n)
        if c is not None:
            same = self._by_peer[c.peer]
            same.discard(n)
            if not same:
                del self._by_peer[c.peer]

    def connected(self, peer: SocketAddr, now: Instant) -> int | None:
        return self._find(peer, now, CHANNEL_LIFETIME, True)

    def inflight(self, peer: SocketAddr, now: Instant) -> int | None:
        return self._find(peer, now, CHANNEL_LIFETIME, False)

    def bound_to(self, peer: SocketAddr, now: Instant) -> int | None:
        return self._find(peer, now, _REUSABLE_AFTER, True)

    def peer_of(self, number: int) -> SocketAddr | None:
        c = self._by_number.get(number)
        return c.peer if c else None

    def _forget_reusable(self, now: Instant) -> None:
        """Forget the records that have become reusable (idle since a bind 15 min ago): they behave as
        missing ones everywhere (:meth:`new_channel` takes either; the lookups skip records that old)."""
        queue = self._reusable
        while queue and queue[0][0] <= now:
            _, n, bound_at = queue.popleft()
            c = self._by_number.get(n)
            if c is not None and c.bound_at == bound_at and c.no_activity():
                self.forget(n)

    def new_channel(self, peer: SocketAddr, now: Instant) -> int | None:
        """A number for a new CHANNEL-BIND to ``peer``, or ``None`` when all 4096 are taken."""
        self._forget_reusable(now)
        existing = self.bound_to(peer, now)
        if existing is not None:
            return existing
        span = CHANNEL_MAX - CHANNEL_MIN + 1
        if len(self._by_number) == span and now < self._full_until:
            return None  # every number taken, none reusable yet: no scan (thousands of peers on one relay)
        reusable_at: int | None = None
        for i in range(span):
            n = CHANNEL_MIN + (self._next - CHANNEL_MIN + i) % span
            c = self._by_number.get(n)
            if c is None or (c.no_activity() and c.age(now) >= _REUSABLE_AFTER):
                self._next = CHANNEL_MIN if n == CHANNEL_MAX else n + 1
                self._unindex(n)
                self._by_number[n] = _Channel(peer, False, now, now)
                self._by_peer.setdefault(peer, set()).add(n)
                self._due.discard(n)
                self._reusable.append((now + _REUSABLE_AFTER, n, now))
                return n
            if c.no_activity():
                at = c.bound_at + _REUSABLE_AFTER
                reusable_at = at if reusable_at is None or at < reusable_at else reusable_at
        # No number is reusable before this: an idle record at its age, a busy one re-bound from now on
        # 15 min after that; a forgotten number shrinks the table, which ends the shortcut.
        soonest = now + _REUSABLE_AFTER
        self._full_until = Instant(soonest if reusable_at is None else min(reusable_at, soonest))
        return None

    def set_confirmed(self, number: int, now: Instant) -> bool:
        self._forget_reusable(now)
        c = self._by_number.get(number)
        if c is None:
            return False
        c.bound = True
        c.bound_at = now
        c.last_received = now
        self._due.discard(number)  # no data since this bind: nothing to refresh until some arrives
        self._reusable.append((now + _REUSABLE_AFTER, number, now))
        return True

    def forget(self, number: int) -> None:
        self._unindex(number)
        self._by_number.pop(number, None)
        self._due.discard(number)

    def clear(self) -> None:
        self._by_number.clear()
        self._by_peer.clear()
        self._due = TimerHeap()
        self._reusable.clear()

    def receive(self, number: int, now: Instant) -> SocketAddr | None:
        """ChannelData arrived on ``number``: its peer if the channel is bound (records the receipt)."""
        c = self._by_number.get(number)
        if c is None or not c.bound:
            return None
        idle = c.last_received == c.bound_at
        c.last_received = now
        if idle and now != c.bound_at:  # the first data since the bind: the refresh deadline appears
            self._due.schedule(number, c.bound_at + CHANNEL_REFRESH_AFTER)
        return c.peer

    def due_for_refresh(self, now: Instant) -> list[tuple[int, SocketAddr]]:
        """The channels that received data and are 5 min old, in number order. They stay due (kept in the
        heap) until a new bind confirms them."""
        out = []
        for n in sorted(self._due.pop_due(now)):
            c = self._by_number.get(n)
            if c is None or c.no_activity():
                continue
            self._due.schedule(n, c.bound_at + CHANNEL_REFRESH_AFTER)
            if c.age(now) >= CHANNEL_REFRESH_AFTER:
                out.append((n, c.peer))
        return out

    def _refresh_deadline(self, n: int, skip: Callable[[int], bool]) -> Deadline | None:
        c = self._by_number.get(n)
        if c is None or c.no_activity() or skip(n):
            return None
        return Deadline(Instant(c.bound_at + CHANNEL_REFRESH_AFTER), "turn channel refresh")

    def refresh_deadline(self, skip: Callable[[int], bool]) -> Deadline | None:
        """The earliest refresh deadline of a channel that received data (a deadline snownet lacks), not
        counting the channels ``skip`` names (their bind is in flight); from the kept deadlines (pure)."""
        return self._due.earliest_exact(lambda n: self._refresh_deadline(n, skip))

    def refresh_deadline_recomputed(self, skip: Callable[[int], bool]) -> Deadline | None:
        """:meth:`refresh_deadline` asking every channel (for tests)."""
        return earliest(*(self._refresh_deadline(n, skip) for n in self._by_number))
