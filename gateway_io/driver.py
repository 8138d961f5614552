"""The driver: THE loop that owns the core and connects it to the world (the rules R1-R10 of
docs/design/driving-contract.md).

Theory of operation
-------------------
One anyio task (:meth:`Driver.run`) is the only caller of the core (R1). Everything that produces work for
the core is a *source* with a small queue; the loop takes turns:

1. **Sources, in a fixed order, one batch each (R9).** TUN packets, then each UDP socket, then the DNS
   servers' queries (one server's batch), then the portal's reports, the DNS servers' bind outcomes, the
   resolver's results, and the control inputs (interface results, send failures, shutdown requests). A
   source offers at most one batch per turn, so a flood from one source (a busy TUN) cannot starve another
   or the timer. A device that can be read without waiting (``read_nowait``/``receive_nowait`` and
   ``wait_readable``: the real TUN device and UDP sockets) is read by the loop itself, one batch a turn,
   while it has data; once a read finds it empty, a watcher task waits until it is readable and wakes the
   loop (no task hand-over per batch). Other devices have reader tasks that fill a queue of capacity 1.
   Either way what the loop has not taken yet stays in the kernel's buffers.
2. **Drain after every input (R3).** After each ``handle_*`` call the loop calls ``poll_command()`` until it
   returns ``None``, executing each command at once and in order. The data plane's direct results (an IP
   packet for the TUN, a ``Transmit``) are executed before the drain, as the core produced them first.
3. **One timer (R4/R5).** After the sources, the loop reads the clock; if ``poll_timeout()`` is due it
   calls ``handle_timeout(now)`` and drains. With nothing to do the loop sleeps until the deadline or until
   a source wakes it (an event made when it goes to sleep; anything handed in during the turn is seen by
   a flag, so no wake-up is lost). With work it takes the next turn at once, and lets the event loop run
   its other tasks (portal, DNS servers, watchers, resolutions) after at most :data:`YIELD_AFTER` ns or
   :data:`YIELD_TURNS` turns (decision 0183).
4. **Batches through the core (decision 0150).** A TUN batch goes to the core's ``handle_tun_packets``, a
   UDP batch to ``handle_datagrams`` (a core without them gets packet by packet); the datagrams and TUN
   packets a batch produced are written together at its end (:class:`gateway_io.batch_out.BatchOut`). The
   devices that can count their own traffic for the metrics do so (``count_into``,
   :mod:`gateway_io.io_counters`); the driver counts for the others.
5. **Executing never awaits in the loop.** Sends on UDP and writes to the TUN never block; the portal's
   commands are handed to its transport (it has tasks of its own); DNS answers are sent at once when the
   server set can (``send_response_nowait``), forwarded queries are submitted to the resolver's shared
   upstream sockets when it can (``submit``; decision 0112); slow work (DNS server binds, interface
   configuration) goes to ordered worker tasks, and each domain resolution runs in its own task. Every
   outcome that the core must know about, failures included, comes back as an input on a source (R7);
   the driver never retries anything.
6. **Shutdown (R10).** :meth:`Driver.request_shutdown` (SIGINT/SIGTERM) reports ``ShutdownRequested``.
   From then on a grace period runs (:data:`SHUTDOWN_GRACE`, Firezone's 1 s flush): the core queues its
   goodbyes, a graceful portal close and ``Exit``; the loop keeps executing until ``Exit`` has come *and*
   the portal connection has closed, or until the grace period ends. The exit code is ``Exit.code``, or 1
   when the grace period ran out (as Firezone's ``rust/connlib/tunnel/src/lib.rs``). A second request stops
   at once. An ``Exit`` without a request (a fatal portal error) gets the same grace period for its
   goodbyes.

Time: ``now`` is ``clock()`` (``time.monotonic_ns`` in production), read once per batch and never allowed
to go backwards; the wall clock (``utc_clock``) is compared with the monotonic one at most once per
:data:`ANCHOR_CHECK_INTERVAL` and a step of more than :data:`ANCHOR_TOLERANCE` is reported as
``WallClockAnchor``. Transports are protocols so that tests drive the loop with fakes and a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, assert_never

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Exit, Transmit, WriteTun
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import (
    DnsUpstreamFailed,
    ForwardDnsQuery,
    SendDnsResponse,
)
from gateway_core.dns.servers import BindDnsServers, RetryDnsServerBind
from gateway_core.gateway_types import DomainResolved, DomainResolveFailed, ResolveDomain, WallClockAnchor
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import ConfigureInterface, InterfaceConfigFailed
from gateway_core.portal.channel import (
    ClosePortal,
    ConnectPortal,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    SendPortalFrame,
)
from gateway_core.stats import Stats
from gateway_io.batch_out import BatchOut
from gateway_io.dns_path import DnsPath
from gateway_io.io_counters import V4, V6, IoCounters
from gateway_io.transports import Core, CoreCommand, DnsServers, Interface, Portal, Report, Transports

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 1_000_000_000
"""Nanoseconds to flush goodbyes after a shutdown request (Firezone: 1 s, ``tunnel/src/lib.rs:328``)."""

REPORT_BATCH = 64
"""Reports (portal frames, DNS queries, results) taken from one source per turn (R9): as the UDP batch."""

DNS_QUERY_QUEUE = 4
"""Batches of DNS queries (TCP, or from servers that cannot be attached) waiting for the loop; when
full, the DNS servers' own bounded queues take over. One batch per turn (R9); attached UDP servers hand
theirs to :class:`gateway_io.dns_path.DnsPath`."""

ANCHOR_CHECK_INTERVAL = 1_000_000_000
"""How often (ns) the wall clock is compared with the monotonic clock: once a second is plenty for expiry
checks with second resolution."""

ANCHOR_TOLERANCE = 500_000_000
"""A wall-clock step above this (ns) re-anchors the core's UTC (NTP slews far less; a step is a jump)."""

