"""A runnable example of the driving contract (docs/design/driving-contract.md).

``Prober`` is a tiny sans-IO component: it sends a probe datagram every second to a peer and counts the
replies; a reply that does not parse is dropped and counted, never raised. ``drive`` is the smallest
possible driver: a virtual clock and a loop-back "network" that answers every probe. Run it:

    .venv/bin/python docs/design/driving_contract_example.py
"""

from __future__ import annotations

from collections import deque
from ipaddress import ip_address

from gateway_core import (
    Command,
    Deadline,
    DropReason,
    Instant,
    SocketAddr,
    Stats,
    Transmit,
    UsageError,
    secs,
)

PROBE_INTERVAL = secs(1)  # why: the example's own choice, one probe per second


class Prober:
    """Theory of operation: one deadline (next probe); inputs are datagrams; outputs are Transmits."""

    def __init__(self, local: SocketAddr, peer: SocketAddr, now: Instant) -> None:
        self._local, self._peer = local, peer
        self._last_now = now
        self._next_probe = now  # probe at once
        self._seq = 0
        self._queue: deque[Command] = deque()
        self.replies = 0
        self.stats = Stats()

    def _advance(self, now: Instant) -> None:  # R2: time never goes backwards
        if now < self._last_now:
            raise UsageError(f"time went backwards: {now} < {self._last_now}")
        self._last_now = now

    def handle_datagram(self, now: Instant, src: SocketAddr, payload: bytes) -> None:
        self._advance(now)
        if src != self._peer or not payload.startswith(b"reply "):
            self.stats.drop(DropReason.DATAGRAM_UNCLASSIFIED)  # R6: drop and count, never raise
            return
        self.replies += 1

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)
        if now >= self._next_probe:  # R5: whatever is due is done now
            self._queue.append(Transmit(self._local, self._peer, b"probe %d" % self._seq))
            self._seq += 1
            self._next_probe = Instant(now + PROBE_INTERVAL)

    def poll_timeout(self) -> Deadline | None:  # R4: pure, never before the last now
        return Deadline(max(self._next_probe, self._last_now), "probe")

    def poll_command(self) -> Command | None:  # R3: drained after every mutation
        return self._queue.popleft() if self._queue else None


def drive(until: Instant) -> Prober:
    """A virtual-time driver: serve the deadline, execute commands, feed replies back in."""
    me = SocketAddr(ip_address("127.0.0.1"), 40000)
    peer = SocketAddr(ip_address("127.0.0.2"), 40001)
    now = Instant(0)
    prober = Prober(me, peer, now)
    while True:
        deadline = prober.poll_timeout()
        assert deadline is not None
        if deadline.at > until:
            return prober
        now = deadline.at
        prober.handle_timeout(now)
        while (cmd := prober.poll_command()) is not None:
            assert isinstance(cmd, Transmit)
            # The "network": the peer answers every probe; garbage arrives as well, and is dropped.
            prober.handle_datagram(now, peer, b"reply " + cmd.payload)
            prober.handle_datagram(now, peer, b"\xff garbage")


if __name__ == "__main__":
    p = drive(Instant(secs(10)))
    print(f"replies={p.replies} drops={p.stats.snapshot()}")
