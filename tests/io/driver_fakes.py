"""Fakes for the driver tests: a scripted core that checks the contract, and transports on memory streams."""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Exit, Transmit, WriteTun
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import DnsUpstreamFailed, DnsUpstreamResponse, ForwardDnsQuery
from gateway_core.dns.servers import DnsTransport
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import ConfigureInterface, InterfaceConfigFailed, InterfaceConfigured
from gateway_core.portal.channel import ClosePortal, PortalDisconnected
from gateway_io.dns_server import DnsQuery
from gateway_io.driver import Report


def sa(text: str) -> SocketAddr:
    host, _, port = text.rpartition(":")
    return SocketAddr(ipaddress.ip_address(host.strip("[]")), int(port))


CLIENT = sa("198.51.100.7:51820")
LOCAL4 = sa("0.0.0.0:52625")
LOCAL6 = sa("[::]:52625")


class FakeCore:
    """Records every call with its ``now``; queues scripted commands; checks R2 (time) and R3 (drained)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, Any]] = []
        self.queue: deque[Command] = deque()
        self.deadlines: list[Deadline] = []
        self.on_input: Callable[[Input], list[Command]] = lambda inp: []
        self.on_tun: Callable[[bytes], Transmit | None] = lambda p: None
        self.on_datagram: Callable[[bytes], bytes | None] = lambda p: None
        self.on_timeout: Callable[[int], list[Command]] = lambda now: []
        self.last = 0
        self.undrained = 0

    def _enter(self, kind: str, now: int, what: Any) -> None:
        assert now >= self.last, "time went backwards"
        self.last = now
        if self.queue:
            self.undrained += 1  # R3 broken: a call while commands were still queued
        self.calls.append((kind, now, what))

    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit | None:
        self._enter("tun", now, packet)
        return self.on_tun(packet)

    def handle_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bytes | None:
        self._enter("udp", now, (local, remote, payload))
        return self.on_datagram(payload)

    def handle_input(self, now: Instant, inp: Input) -> None:
        self._enter("input", now, inp)
        self.queue.extend(self.on_input(inp))

    def handle_timeout(self, now: Instant) -> None:
        self._enter("timeout", now, None)
        due = [d for d in self.deadlines if d.at <= now]
        self.deadlines = [d for d in self.deadlines if d.at > now]
        for _ in due:
            self.queue.extend(self.on_timeout(now))

    def poll_timeout(self) -> Deadline | None:
        return min(self.deadlines, key=lambda d: d.at, default=None)

    def poll_command(self) -> Command | None:
        return self.queue.popleft() if self.queue else None

    def inputs(self, kind: type[Input] = Input) -> list[Input]:
        return [c[2] for c in self.calls if c[0] == "input" and isinstance(c[2], kind)]

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


@dataclass
class Log:
    """What the fake transports executed, in order, across all of them."""

    entries: list[tuple[str, Any]] = field(default_factory=list)

    def add(self, kind: str, what: Any) -> None:
        self.entries.append((kind, what))


class FakeTun:
    """A TUN device with the real one's reading interface: ``read_batch``, and ``read_nowait`` with
    ``wait_readable``, which the driver uses when a device has them (see :class:`BatchOnlyTun`)."""

    def __init__(self, log: Log, batch: int = 100) -> None:
        self.log = log
        self.batch = batch
        self.inject, self._recv = anyio.create_memory_object_stream[bytes](math.inf)
        self._held: list[bytes] = []
        self.fail_writes = False
        self.reads = 0
        """Calls of :meth:`read_nowait` (how often the loop looked)."""

    async def read_batch(self) -> list[bytes]:
        await self.wait_readable()
        return self.read_nowait()

    def read_nowait(self) -> list[bytes]:
        self.reads += 1
        out, self._held = self._held, []
        while len(out) < self.batch:
            try:
                out.append(self._recv.receive_nowait())
            except anyio.WouldBlock:
                break
        return out

    async def wait_readable(self) -> None:
        if not self._held:
            self._held.append(await self._recv.receive())

    def write(self, packet: bytes) -> OSError | None:
        if self.fail_writes:
            return OSError("EIO")
        self.log.add("tun", packet)
        return None


class FakeUdp:
    def __init__(self, log: Log, local: SocketAddr, batch: int = 64) -> None:
        self.log = log
        self._local = local
        self.batch = batch
        self.inject, self._recv = anyio.create_memory_object_stream[
            tuple[SocketAddr, SocketAddr, bytes, int]
        ](math.inf)
        self._held: list[tuple[SocketAddr, SocketAddr, bytes, int]] = []
        self.fail_sends = False

    @property
    def local(self) -> SocketAddr:
        return self._local

    async def receive_batch(self) -> list[tuple[SocketAddr, SocketAddr, bytes, int]]:
        await self.wait_readable()
        return self.receive_nowait()

    def receive_nowait(self) -> list[tuple[SocketAddr, SocketAddr, bytes, int]]:
        out, self._held = self._held, []
        while len(out) < self.batch:
            try:
                out.append(self._recv.receive_nowait())
            except anyio.WouldBlock:
                break
        return out

    async def wait_readable(self) -> None:
        if not self._held:
            self._held.append(await self._recv.receive())

    def send(self, transmit: Transmit) -> SendFailed | None:
        if self.fail_sends:
            return SendFailed(transmit.dst, "EHOSTUNREACH")
        self.log.add("udp", transmit)
        return None


class BatchOnlyTun:
    """A TUN device with ``read_batch`` only (no ``read_nowait``): the driver reads it through a task."""

    def __init__(self, tun: FakeTun) -> None:
        self.tun = tun

    async def read_batch(self) -> list[bytes]:
        return await self.tun.read_batch()

    def write(self, packet: bytes) -> OSError | None:
        return self.tun.write(packet)


class BatchOnlyUdp:
    """A UDP socket with ``receive_batch`` only: the driver reads it through a task."""

    def __init__(self, udp: FakeUdp) -> None:
        self.udp = udp

    @property
    def local(self) -> SocketAddr:
        return self.udp.local

    async def receive_batch(self) -> list[tuple[SocketAddr, SocketAddr, bytes, int]]:
        return await self.udp.receive_batch()

    def send(self, transmit: Transmit) -> SendFailed | None:
        return self.udp.send(transmit)


class FakePortal:
    def __init__(
        self, log: Log, tg: anyio.abc.TaskGroup, report: Report, *, close_reports: bool = True
    ) -> None:
        self.log = log
        self.report = report
        self.close_reports = close_reports

    def execute(self, cmd: Command) -> bool:
        self.log.add("portal", cmd)
        if isinstance(cmd, ClosePortal) and cmd.graceful and self.close_reports:
            self.report(PortalDisconnected(cmd.conn, "closed (1000)"))
        return True


class FakeDns:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.inject, self._recv = anyio.create_memory_object_stream[DnsQuery](math.inf)

    async def execute(self, command: Command) -> None:
        self.log.add("dns", command)

    async def receive(self) -> DnsQuery:
        return await self._recv.receive()

    async def send_response(
        self, transport: DnsTransport, local: tuple[Any, int], remote: tuple[Any, int], message: bytes
    ) -> bool:
        self.log.add("dns-response", (transport, local, remote, message))
        return True


class FakeBatchDns(FakeDns):
    """A DNS server set with the batch interface (``receive_batch``, ``send_response_nowait``)."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.inject_batch, self._batches = anyio.create_memory_object_stream[list[DnsQuery]](math.inf)

    async def receive_batch(self) -> list[DnsQuery]:
        return await self._batches.receive()

    def send_response_nowait(
        self, transport: DnsTransport, local: tuple[Any, int], remote: tuple[Any, int], message: bytes
    ) -> bool:
        self.log.add("dns-response-nowait", (transport, local, remote, message))
        return not message.startswith(b"unsendable")

    def attach(self, sink: Any) -> bool:
        return False  # batches come from receive_batch()

    def resume(self) -> None:
        raise AssertionError("never attached")