YIELD_AFTER = 500_000
"""While busy, the loop lets the event loop run (its other tasks: the portal, DNS, watchers, resolutions)
after at most this many nanoseconds of turns (decision 0183); the devices it reads itself need no pass."""

YIELD_TURNS = 16
"""... and after at most this many busy turns (a bound that holds with a clock that does not move)."""

Observer = Callable[[Instant], None]
"""Called from the loop (R1) at most once per its interval: reads the core (statistics, completed flows)."""


__all__ = ["SHUTDOWN_GRACE", "Core", "Driver", "DriverStats", "Report", "Transports"]


# --------------------------------------------------------------------------------------------------
# Sources

T = TypeVar("T")
Datagram = tuple[SocketAddr, SocketAddr, bytes, int]
"""What a UDP socket reads: ``(local, remote, payload, ecn)``."""


class _Source(Generic[T]):
    """An inbox of the loop: tasks put items in, the loop takes up to ``batch`` a turn.

    A plain deque, not an anyio memory stream: the loop looks into every source on every turn, and most
    are empty; a stream says "empty" by raising ``WouldBlock`` (about 0.9 us each), and its ``send``
    passes through the event loop once more per batch (a checkpoint) before the item is in. Bounded
    sources (``capacity``) make :meth:`put` wait until :meth:`take` made room: the back-pressure that
    leaves what the loop has not taken in the kernel's buffers."""

    __slots__ = ("_space", "batch", "capacity", "items", "name")

    def __init__(self, name: str, capacity: float, batch: int) -> None:
        self.name = name
        self.capacity = capacity
        self.batch = batch
        self.items: deque[T] = deque()
        """What waits for the loop (the loop looks whether it is empty before it calls :meth:`take`)."""
        self._space: anyio.Event | None = None

    def put_nowait(self, item: T) -> None:
        """Append ``item``; a full bounded source raises ``anyio.WouldBlock`` (the unbounded never do)."""
        if len(self.items) >= self.capacity:
            raise anyio.WouldBlock
        self.items.append(item)

    async def put(self, item: T) -> None:
        """Append ``item``, first waiting while the source is full."""
        while len(self.items) >= self.capacity:
            if self._space is None:
                self._space = anyio.Event()  # (only a full bounded source waits: not per batch)
            await self._space.wait()
        self.items.append(item)

    def take(self) -> list[T]:
        """Up to :attr:`batch` items, oldest first; a waiting :meth:`put` is let go."""
        items = self.items
        if not items:
            return []
        if len(items) <= self.batch:
            out = list(items)
            items.clear()
        else:
            pop = items.popleft
            out = [pop() for _ in range(self.batch)]
        if self._space is not None:
            self._space.set()
            self._space = None
        return out


