"""What the driver needs from the core and from each transport, as protocols (the real ones are
``gateway_core.gateway.Gateway``, ``gateway_io.tun.TunDevice``, ``gateway_io.udp.UdpSocket``,
``gateway_io.portal.PortalIO``, ``gateway_io.dns_servers.DnsServerSet``, ``gateway_io.resolver.Resolver``
and ``gateway_io.daemon.NetlinkInterface``; the tests use fakes on memory streams)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio.abc

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Transmit, WriteTun
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import DnsUpstreamFailed, DnsUpstreamResponse, ForwardDnsQuery
from gateway_core.dns.servers import DnsTransport
from gateway_core.gateway_types import GatewayCommand
from gateway_core.inputs import Input, SendFailed
from gateway_core.interface import ConfigureInterface, InterfaceConfigFailed, InterfaceConfigured


class Core(Protocol):
    """The gateway facade as the driver sees it (``gateway_core.gateway.Gateway``)."""

    def handle_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bytes | None: ...
    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit | None: ...
    def handle_input(self, now: Instant, inp: Input) -> None: ...
    def handle_timeout(self, now: Instant) -> None: ...
    def poll_timeout(self) -> Deadline | None: ...
    def poll_command(self) -> CoreCommand | None: ...


CoreCommand = GatewayCommand | WriteTun
"""What the driver executes: every command of the gateway, and ``WriteTun``, which the driving contract
lets any core give (the gateway itself returns its TUN packets from ``handle_datagram`` instead)."""


class Tun(Protocol):
    async def read_batch(self) -> list[bytes]: ...
    def write(self, packet: bytes) -> OSError | None: ...


class UdpSocket(Protocol):
    @property
    def local(self) -> SocketAddr: ...
    async def receive_batch(self) -> list[tuple[SocketAddr, SocketAddr, bytes, int]]:
        """Datagrams ``(local, remote, payload, ecn)``: ``ecn`` the ECN bits of the outer IP header."""
        ...

    def send(self, transmit: Transmit) -> SendFailed | None: ...


class BatchUdpSocket(UdpSocket, Protocol):
    """What a UDP socket may offer besides :class:`UdpSocket` (``gateway_io.udp.UdpSocket`` does): the driver
    hands it whole batches and counts nothing of its traffic itself."""

    def count_into(self, io: Any) -> None:
        """Add what is received and sent to ``io`` (a ``gateway_io.io_counters.IoCounters``) from now on."""
        ...

    def send_batch(self, transmits: list[Transmit], others: list[Transmit]) -> list[SendFailed]:
        """Send this socket's family's ``transmits`` in order, append the other family's to ``others`` in
        order; the failures."""
        ...


class Portal(Protocol):
    def execute(self, cmd: Command) -> bool: ...


class DnsServers(Protocol):
    async def execute(self, command: Command) -> None: ...
    async def receive(self) -> Any: ...
    async def send_response(
        self, transport: DnsTransport, local: tuple[Any, int], remote: tuple[Any, int], message: bytes
    ) -> bool: ...


@runtime_checkable
class BatchDnsServers(Protocol):
    """What a DNS server set may offer besides :class:`DnsServers`: queries in batches, or handed to a sink
    from reader callbacks (``attach``, ``resume``), answers without an ``await``
    (``gateway_io.dns_servers.DnsServerSet`` does; the driver uses it when it is there)."""

    async def receive_batch(self) -> list[Any]: ...
    def send_response_nowait(
        self, transport: DnsTransport, local: tuple[Any, int], remote: tuple[Any, int], message: bytes
    ) -> bool: ...
    def attach(self, sink: Callable[[list[Any]], bool]) -> bool: ...
    def resume(self) -> None: ...


class Resolver(Protocol):
    async def forward_command(self, command: ForwardDnsQuery) -> DnsUpstreamResponse | DnsUpstreamFailed: ...
    async def resolve_domain(self, domain: str) -> tuple[IPAddress, ...] | Any: ...


class DomainResolver(Protocol):
    async def resolve_domain(self, domain: str) -> tuple[IPAddress, ...] | Any: ...


class Guard(Protocol):
    """A kernel-side defence kept in step with the core (``gateway_io.flood_guard.FloodGuard``)."""

    def tick(self, now: int) -> None: ...
    async def run(self) -> None: ...


@runtime_checkable
class SubmittingResolver(Protocol):
    """What a resolver may offer besides :class:`Resolver`: forwarded queries executed without a task each,
    outcomes reported (``gateway_io.resolver.Resolver`` does; the driver uses it when it is there)."""

    def start(self, task_group: anyio.abc.TaskGroup, report: Callable[[Input], None]) -> None: ...
    def submit(self, command: ForwardDnsQuery) -> None: ...


class Interface(Protocol):
    async def configure(self, command: ConfigureInterface) -> InterfaceConfigured | InterfaceConfigFailed: ...


Report = Callable[[Input], None]


@dataclass(slots=True)
class Transports:
    """What the driver talks to; any part may be missing (its commands then fail as inputs or are logged)."""

    tun: Tun | None = None
    udp: Sequence[UdpSocket] = ()
    portal: Callable[[anyio.abc.TaskGroup, Report], Portal] | None = None
    """Built inside the driver's task group with the portal source's report function (``PortalIO``)."""
    dns: DnsServers | None = None
    resolver: Resolver | None = None
    domains: DomainResolver | None = None
    """Resolves DNS-resource names (``gateway_io.system_resolver.SystemResolver``); without it the
    resolver's own ``resolve_domain`` does."""
    interface: Interface | None = None
    guard: Guard | None = None
    """Started in the driver's task group; :meth:`Guard.tick` is called from the loop (R1)."""
