"""A simulated machine: addresses, UDP sockets, an access link, and the component it drives.

Theory of operation: a :class:`Host` sits between the world and one sans-IO component. The world calls the
host's hooks when something arrives (:meth:`Host.on_datagram`, :meth:`Host.on_ip_packet`,
:meth:`Host.on_stream_event`) and, after every step, drains the component's commands through
:meth:`Host.execute`. The default hooks fit the data-plane shape of the driving contract
(``docs/design/driving-contract.md``):

- a UDP datagram for one of the host's bound ports goes to ``component.handle_datagram(now, local,
  remote, payload) -> bytes | None``; a returned IP packet is written to the "TUN", i.e. sent as a raw IP
  packet onto the network (:meth:`World.send_ip`);
- a raw IP packet (routed to this host by address or by a prefix route, e.g. a gateway's tunnel range)
  goes to ``component.handle_tun_packet(now, packet) -> Transmit | None``; a returned ``Transmit`` is sent;
- commands: ``Transmit`` becomes a UDP send, ``WriteTun`` a raw IP send, ``Exit`` stops the host.

Later components (WireGuard peers, TURN relay, portal, gateway) plug in either by offering those methods
or by subclassing :class:`Host` and overriding the hooks and :meth:`Host.execute` to map their own inputs
and commands (e.g. a relay binds allocation ports with :meth:`Host.bind`; a portal client maps
``ConnectPortal`` to :meth:`World.stream_connect`).

The component can change while the host stays (a restarted process on the same machine):
:meth:`World.replace_component` calls :meth:`Host.swap_component`, which subclasses that keep state for
their component extend.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Exit, Transmit, WriteTun
from gateway_core.contract import Component, Deadline
from sim.contract import ContractChecker
from sim.net import LinkProfile

if TYPE_CHECKING:
    from sim.world import World

EPHEMERAL_PORT_BASE = 49152
"""First port handed out when a host needs a port it was not given (IANA dynamic range start)."""


@runtime_checkable
class DatagramHandler(Protocol):
    """A component that receives UDP datagrams (the data-plane shape of the gateway)."""

    def handle_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes
    ) -> bytes | None:
        """Handle one datagram; may return an IP packet for the TUN device."""
        ...


@runtime_checkable
class PacketHandler(Protocol):
    """A component that receives raw IP packets (from a TUN device or a simulated LAN)."""

    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit | None:
        """Handle one IP packet; may return a datagram to send."""
        ...


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """A reliable stream is up: on the server side it was accepted, on the client side it connected."""

    stream: int
    local: SocketAddr
    remote: SocketAddr


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One text frame arrived on ``stream`` (frames arrive whole and in order)."""

    stream: int
    text: str


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """``stream`` is gone: closed by the peer, refused, or reset by a partition."""

    stream: int
    reason: str


StreamEvent = StreamOpened | StreamFrame | StreamClosed


@runtime_checkable
class StreamHandler(Protocol):
    """A component that talks over reliable streams (e.g. a stub portal or the portal client)."""

    def handle_stream_event(self, now: Instant, event: StreamEvent) -> None: ...