class _Polled(Generic[T]):
    """A device the loop reads itself (one that has ``read_nowait`` and ``wait_readable``, as
    :class:`gateway_io.tun.TunDevice` and :class:`gateway_io.udp.UdpSocket`): while it has data, each turn
    reads one batch straight from it, with no task hand-over; once a read finds it empty, a watcher task
    waits until it is readable again and wakes the loop. A failure of either is the device's
    (``on_failure``), after which it is not read again."""

    __slots__ = ("_drained", "failed", "name", "new_event", "on_failure", "read", "ready", "wait")

    def __init__(
        self,
        name: str,
        read: Callable[[], list[T]],
        wait: Callable[[], Awaitable[None]],
        on_failure: Callable[[str, Exception], None],
        new_event: Callable[[], _Event],
    ) -> None:
        self.name = name
        self.read = read
        self.wait = wait
        self.on_failure = on_failure
        self.new_event = new_event
        self.ready = False
        """The device may have data: the next turn reads it."""
        self.failed = False
        self._drained: _Event | None = None

    def take(self) -> list[list[T]]:
        """The batch a read finds now, as a list of one (``[]``: nothing ready or nothing there)."""
        if not self.ready:
            return []
        try:
            batch = self.read()
        except Exception as e:
            self.failed = True
            self._idle()
            self.on_failure(self.name, e)
            return []
        if batch:
            return [batch]
        self._idle()
        return []

    def _idle(self) -> None:
        self.ready = False
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    async def watch(self, poke: Callable[[], None]) -> None:
        """The watcher task: wait for data whenever the loop found the device empty."""
        while not self.failed:
            try:
                await self.wait()
            except Exception as e:
                self.failed = True
                self.on_failure(self.name, e)
                return
            self.ready = True
            poke()
            drained = self._drained = self.new_event()
            await drained.wait()


class _Event(Protocol):
    def set(self) -> object: ...

    async def wait(self) -> object: ...


