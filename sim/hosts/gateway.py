"""The gateway in the simulator: a :class:`~gateway_core.gateway.Gateway` and the kernel around it.

Theory of operation
-------------------
:class:`GatewayHost` drives a Gateway and carries out its commands the way the IO layer and the Linux
kernel would:

- ``Transmit`` -> a UDP datagram from the host's WireGuard port; ``WriteTun`` and the packets returned by
  ``handle_datagram`` -> raw IP onto the resource network (:meth:`World.send_ip`), except UDP for one of
  the gateway's own DNS-server addresses (tunnel address, port 53535), which the "kernel" delivers to the
  layer-4 DNS server: it becomes :class:`DnsQueryReceived`. ``SendDnsResponse`` becomes an IP/UDP packet
  from the server's address that goes back in through ``handle_tun_packet``, as the kernel routes it.
  TCP for a DNS server address is the kernel's side of a connection (SYN/ACK, length-prefixed messages
  reassembled into ``DnsQueryReceived`` over TCP, ``SendDnsResponse`` over TCP sent as one data segment).
  Any other packet for one of the gateway's own tunnel addresses is answered as Linux answers it without
  a socket behind (ICMP echo reply, ICMP port unreachable for UDP), back through ``handle_tun_packet``.
- Portal commands (``ConnectPortal`` / ``SendPortalFrame`` / ``ClosePortal``) map to simulated streams
  exactly as :class:`sim.portal.PortalClientHost` maps them (this host is one), and stream events come
  back as the channel's inputs, handed to the gateway.
- ``ResolveDomain`` is answered by a :class:`SimResolver` (a table, after a small virtual delay);
  ``ForwardDnsQuery`` becomes a UDP datagram to an upstream DNS server address (for both transports:
  the simulated upstream speaks UDP only) whose answer, arriving on the query's own port, becomes
  ``DnsUpstreamResponse``. The core times these out itself.
- ``ConfigureInterface`` installs the routes of the tunnel ranges towards this host and answers
  ``InterfaceConfigured``; ``BindDnsServers`` / ``RetryDnsServerBind`` answer ``DnsServerBound`` for every
  address (``fail_binds`` makes the binds of one family fail a number of times, to exercise the retry).

Answers to commands are scheduled as world actions (``drive``), never re-entered while the world is
draining the gateway's commands.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import assert_never

from devportal import DevPortal, load_config
from devportal.config import EXAMPLE_CONFIG
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import NANOS_PER_SEC, Duration, Instant, millis
from gateway_core.commands import Command, Exit, Transmit
from gateway_core.contract import Component
from gateway_core.dns.forwarding import (
    DnsQueryReceived,
    DnsUpstreamFailed,
    DnsUpstreamResponse,
    ForwardDnsQuery,
    SendDnsResponse,
)
from gateway_core.dns.servers import (
    BindDnsServers,
    DnsServerBindFailed,
    DnsServerBound,
    DnsTransport,
    RetryDnsServerBind,
)
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import (
    DomainResolved,
    DomainResolveFailed,
    GatewayCommand,
    GatewayConfig,
    ResolveDomain,
)
from gateway_core.inputs import Input
from gateway_core.interface import ConfigureInterface, InterfaceConfigured
from gateway_core.portal.channel import ClosePortal, ConnectPortal, SendPortalFrame
from gateway_core.wire.icmp import build_icmp_error
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
    parse_icmp,
    parse_ip,
    parse_tcp,
)
from sim.host import Host
from sim.net import LinkProfile, ip_endpoints, udp_in_ip
from sim.portal import PORTAL_PORT, PortalClientHost, StubPortal, StubPortalHost
from sim.world import World

RESOLVE_DELAY: Duration = millis(5)
"""How long the simulated system resolver takes (any small non-zero value)."""
UPSTREAM_DNS_PORT = 53
LOG_KEPT = 4096
"""Control-plane commands kept in :attr:`GatewayHost.log`: every scenario of the tests fits many times;
a soak of hours keeps only the latest."""


@dataclass(slots=True)
class _TcpDns:
    """One DNS-over-TCP connection the simulated kernel accepted: our next sequence number, the peer's
    next expected one, and bytes of a message not complete yet."""

    next_seq: int
    peer_next: int
    buffer: bytes = b""


@dataclass(slots=True)
class SimResolver:
    """The system resolver of the simulated gateway: a table of domain -> addresses, after a delay.

    A domain absent from the table fails to resolve (as NXDOMAIN does for ``getaddrinfo``)."""

    table: dict[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    delay: Duration = RESOLVE_DELAY

    def resolve(self, domain: str) -> tuple[IPAddress, ...] | None:
        return self.table.get(domain.lower().rstrip("."))


class GatewayHost(PortalClientHost):
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        gateway: Gateway,
        portal: SocketAddr,
        *,
        ipv4: IPv4Address | str | None = None,
        ipv6: IPv6Address | str | None = None,
        link: LinkProfile | None = None,
        resolver: SimResolver | None = None,
        upstream_dns: SocketAddr | None = None,
        fail_binds: Mapping[int, int] | None = None,
    ) -> None:
        Host.__init__(
            self, name, gateway, ipv4=ipv4, ipv6=ipv6, link=link, udp_ports=(gateway.config.wg_port,)
        )
        self.gateway = gateway
        self.channel = gateway.channel
        self.portal_addr = portal
        self._stream_of: dict[int, int] = {}
        self._conn_of: dict[int, int] = {}
        self._upgraded: set[int] = set()
        self._requests: dict[int, str] = {}
        self.resolver = resolver if resolver is not None else SimResolver()
        self.upstream_dns = upstream_dns
        self.fail_binds: dict[int, int] = dict(fail_binds or {})
        """IP version -> how many more bind attempts of an address of that family fail."""
        self.dns_servers: set[SocketAddr] = set()
        self._tcp_dns: dict[tuple[SocketAddr, SocketAddr], _TcpDns] = {}
        self._upstream: dict[int, int] = {}  # local port -> query id
        self.interface: ConfigureInterface | None = None
        self.log: deque[tuple[Instant, Command]] = deque(maxlen=LOG_KEPT)
        """The latest control-plane commands executed (not Transmit / WriteTun), for tests; a ring, so a
        soak of simulated hours holds no more than a scenario of seconds."""

    def swap_component(self, component: Component) -> None:
        """A restarted gateway (:meth:`World.replace_component`): the old process's portal streams close
        (the kernel resets them), its DNS servers and pending upstream queries are forgotten."""
        assert isinstance(component, Gateway)
        for sid in sorted(self._conn_of):
            self.world.stream_close(self, sid, "crash")
        self._stream_of.clear()
        self._conn_of.clear()
        self._upgraded.clear()
        self._requests.clear()
        self._upstream.clear()
        self._tcp_dns.clear()
        self.dns_servers = set()
        self.gateway = component
        self.channel = component.channel
        super().swap_component(component)

    # --- inputs -------------------------------------------------------------------------------------

    def _input(self, now: Instant, inp: object) -> None:
        assert isinstance(inp, Input)
        self.gateway.handle_input(now, inp)

    def _later(self, delay: Duration, inp: Input) -> None:
        world = self.world

        def deliver() -> None:
            if self.name in world.hosts and self.exited is None:
                world.drive(self, lambda now: self.gateway.handle_input(now, inp))

        world.after(delay, deliver)

    def on_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bool:
        qid = self._upstream.pop(local.port, None)
        if qid is not None:
            self.unbind(local.port)
            self.gateway.handle_input(now, DnsUpstreamResponse(qid, payload))
            return True
        # The batch entry point the driver uses, with the one datagram this event delivers.
        for packet in self.gateway.handle_datagrams(now, [(local, remote, payload, ecn)]):
            self._to_kernel(now, packet)
        return True

    def _to_kernel(self, now: Instant, packet: bytes) -> None:
        """A packet the gateway wrote to its TUN: for a local DNS server, for the host's own tunnel
        address (the kernel answers), or routed onwards."""
        udp = udp_in_ip(packet)
        if udp is not None and self.dns_servers:
            ends = ip_endpoints(packet)
            assert ends is not None
            dst = SocketAddr(ends[1], udp[1])
            if dst in self.dns_servers:
                query = DnsQueryReceived(dst, SocketAddr(ends[0], udp[0]), DnsTransport.UDP, udp[2])
                self.gateway.handle_input(now, query)
                return
        if udp is None and self.dns_servers and self._dns_tcp(now, packet):
            return
        ends = ip_endpoints(packet)
        cfg = self.interface.config if self.interface is not None else None
        if ends is not None and cfg is not None and ends[1] in (cfg.ipv4, cfg.ipv6):
            self._local(now, packet, udp is not None)
            return
        self.world.send_ip(self, packet)

    def _dns_tcp(self, now: Instant, packet: bytes) -> bool:
        """TCP for one of the DNS servers: the kernel's side of a connection (SYN -> SYN/ACK; data is
        reassembled into length-prefixed messages, each a ``DnsQueryReceived`` over TCP). False when the
        packet is not for a DNS server."""
        try:
            ip = parse_ip(packet)
            if ip.proto != PROTO_TCP:
                return False
            tcp = parse_tcp(ip.payload)
        except ValueError:
            return False
        local, remote = SocketAddr(ip.dst, tcp.dport), SocketAddr(ip.src, tcp.sport)
        if local not in self.dns_servers:
            return False
        key = (local, remote)
        if tcp.flags & TCP_SYN:
            isn = (tcp.dport << 16) | tcp.sport
            self._tcp_dns[key] = _TcpDns(
                next_seq=(isn + 1) & 0xFFFFFFFF, peer_next=(tcp.seq + 1) & 0xFFFFFFFF
            )
            self._to_gateway(
                now,
                build_tcp_packet(
                    ip.dst,
                    ip.src,
                    tcp.dport,
                    tcp.sport,
                    seq=isn,
                    ack=(tcp.seq + 1) & 0xFFFFFFFF,
                    flags=TCP_SYN | TCP_ACK,
                ),
            )
            return True
        conn = self._tcp_dns.get(key)
        if conn is None or not tcp.payload:
            return True
        conn.peer_next = (tcp.seq + len(tcp.payload)) & 0xFFFFFFFF
        conn.buffer += tcp.payload
        while len(conn.buffer) >= 2 and len(conn.buffer) >= 2 + int.from_bytes(conn.buffer[:2], "big"):
            size = int.from_bytes(conn.buffer[:2], "big")
            message, conn.buffer = conn.buffer[2 : 2 + size], conn.buffer[2 + size :]
            self.gateway.handle_input(now, DnsQueryReceived(local, remote, DnsTransport.TCP, message))
        return True

    def _to_gateway(self, now: Instant, packet: bytes) -> None:
        """A packet the kernel writes into the TUN device: to the gateway, whose answer goes out."""
        for t in self.gateway.handle_tun_packets(now, [packet]):
            self.world.send_udp(self, t.src, t.dst, t.payload, t.ecn)

    def _local(self, now: Instant, packet: bytes, is_udp: bool) -> None:
        """What Linux does with a packet for one of its own addresses and no socket behind it: an ICMP echo
        request gets its reply, UDP an ICMP port unreachable; anything else is dropped. The answer goes
        back into the TUN device, i.e. to the gateway."""
        try:
            ip = parse_ip(packet)
            answer: bytes | None = None
            if is_udp:
                answer = build_icmp_error(packet, 3, 4)
            elif ip.proto in (PROTO_ICMP, PROTO_ICMPV6):
                icmp = parse_icmp(ip.payload)
                if icmp.icmp_type == (ICMPV4_ECHO_REQUEST if ip.src.version == 4 else ICMPV6_ECHO_REQUEST):
                    answer = build_icmp_echo(ip.dst, ip.src, icmp.ident, icmp.seq, icmp.payload, reply=True)
        except ValueError:
            return
        if answer is None:
            return
        self._to_gateway(now, answer)

    # --- commands -----------------------------------------------------------------------------------

    def execute(self, now: Instant, command: Command) -> None:
        if not isinstance(command, GatewayCommand):
            super().execute(now, command)  # not one of the gateway's: the base host refuses it
            return
        match command:
            case Transmit() | Exit() | ConnectPortal() | SendPortalFrame() | ClosePortal():
                super().execute(now, command)  # the portal client host and the base host map these
            case ResolveDomain(request_id=rid, domain=domain):
                self.log.append((now, command))
                found = self.resolver.resolve(domain)
                answer: Input = (
                    DomainResolved(rid, found) if found is not None else DomainResolveFailed(rid, "NXDOMAIN")
                )
                self._later(self.resolver.delay, answer)
            case ForwardDnsQuery(query_id=qid, message=message):
                self.log.append((now, command))
                if self.upstream_dns is None:
                    self._later(millis(1), DnsUpstreamFailed(qid, "no nameserver"))
                    return
                port = self.ephemeral_port()
                self.bind(port)
                self._upstream[port] = qid
                src = self.source_for(self.upstream_dns.ip)
                if src is not None:
                    self.world.send_udp(self, SocketAddr(src, port), self.upstream_dns, message)
            case SendDnsResponse(local=local, remote=remote, transport=transport, message=message):
                if transport is DnsTransport.TCP:
                    conn = self._tcp_dns.get((local, remote))
                    if conn is None:
                        return  # the connection is gone (the gateway restarted meanwhile)
                    data = len(message).to_bytes(2, "big") + message
                    packet = build_tcp_packet(
                        local.ip,
                        remote.ip,
                        local.port,
                        remote.port,
                        data,
                        seq=conn.next_seq,
                        ack=conn.peer_next,
                        flags=TCP_ACK | TCP_PSH,
                    )
                    conn.next_seq = (conn.next_seq + len(data)) & 0xFFFFFFFF
                else:
                    packet = build_udp_packet(local.ip, remote.ip, local.port, remote.port, message)
                self._to_gateway(now, packet)
            case ConfigureInterface(config=cfg):
                self.log.append((now, command))
                self.interface = command
                for net in cfg.routes:
                    n = ip_network(net)
                    if (n.version == 4 and self.ipv4 is not None) or (
                        n.version == 6 and self.ipv6 is not None
                    ):
                        self.world.network.add_route(n, self.name)
                self._later(0, InterfaceConfigured(cfg, cfg.ipv4 is not None, cfg.ipv6 is not None))
            case BindDnsServers(addresses=addresses):
                self.log.append((now, command))
                self.dns_servers = set()
                for a in addresses:
                    self._bind_dns(a)
            case RetryDnsServerBind(address=a):
                self.log.append((now, command))
                self._bind_dns(a)
            case _:
                assert_never(command)

    def _bind_dns(self, address: SocketAddr) -> None:
        left = self.fail_binds.get(address.ip.version, 0)
        if left > 0:
            self.fail_binds[address.ip.version] = left - 1
            self._later(0, DnsServerBindFailed(address, "address not available"))
            return
        self.dns_servers.add(address)
        self._later(0, DnsServerBound(address, address.port))


@dataclass(slots=True)
class GatewayScene:
    """What :func:`build_gateway_world` put in the world."""

    stub: StubPortal
    portal_host: StubPortalHost
    gateway: Gateway
    host: GatewayHost

    def act(self, world: World, action: Callable[[DevPortal], object]) -> None:
        """Run a scripted portal action now (e.g. ``lambda p: p.authorize(client, resource)``)."""
        world.drive(self.portal_host, lambda now: self.stub.act(now, action))


def build_gateway_world(
    world: World,
    *,
    config_text: str = EXAMPLE_CONFIG,
    portal_ip: str = "198.51.100.10",
    gateway_ip: str = "203.0.113.5",
    gateway_ip6: str | None = None,
    firezone_id: str = "gw-sim-1",
    resolver: SimResolver | None = None,
    upstream_dns: SocketAddr | None = None,
    link: LinkProfile | None = None,
    config: GatewayConfig | None = None,
) -> GatewayScene:
    """A stub portal and a gateway in ``world``; the gateway starts connecting to the portal now."""
    stub = StubPortal(DevPortal(load_config(config_text)), epoch_unix=world.clock.unix_ns() // NANOS_PER_SEC)
    portal_host = StubPortalHost("portal", stub, ipv4=portal_ip)
    world.add_host(portal_host)
    private_key = world.entropy_for("gateway-key").random_bytes(32)
    cfg = config or GatewayConfig(
        api_url="wss://portal.sim", token=stub.portal.token, firezone_id=firezone_id, name="gw-sim"
    )
    gw = Gateway(
        config=cfg,
        private_key=private_key,
        entropy=world.entropy_for("gateway"),
        now=world.now,
        utc_ns=world.clock.unix_ns(),
    )
    host = GatewayHost(
        "gateway",
        gw,
        SocketAddr(IPv4Address(portal_ip), PORTAL_PORT),
        ipv4=gateway_ip,
        ipv6=gateway_ip6,
        link=link,
        resolver=resolver,
        upstream_dns=upstream_dns,
    )
    world.add_host(host)
    return GatewayScene(stub, portal_host, gw, host)