class FakeSubmittingResolver:
    """A resolver with ``start``/``submit``: answers are reported from a task of its own."""

    def __init__(self) -> None:
        self.started = False
        self.submitted: list[ForwardDnsQuery] = []
        self.raise_on_submit = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._report: Report | None = None

    def start(self, task_group: anyio.abc.TaskGroup, report: Report) -> None:
        self.started, self._tg, self._report = True, task_group, report

    def submit(self, command: ForwardDnsQuery) -> None:
        if self.raise_on_submit:
            raise RuntimeError("resolver bug")
        self.submitted.append(command)
        assert self._tg is not None and self._report is not None
        report = self._report

        async def answer() -> None:
            await anyio.lowlevel.checkpoint()
            report(DnsUpstreamResponse(command.query_id, b"answer:" + command.message))

        self._tg.start_soon(answer)

    async def forward_command(self, command: ForwardDnsQuery) -> DnsUpstreamResponse | DnsUpstreamFailed:
        raise AssertionError("the driver must submit, not forward")

    async def resolve_domain(self, domain: str) -> tuple[IPAddress, ...] | str:
        return "NXDOMAIN"


class FakeResolver:
    def __init__(self) -> None:
        self.raise_on_forward = False
        self.domains: dict[str, tuple[IPAddress, ...] | str] = {}

    async def forward_command(self, command: ForwardDnsQuery) -> DnsUpstreamResponse | DnsUpstreamFailed:
        await anyio.lowlevel.checkpoint()
        if self.raise_on_forward:
            raise RuntimeError("resolver bug")
        return DnsUpstreamResponse(command.query_id, b"answer:" + command.message)

    async def resolve_domain(self, domain: str) -> tuple[IPAddress, ...] | str:
        await anyio.lowlevel.checkpoint()
        return self.domains.get(domain, "NXDOMAIN")


class FakeInterface:
    def __init__(self, log: Log, fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    async def configure(self, command: ConfigureInterface) -> InterfaceConfigured | InterfaceConfigFailed:
        self.log.add("interface", command)
        if self.fail:
            raise OSError("netlink exploded")
        return InterfaceConfigured(command.config, ipv4=True, ipv6=True)


def goodbye_script(inp: Input) -> list[Command]:
    """A core's shutdown: a goodbye datagram, a graceful portal close, then Exit."""
    if isinstance(inp, ShutdownRequested):
        return [
            Transmit(None, CLIENT, b"goodbye"),
            ClosePortal(1, graceful=True),
            Exit("shutdown requested", 0),
        ]
    return []


__all__ = ["WriteTun"]