def _primitives() -> tuple[Callable[[], Awaitable[object]], Callable[[], _Event]]:
    """The loop's checkpoint and event, found once per run: on asyncio its own (``asyncio.sleep(0)``,
    ``asyncio.Event``), which anyio's wrap after asking sniffio which library runs, on every call
    (measured: 12 % of the loop's time when it passed 100-packet batches); anyio's on any other library.
    Both are cancellation points of anyio's scopes (on asyncio they cancel the task)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio)
        return anyio.lowlevel.checkpoint, anyio.Event
    return (lambda: asyncio.sleep(0)), asyncio.Event


@dataclass(slots=True)
class DriverStats:
    """What the driver did (for tests and the daemon's log); drops of its own are counted here too."""

    counters: Stats = field(default_factory=Stats)
    turns: int = 0
    timeouts: int = 0
    io: IoCounters = field(default_factory=IoCounters)
    """Packets and bytes through the TUN device and the UDP sockets (for the metrics)."""


class Driver:
    """THE loop; see the module docstring."""

    def __init__(
        self,
        core: Core,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
        utc_clock: Callable[[], int] | None = time.time_ns,
        grace: int = SHUTDOWN_GRACE,
    ) -> None:
        self.core = core
        self.clock = clock
        self.utc_clock = utc_clock
        self.grace = grace
        self.stats = DriverStats()
        self._udp_sent = self.stats.io.udp_sent
        self._tun_written = self.stats.io.tun_written
        self._dns = DnsPath(self.nudge, self.stats.counters)
        self.exit: Exit | None = None
        """The core's ``Exit`` once it came."""
        self.exit_code: int | None = None
        """Set when :meth:`run` returns."""
        self._last = 0
        self._deadline: Deadline | None = None
        """The core's deadline as the last turn left it (R4: polling is pure, so it holds until the next
        call into the core)."""
        self._wake: _Event | None = None
        """The event the loop sleeps on, made only when it goes to sleep (making one costs microseconds)."""
        self._poked = False
        """Something was handed to the loop since its turn began: it takes another turn before sleeping."""
        self._new_event: Callable[[], _Event] = anyio.Event
        """The loop's kind of event (:func:`_primitives`, set when :meth:`run` starts)."""
        self._tun_src: _Source[list[bytes]] | _Polled[bytes] = _Source("tun", 1, 1)
        self._batching = False
        """Inside a data-plane batch: datagrams and TUN packets are collected, then written together."""
        self._tx: list[Transmit] = []
        self._tun_out: list[bytes] = []
        self._tun_batch = getattr(core, "handle_tun_packets", None)
        self._udp_batch = getattr(core, "handle_datagrams", None)
        self._udp_reads: list[tuple[_Source[list[Datagram]] | _Polled[Datagram], int | None]] = []
        """Each UDP socket's source and family index for the counters (``None``: the socket counts its own
        traffic)."""
        self._udp_for: dict[type, tuple[Any, bool]] = {}
        """The UDP socket for each address type (``IPv4Address``, ``IPv6Address``), found on first use, and
        whether it counts its own traffic."""
        self._tun_counts = False
        """The TUN device counts what it reads and writes (``count_into``): the driver does not."""
        self.portal_src: _Source[Input] = _Source("portal", math.inf, REPORT_BATCH)
        self.dns_src: _Source[Input] = _Source("dns", math.inf, REPORT_BATCH)
        self._dns_q: _Source[list[Input]] = _Source("dns-queries", DNS_QUERY_QUEUE, 1)
        self._deadline_valid = False
        """Whether :attr:`_deadline` is still the core's (no call into the core since the turn read it)."""
        self.resolver_src: _Source[Input] = _Source("resolver", math.inf, REPORT_BATCH)
        self.control_src: _Source[Input] = _Source("control", math.inf, REPORT_BATCH)
        self._input_srcs = (self.portal_src, self.dns_src, self.resolver_src, self.control_src)
        self._t = Transports()
        self._out = BatchOut(
            self._t, self.stats.counters, self.stats.io, self.report, self._transmit, self._write_tun
        )
        """Writes each data-plane batch's results (made again for the transports when :meth:`run` starts)."""
        self._portal: Portal | None = None
        self._portal_connected: set[int] = set()
        self._portal_closing: set[int] = set()
        self._dns_work: MemoryObjectSendStream[Command] | None = None
        self._if_work: MemoryObjectSendStream[ConfigureInterface] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._shutdown_requests = 0
        self.fatal = False
        """A device failed: the exit code is at least 1."""
        self._grace_at: int | None = None
        self._stop = False
        self._anchor_mono = 0
        self._anchor_utc = 0
        self._anchor_checked = 0
        self._observers: list[tuple[int, Observer]] = []
        self._observe_at: int | None = None
        self._soon: list[Observer] = []

    def add_observer(self, interval: int, observe: Observer) -> None:
        """Call ``observe(now)`` from the loop every ``interval`` ns (first: one interval after start)."""
        self._observers.append((interval, observe))
        self._observe_at = None

    def call_soon(self, observe: Observer) -> None:
        """Call ``observe(now)`` once, from the loop, at the end of its next turn (any task may ask)."""
        self._soon.append(observe)
        self._poke()

    def _observe(self, now: Instant) -> bool:
        """Run what is due; whether anything ran (it may have changed the core's deadline)."""
        ran = False
        if self._soon:
            soon, self._soon = self._soon, []
            self._call(soon, now)
            ran = True
        if not self._observers:
            return ran
        if self._observe_at is None:
            self._observe_at = now + min(i for i, _ in self._observers)
            return ran
        if now < self._observe_at:
            return ran
        self._call([o for _, o in self._observers], now)
        self._observe_at = now + min(i for i, _ in self._observers)
        return True

    def _call(self, observers: list[Observer], now: Instant) -> None:
        for observe in observers:
            try:
                observe(now)
            except Exception:  # a bug in an observer must not stop the gateway
                log.exception("observer %r raised", observe)
                self.stats.counters.incr("driver.observer_failed")

    # --- reporting (any task) ----------------------------------------------------------------------

    def reporter(self, source: _Source[Input]) -> Report:
        """A function that hands an input to the loop through ``source`` and wakes it (never fails)."""

        def report(inp: Input) -> None:
            source.put_nowait(inp)
            self._poke()

        return report

    def report(self, inp: Input) -> None:
        """Hand a control input to the loop (interface results, send failures, ...)."""
        self.control_src.put_nowait(inp)
        self._poke()

    def report_dns(self, inp: Input) -> None:
        """For ``DnsServerSet(on_input=...)``: bind outcomes."""
        self.dns_src.put_nowait(inp)
        self._poke()

    def request_shutdown(self) -> None:
        """SIGINT/SIGTERM: the first starts the graceful shutdown, a second one stops at once."""
        self.report(ShutdownRequested())

    def nudge(self) -> None:
        """Wake the loop to look at the clock again (tests with a fake clock)."""
        self._poke()

    def _poke(self) -> None:
        """Wake the loop (any task): it sleeps no more before its next turn."""
        self._poked = True
        if self._wake is not None:
            self._wake.set()

    # --- time ----------------------------------------------------------------------------------------

    def now(self) -> Instant:
        t = self.clock()
        if t > self._last:
            self._last = t
        return Instant(self._last)

    def _check_wall_clock(self, now: Instant) -> None:
        """At most once per :data:`ANCHOR_CHECK_INTERVAL` (the turn looks at the interval first)."""
        if self.utc_clock is None or now - self._anchor_checked < ANCHOR_CHECK_INTERVAL:
            return
        self._anchor_checked = now
        utc = self.utc_clock()
        expected = self._anchor_utc + (now - self._anchor_mono)
        if abs(utc - expected) > ANCHOR_TOLERANCE:
            log.info("wall clock stepped by %.3f s: re-anchoring", (utc - expected) / 1e9)
            self._anchor_mono, self._anchor_utc = now, utc
            self._input(now, WallClockAnchor(utc))

    # --- the loop ------------------------------------------------------------------------------------

    async def run(
        self, transports: Transports, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> int:
        """Run until the core's ``Exit`` is flushed (or the grace period ends); the exit code."""
        self._t = transports
        self._udp_for.clear()
        now = self.now()
        self._anchor_checked = now
        if self.utc_clock is not None:
            self._anchor_mono, self._anchor_utc = now, self.utc_clock()
        checkpoint, new_event = _primitives()
        self._new_event = new_event
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._start_tasks(tg)
            task_status.started()
            self._drain()  # whatever the core queued at construction (ConnectPortal)
            unyielded = 0
            yielded_at = self._last
            while not self._stop:
                self._poked = False
                busy = self._turn()
                if self._stop:
                    break
                wait = None if busy or self._poked else self._wait_ns()  # (busy: no clock read, no sleep)
                if busy or self._poked or (wait is not None and wait <= 0):
                    # Another turn at once; every YIELD_AFTER ns or YIELD_TURNS turns (the clock as the
                    # turn last read it) the event loop runs first, so that its tasks refill their sources.
                    unyielded += 1
                    if unyielded < YIELD_TURNS and self._last - yielded_at < YIELD_AFTER:
                        continue
                    await checkpoint()
                    unyielded = 0
                    yielded_at = self._last
                    continue
                # Nothing ran since the turn (no await): whatever is handed in from here on pokes this event.
                wake = self._wake = new_event()
                if wait is None:
                    await wake.wait()
                else:
                    with anyio.move_on_after(wait / 1e9):
                        await wake.wait()
                self._wake = None
                unyielded = 0
                yielded_at = self._last
            tg.cancel_scope.cancel()
        self.exit_code = self._final_code()
        return self.exit_code

    def _start_tasks(self, tg: anyio.abc.TaskGroup) -> None:
        t = self._t
        self._out = BatchOut(
            t, self.stats.counters, self.stats.io, self.report, self._transmit, self._write_tun
        )
        if t.tun is not None:
            self._tun_src = self._reader(tg, "tun", t.tun, "read_nowait", "read_batch")
            self._tun_counts = self._count_into(t.tun)
        self._udp_reads.clear()
        for sock in t.udp:
            fam = None if self._count_into(sock) else V6 if sock.local.ip.version == 6 else V4
            self._udp_reads.append(
                (self._reader(tg, f"udp {sock.local}", sock, "receive_nowait", "receive_batch"), fam)
            )
        if t.portal is not None:
            self._portal = t.portal(tg, self.reporter(self.portal_src))
        if t.dns is not None:
            send, recv = anyio.create_memory_object_stream[Command](math.inf)
            self._dns_work = send
            tg.start_soon(self._dns_worker, t.dns, recv)
            tg.start_soon(self._dns_reader, t.dns)
        if t.guard is not None:
            tg.start_soon(t.guard.run)
        self._dns.start(tg, t.dns, t.resolver, self.reporter(self.resolver_src))
        if t.interface is not None:
            isend, irecv = anyio.create_memory_object_stream[ConfigureInterface](math.inf)
            self._if_work = isend
            tg.start_soon(self._interface_worker, t.interface, irecv)

    def _count_into(self, device: Any) -> bool:
        """Hand ``device`` the driver's IO counters if it counts its own traffic (then the driver does not,
        :mod:`gateway_io.io_counters`); whether it does."""
        count_into = getattr(device, "count_into", None)
        if count_into is None:
            return False
        count_into(self.stats.io)
        return True

    def _turn(self) -> bool:
        """One pass over every source (one batch each), then the timer; whether any source had work."""
        self.stats.turns += 1
        busy = False
        core = self.core
        io = self.stats.io
        for packets in self._tun_src.take():
            busy = True
            if not self._tun_counts:
                io.tun_read(packets)
            now = self.now()
            self._batching = True
            if self._tun_batch is not None:
                self._tx.extend(self._tun_batch(now, packets))
                self._drain()
            else:
                for packet in packets:
                    transmit = core.handle_tun_packet(now, packet)
                    if transmit is not None:
                        self._tx.append(transmit)
                    self._drain()
            self._flush()
        for src, fam in self._udp_reads:
            for datagrams in src.take():
                busy = True
                if fam is not None:
                    io.udp_received(fam, datagrams)
                now = self.now()
                self._batching = True
                if self._udp_batch is not None:
                    self._tun_out.extend(self._udp_batch(now, datagrams))
                    self._drain()
                else:
                    for local, remote, payload, ecn in datagrams:
                        ip = core.handle_datagram(now, local, remote, payload, ecn)
                        if ip is not None:
                            self._tun_out.append(ip)
                        self._drain()
                self._flush()
        dns_batches = self._dns.take()
        if self._dns_q.items:
            dns_batches += self._dns_q.take()
        for queries in dns_batches:
            busy = True
            now = self.now()
            for inp in queries:
                self._input(now, inp)
                if self._stop:
                    return busy
        for isrc in self._input_srcs:
            if isrc.items:  # (most turns: all four empty, looked at without a call)
                busy = True
                now = self.now()
                for inp in isrc.take():
                    self._input(now, inp)
                    if self._stop:
                        return busy
        now = self.now()
        if now - self._anchor_checked >= ANCHOR_CHECK_INTERVAL:
            self._check_wall_clock(now)
        if self._t.guard is not None:
            self._t.guard.tick(now)  # at most once a second it asks the core for the relays
        deadline = core.poll_timeout()
        if deadline is not None and deadline.at <= now:
            self.stats.timeouts += 1
            core.handle_timeout(now)
            self._drain()
            deadline = core.poll_timeout()
        if (self._observers or self._soon) and self._observe(now):
            deadline = core.poll_timeout()
        # Nothing touches the core between here and _wait_ns: it reuses this deadline (R4: pure).
        self._deadline, self._deadline_valid = deadline, True
        if self._grace_at is not None or self.exit is not None:
            self._check_done(now)
        return busy

    def _wait_ns(self) -> int | None:
        """Nanoseconds until the next deadline (core or grace period), ``None``: none."""
        if self._deadline_valid:
            deadline, self._deadline_valid = self._deadline, False
        else:
            deadline = self.core.poll_timeout()
        ats: list[int] = [deadline.at] if deadline is not None else []
        if self._grace_at is not None:
            ats.append(self._grace_at)
        if self._observe_at is not None:
            ats.append(self._observe_at)
        if not ats:
            return None
        return max(0, min(ats) - self.clock())

    def _input(self, now: Instant, inp: Input) -> None:
        match inp:
            case ShutdownRequested():
                self._shutdown_requests += 1
                if self._shutdown_requests > 1:
                    log.warning("second shutdown request: stopping now")
                    self._stop = True
                    return
                log.info("shutdown requested: flushing for at most %.1f s", self.grace / 1e9)
                if self._grace_at is None:
                    self._grace_at = now + self.grace
            case PortalConnected(conn=conn):
                self._portal_connected.add(conn)
            case PortalDisconnected(conn=conn) | PortalConnectFailed(conn=conn):
                self._portal_connected.discard(conn)
                self._portal_closing.discard(conn)
        self.core.handle_input(now, inp)
        self._drain()

    def _check_done(self, now: Instant) -> None:
        """Stop once the grace period is over, or after ``Exit`` once the portal closed (the turn calls this
        only when either is set)."""
        if self._grace_at is not None and now >= self._grace_at:
            if not self._stop:
                log.warning("shutdown grace period over; stopping")
            self._stop = True
        elif self.exit is not None and not self._portal_closing:
            self._stop = True

    def _final_code(self) -> int:
        if self.exit is None:
            return 1  # stopped before the core said goodbye (second request, or grace period over)
        if self._portal_closing or self.fatal:
            return max(self.exit.code, 1)
        return self.exit.code

    # --- executing commands --------------------------------------------------------------------------

    def _drain(self) -> None:
        """R3: execute every queued command, in order."""
        core = self.core
        while (cmd := core.poll_command()) is not None:
            self._execute(cmd)

    def _execute(self, cmd: CoreCommand) -> None:
        match cmd:
            case Transmit():
                self._transmit(cmd)
            case WriteTun(packet=packet):
                self._write_tun(packet)
            case ConnectPortal() | SendPortalFrame() | ClosePortal():
                self._portal_command(cmd)
            case SendDnsResponse() if self._dns.send_response(cmd):
                pass
            case SendDnsResponse() | BindDnsServers() | RetryDnsServerBind():
                if self._dns_work is None:
                    self.stats.counters.incr("driver.no_dns_servers")
                    if isinstance(cmd, SendDnsResponse):
                        self.report(SendFailed(cmd.remote, "no DNS servers"))
                else:
                    self._dns_work.send_nowait(cmd)
            case ForwardDnsQuery() if self._dns.forward(cmd):
                pass
            case ForwardDnsQuery():
                self._spawn(self._forward, cmd)
            case ResolveDomain():
                self._spawn(self._resolve, cmd)
            case ConfigureInterface():
                if self._if_work is None:
                    self.report(InterfaceConfigFailed(cmd.config, "no interface transport"))
                else:
                    self._if_work.send_nowait(cmd)
            case Exit():
                log.info("core exit: %s (code %d)", cmd.reason, cmd.code)
                self.exit = cmd
                if self._grace_at is None:
                    self._grace_at = self.now() + self.grace
            case _:
                assert_never(cmd)

    def _flush(self) -> None:
        """End of a data-plane batch: write what it produced (:class:`gateway_io.batch_out.BatchOut`)."""
        self._batching = False
        tx, out = self._tx, self._tun_out
        if tx:
            self._tx = []
        if out:
            self._tun_out = []
        self._out.flush(tx, out)

    def _transmit(self, t: Transmit) -> None:
        if self._batching:
            self._tx.append(t)
            return
        found = self._udp_for.get(type(t.dst.ip))
        if found is None:
            sock = next((u for u in self._t.udp if u.local.ip.version == t.dst.ip.version), None)
            if sock is None:
                self.report(SendFailed(t.dst, f"no IPv{t.dst.ip.version} socket"))
                return
            found = self._udp_for[type(t.dst.ip)] = (sock, hasattr(sock, "count_into"))
        sock, counts = found
        failed = sock.send(t)
        if failed is not None:
            self._send_failed(failed)
        elif not counts:
            self._udp_sent(t.dst.ip.version == 6, t.payload)  # (a bool indexes as 0/1: V4/V6)

    def _send_failed(self, failed: SendFailed) -> None:
        self.stats.counters.incr("driver.send_failed")
        self.report(failed)

    def _write_tun(self, packet: bytes) -> None:
        if self._batching:
            self._tun_out.append(packet)
            return
        tun = self._t.tun
        err = tun.write(packet) if tun is not None else OSError("no TUN device")
        if err is None:
            if not self._tun_counts:
                self._tun_written(packet)
        else:
            self.stats.counters.incr("driver.tun_write_failed")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("TUN write failed: %s", err)

    def _portal_command(self, cmd: ConnectPortal | SendPortalFrame | ClosePortal) -> None:
        if self._portal is None:
            if isinstance(cmd, ConnectPortal):
                self.reporter(self.portal_src)(PortalConnectFailed(cmd.conn, "no portal transport"))
            return
        match cmd:
            case ConnectPortal():
                # The transport aborts older connections without a report.
                self._portal_connected.clear()
                self._portal_closing.clear()
            case ClosePortal(conn=conn, graceful=graceful):
                if graceful and conn in self._portal_connected:
                    self._portal_closing.add(conn)  # flushed when PortalDisconnected comes
                self._portal_connected.discard(conn)
        self._portal.execute(cmd)

    def _spawn(self, fn: Callable[[Any], Any], cmd: Any) -> None:
        assert self._tg is not None
        self._tg.start_soon(fn, cmd)

    # --- tasks ---------------------------------------------------------------------------------------

    def _reader(
        self, tg: anyio.abc.TaskGroup, name: str, device: Any, nowait: str, batch: str
    ) -> _Source[Any] | _Polled[Any]:
        """How the loop reads ``device``: itself while it has data (it has ``nowait`` and
        ``wait_readable``: a watcher task waits once it is empty), or through a reader task that calls its
        ``batch`` method and fills a source of capacity 1."""
        read_now = getattr(device, nowait, None)
        wait = getattr(device, "wait_readable", None)
        if read_now is not None and wait is not None:
            polled: _Polled[Any] = _Polled(name, read_now, wait, self._failed, self._new_event)
            tg.start_soon(polled.watch, self._poke)
            return polled
        src: _Source[Any] = _Source(name, 1, 1)
        tg.start_soon(self._read_source, getattr(device, batch), src, name)
        return src

    async def _read_source(self, read: Callable[[], Any], src: _Source[Any], name: str) -> None:
        """Move batches from a transport to its source, one at a time (capacity 1: back-pressure).

        A device that fails or closes is fatal, as Firezone's dying socket thread
        (``rust/gateway/src/eventloop.rs``):
        the core is asked to shut down (goodbyes are still sent on what works) and the exit code is 1.
        """
        while True:
            try:
                batch = await read()
            except Exception as e:
                self._failed(name, e)
                return
            await src.put(batch)
            self._poke()

    def _failed(self, name: str, e: Exception) -> None:
        """A device failed or closed (reading it or waiting for it): shut down, exit code 1."""
        log.error("%s failed: %s: %s; shutting down", name, type(e).__name__, e)
        self.stats.counters.incr("driver.read_failed")
        if not self.fatal and self._shutdown_requests == 0:
            self.report(ShutdownRequested())
        self.fatal = True

    async def _dns_reader(self, dns: DnsServers) -> None:
        batched = hasattr(dns, "receive_batch")
        while True:
            try:
                queries = await dns.receive_batch() if batched else [await dns.receive()]  # type: ignore[attr-defined]
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            await self._dns_q.put(self._dns.inputs(queries))
            self._poke()

    async def _dns_worker(self, dns: DnsServers, work: MemoryObjectReceiveStream[Command]) -> None:
        """DNS server commands in order: binds (reported by the set itself) and responses."""
        async for cmd in work:
            try:
                if isinstance(cmd, SendDnsResponse):
                    local = (str(cmd.local.ip), cmd.local.port)
                    remote = (str(cmd.remote.ip), cmd.remote.port)
                    if not await dns.send_response(cmd.transport, local, remote, cmd.message):
                        self.stats.counters.incr("driver.dns_response_failed")
                else:
                    await dns.execute(cmd)  # bind outcomes are reported by the set itself
            except Exception:  # a bug in the transport: logged and counted, the loop goes on
                log.exception("DNS server command %s raised", type(cmd).__name__)
                self.stats.counters.incr("driver.dns_command_failed")

    async def _interface_worker(
        self, interface: Interface, work: MemoryObjectReceiveStream[ConfigureInterface]
    ) -> None:
        async for cmd in work:
            try:
                result = await interface.configure(cmd)
            except Exception as e:  # a bug in the transport must still reach the core as a failure (R7)
                log.exception("configuring the interface raised")
                result = InterfaceConfigFailed(cmd.config, f"{type(e).__name__}: {e}")
            self.report(result)

    async def _forward(self, cmd: ForwardDnsQuery) -> None:
        report = self.reporter(self.resolver_src)
        if self._t.resolver is None:
            report(DnsUpstreamFailed(cmd.query_id, "no resolver"))
            return
        try:
            result: Input = await self._t.resolver.forward_command(cmd)
        except Exception as e:
            log.exception("forwarding a DNS query raised")
            result = DnsUpstreamFailed(cmd.query_id, f"{type(e).__name__}: {e}")
        report(result)

    async def _resolve(self, cmd: ResolveDomain) -> None:
        report = self.reporter(self.resolver_src)
        resolver = self._t.domains if self._t.domains is not None else self._t.resolver
        if resolver is None:
            report(DomainResolveFailed(cmd.request_id, "no resolver"))
            return
        try:
            found = await resolver.resolve_domain(cmd.domain)
        except Exception as e:
            log.exception("resolving %s raised", cmd.domain)
            report(DomainResolveFailed(cmd.request_id, f"{type(e).__name__}: {e}"))
            return
        if isinstance(found, tuple):
            report(DomainResolved(cmd.request_id, found))
        else:
            report(DomainResolveFailed(cmd.request_id, str(found)))
