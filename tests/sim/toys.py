"""Tiny components for simulator tests: one well-behaved, several deliberately broken."""

from __future__ import annotations

from collections import deque

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis
from gateway_core.commands import Command, Exit, Transmit
from gateway_core.contract import Deadline


class Ticker:
    """Well-behaved: fires every ``period`` from ``first`` for ``n`` times; records when it fired."""

    def __init__(self, first: int, period: int, n: int) -> None:
        self.next: Instant | None = Instant(first) if n else None
        self.period = period
        self.left = n
        self.fired: list[int] = []
        self.out: deque[Command] = deque()

    def poll_timeout(self) -> Deadline | None:
        return None if self.next is None else Deadline(self.next, "tick")

    def handle_timeout(self, now: Instant) -> None:
        while self.next is not None and self.next <= now:
            self.fired.append(now)
            self.left -= 1
            self.next = Instant(self.next + self.period) if self.left else None

    def poll_command(self) -> Command | None:
        return self.out.popleft() if self.out else None


class Sink(Ticker):
    """Records datagrams and raw packets it receives (no timers)."""

    def __init__(self) -> None:
        super().__init__(0, 1, 0)
        self.datagrams: list[tuple[int, SocketAddr, SocketAddr, bytes]] = []
        self.packets: list[tuple[int, bytes]] = []

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        self.datagrams.append((now, local, remote, payload))

    def handle_tun_packet(self, now: Instant, packet: bytes) -> None:
        self.packets.append((now, packet))


class DatagramSink(Ticker):
    """Takes datagrams only (no raw IP packets)."""

    def __init__(self) -> None:
        super().__init__(0, 1, 0)
        self.datagrams: list[tuple[int, SocketAddr, SocketAddr, bytes]] = []

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        self.datagrams.append((now, local, remote, payload))


class Bouncer(Sink):
    """Sends every datagram straight back (livelocks over zero-delay links)."""

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        super().handle_datagram(now, local, remote, payload)
        self.out.append(Transmit(local, remote, payload))


class Sender(Ticker):
    """At each tick sends ``payload`` to ``dst``; exits after ``n`` ticks if ``exit_after``."""

    def __init__(self, dst: SocketAddr, first: int, period: int, n: int, exit_after: bool = False) -> None:
        super().__init__(first, period, n)
        self.dst = dst
        self.exit_after = exit_after

    def handle_timeout(self, now: Instant) -> None:
        before = len(self.fired)
        super().handle_timeout(now)
        for i in range(before, len(self.fired)):
            self.out.append(Transmit(None, self.dst, b"msg%d" % i))
        if self.exit_after and self.next is None:
            self.out.append(Exit("done"))


# --- broken on purpose ---


class ImpurePoll(Ticker):
    """R4: every ``poll_timeout`` call moves the deadline."""

    def __init__(self) -> None:
        super().__init__(millis(10), millis(10), 5)
        self.calls = 0

    def poll_timeout(self) -> Deadline | None:
        self.calls += 1
        return Deadline(Instant(millis(10) + self.calls), "tick")


class PollQueuesCommand(Ticker):
    """R4: polling the deadline queues a command (in a queue the shallow fingerprint cannot see)."""

    def __init__(self, first: int, period: int, n: int) -> None:
        super().__init__(first, period, n)
        self.box = Box()

    def poll_timeout(self) -> Deadline | None:
        self.box.out.append(Exit("polled"))
        return super().poll_timeout()

    def poll_command(self) -> Command | None:
        return self.box.out.popleft() if self.box.out else None


class Box:
    """A child object holding a queue."""

    def __init__(self) -> None:
        self.out: deque[Command] = deque()


class PastDeadline(Ticker):
    """R4: after its first timer it asks to be woken 1 ms in the past."""

    def handle_timeout(self, now: Instant) -> None:
        super().handle_timeout(now)
        self.next = Instant(now - millis(1))


class NeverConsumed(Ticker):
    """R5: ``handle_timeout`` does nothing, so the deadline stays due."""

    def handle_timeout(self, now: Instant) -> None:
        self.fired.append(now)


class BusyLoop(Ticker):
    """R5: each wake-up asks to be woken again at the same instant (a fresh reason each time)."""

    def __init__(self) -> None:
        super().__init__(millis(5), millis(5), 1)
        self.reason = "tick"

    def poll_timeout(self) -> Deadline | None:
        return None if self.next is None else Deadline(self.next, self.reason)

    def handle_timeout(self, now: Instant) -> None:
        self.fired.append(now)
        self.next = now
        self.reason = f"again {len(self.fired)}"


class RaisesOnInput(Ticker):
    """R6: a datagram starting with 0xff makes it index past the end."""

    def __init__(self) -> None:
        super().__init__(0, 1, 0)

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        if payload[:1] == b"\xff":
            _ = payload[100]


class SneakyPoll(Ticker):
    """R4: ``poll_timeout`` returns a stable answer but counts its calls (a side effect)."""

    def __init__(self) -> None:
        super().__init__(millis(10), millis(10), 2)
        self.polls = 0

    def poll_timeout(self) -> Deadline | None:
        self.polls += 1
        return super().poll_timeout()


class SlottedCache:
    """R4 with ``__slots__``: ``poll_timeout`` appends to a list kept in a slot."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: list[int] = []

    def poll_timeout(self) -> Deadline | None:
        self.seen.append(1)
        return Deadline(Instant(millis(1)), "x")

    def handle_timeout(self, now: Instant) -> None:
        pass

    def poll_command(self) -> Command | None:
        return None