class Host:
    """A simulated machine driving one component; see the module docstring."""

    def __init__(
        self,
        name: str,
        component: Component,
        *,
        ipv4: IPv4Address | str | None = None,
        ipv6: IPv6Address | str | None = None,
        link: LinkProfile | None = None,
        udp_ports: tuple[int, ...] = (),
        stream_ports: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.ipv4 = IPv4Address(ipv4) if isinstance(ipv4, str) else ipv4
        self.ipv6 = IPv6Address(ipv6) if isinstance(ipv6, str) else ipv6
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError(f"host {name!r} needs an IPv4 or an IPv6 address")
        self.link = link if link is not None else LinkProfile()
        self.ports: set[int] = set(udp_ports)
        self.default_port: int | None = udp_ports[0] if udp_ports else None
        self.stream_ports: set[int] = set(stream_ports)
        self.component: Component
        self._datagram_handler: DatagramHandler | None
        self._packet_handler: PacketHandler | None
        self._stream_handler: StreamHandler | None
        self.checker: ContractChecker
        self._bind(component)
        self.deadline: Deadline | None = None
        self.exited: Exit | None = None
        self._world: World | None = None
        self._next_ephemeral = EPHEMERAL_PORT_BASE

    # --- wiring ---

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError(f"host {self.name!r} is not in a world")
        return self._world

    def attached(self, world: World) -> None:
        """Called by :meth:`World.add_host`."""
        self._world = world

    def _bind(self, component: Component) -> None:
        """Drive ``component``, with a fresh contract checker."""
        self.component = component
        # Capabilities are looked up once: isinstance() against a runtime Protocol is slow per packet.
        self._datagram_handler = component if isinstance(component, DatagramHandler) else None
        self._packet_handler = component if isinstance(component, PacketHandler) else None
        self._stream_handler = component if isinstance(component, StreamHandler) else None
        self.checker = ContractChecker(self.name, component)

    def swap_component(self, component: Component) -> None:
        """Called by :meth:`World.replace_component` (which keeps the world's side consistent): drive
        ``component`` from now on, with a fresh contract checker.

        A subclass that keeps state belonging to its component (open streams, pending requests, the
        component under a typed name) extends this: it forgets that state, then calls ``super()``.
        Addresses, bound ports and the access link belong to the machine and stay.
        """
        self._bind(component)

    def addresses(self) -> list[IPAddress]:
        out: list[IPAddress] = []
        if self.ipv4 is not None:
            out.append(self.ipv4)
        if self.ipv6 is not None:
            out.append(self.ipv6)
        return out

    def source_for(self, dst: IPAddress) -> IPAddress | None:
        """The own address of ``dst``'s family, as the kernel would choose it."""
        return self.ipv4 if dst.version == 4 else self.ipv6

    def bind(self, port: int) -> None:
        """Open UDP ``port`` on every address of this host."""
        self.ports.add(port)
        if self.default_port is None:
            self.default_port = port

    def unbind(self, port: int) -> None:
        self.ports.discard(port)

    def ephemeral_port(self) -> int:
        """A fresh port from the dynamic range (deterministic: counts up per host)."""
        while self._next_ephemeral in self.ports:
            self._next_ephemeral += 1
        port = self._next_ephemeral
        self._next_ephemeral += 1
        return port

    def sending_port(self) -> int:
        """The port a ``Transmit`` without source uses: the first bound port (bound on demand)."""
        if self.default_port is None:
            self.bind(self.ephemeral_port())
        assert self.default_port is not None
        return self.default_port

    def owns(self, ip: IPAddress) -> bool:
        return ip == self.ipv4 or ip == self.ipv6

    # --- hooks called by the world (override to adapt other components) ---

    def on_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bool:
        """A datagram for a bound port arrived (``ecn``: the ECN bits of its IP header, handed on only when
        set); returns ``False`` if nothing here takes datagrams."""
        comp = self._datagram_handler
        if comp is None:
            return False
        batch = getattr(comp, "handle_datagrams", None)
        if batch is not None:
            # The gateway's batch entry point, with the one datagram this event delivers (the driver hands
            # it whole batches; a batch of one gives exactly what handle_datagram gives).
            for packet in batch(now, [(local, remote, payload, ecn)]):
                self.world.send_ip(self, packet)
            return True
        if ecn:
            got = comp.handle_datagram(now, local, remote, payload, ecn)  # type: ignore[call-arg]
        else:
            got = comp.handle_datagram(now, local, remote, payload)
        if got is not None:
            self.world.send_ip(self, got)
        return True

    def on_ip_packet(self, now: Instant, packet: bytes) -> bool:
        """A raw IP packet arrived; returns ``False`` if nothing here takes raw packets."""
        comp = self._packet_handler
        if comp is None:
            return False
        batch = getattr(comp, "handle_tun_packets", None)
        if batch is not None:  # as for datagrams: the batch entry point, one packet per event
            for t in batch(now, [packet]):
                self.world.send_udp(self, t.src, t.dst, t.payload, t.ecn)
            return True
        transmit = comp.handle_tun_packet(now, packet)
        if transmit is not None:
            self.world.send_udp(self, transmit.src, transmit.dst, transmit.payload, transmit.ecn)
        return True

    def on_stream_event(self, now: Instant, event: StreamEvent) -> bool:
        """A stream event arrived; returns ``False`` if nothing here takes streams."""
        comp = self._stream_handler
        if comp is None:
            return False
        comp.handle_stream_event(now, event)
        return True

    def accepts_raw_ip(self) -> bool:
        """Whether :meth:`on_ip_packet` takes raw IP packets (override together with it)."""
        return self._packet_handler is not None

    def accepts_datagrams(self) -> bool:
        """Whether :meth:`on_datagram` takes datagrams (override together with it)."""
        return self._datagram_handler is not None

    def execute(self, now: Instant, command: Command) -> None:
        """Carry out one command the component queued."""
        match command:
            case Transmit(src=src, dst=dst, payload=payload, ecn=ecn):
                self.world.send_udp(self, src, dst, payload, ecn)
            case WriteTun(packet=packet):
                self.world.send_ip(self, packet)
            case Exit():
                self.world.host_exited(self, command)
            case _:
                raise TypeError(f"host {self.name!r} cannot execute {command!r}; subclass Host to map it")
