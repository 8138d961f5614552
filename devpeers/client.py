"""A Firezone-like client built from the core's parts, pure, with an application API for scenarios.

Theory of operation
-------------------
:class:`DevClient` is a sans-IO component. It owns one controlling ICE :class:`Node` whose tunnels are
WireGuard initiators (one connection per gateway, connection id = the gateway's id) and plays the parts
of Firezone's client that matter to a gateway:

- **Access** comes from the portal side (the simulator's ``sim.client_portal``, the dev client process's
  long poll of the dev portal): :meth:`DevClient.grant` hands over what the portal derives for the pair
  (gateway public key, preshared key, both ICE credentials, relays with the client's TURN credentials,
  the gateway's tunnel addresses) and the resource; the client upserts the connection and routes the
  resource to that gateway. Local ICE candidates leave as :class:`SignalIce` commands (the host hands
  them to the portal); the gateway's arrive through :meth:`DevClient.add_remote_candidates`.
- **Routing** of an application packet is the :class:`~devpeers.client_resources.ResourceTable`'s: a
  proxy IP goes to its DNS resource's gateway, else the longest CIDR resource prefix, else the Internet
  resource. Unroutable packets are counted and dropped. Packets sent before the connection is
  established wait in a small per-gateway queue (as the real client's buffer does) and leave on
  ``ConnectionEstablished``.
- **DNS resources**: an A/AAAA query for a name matching a DNS resource is answered locally with proxy
  IPs the client invents (:mod:`devpeers.client_resources`). The first packet to a proxy IP starts a
  :class:`~devpeers.client_nat.DomainNatRequest` for (gateway, domain): ``assigned_ips`` is
  sent in-band, packets are buffered until ``domain_status`` says Active, then flushed; a repeated query
  re-sends ``assigned_ips`` (as Firezone's client does when an application resolves the name again).
- **SRV/TXT** queries for names matching a DNS resource are sent through the tunnel to the gateway's
  tunnel address, port 53535, over UDP (or TCP, one connection per query, the message with its two-byte
  length on the SYN/ACK); the answer comes back the same way.
- **Other names** go to the client's DNS server (:meth:`DevClient.set_dns_servers`, the first one):
  through the tunnel, as an ordinary UDP packet to its port 53, when a resource routes its address (a
  DNS server inside a CIDR resource, or any server with the Internet resource); else the client's own
  resolver answers, which here knows nothing (NXDOMAIN, ``local``).
- **Everything received** is appended to :attr:`DevClient.received` as typed records (echo replies, ICMP
  errors with type/code and the quoted flow, UDP and TCP payloads, DNS answers, ``domain_status``,
  goodbyes), with the time, for assertions. A client with a real TUN device (``write_tun=True``, the
  dev client process of :mod:`devio.client`) instead hands every decrypted IP packet that is not a
  control packet out as a :class:`~gateway_core.commands.WriteTun` command, in order with its other
  commands; control packets (``domain_status``, goodbye) are still handled and recorded.

TCP requests use the probe of :mod:`devpeers.client_tcp` (SYN, then the request on the SYN/ACK).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address

import dns.message

from devpeers.client_nat import DomainNatRequest, firezone_control, firezone_domain_status
from devpeers.client_resources import ResourceTable
from devpeers.client_tcp import TcpProbes
from devpeers.client_types import (
    ClientResource,
    DnsAnswer,
    DomainStatusReceived,
    GatewayGrant,
    GoodbyeReceived,
    Received,
    SignalIce,
    TcpReceived,
    UdpReceived,
    dns_record,
    icmp_record,
)
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, WriteTun
from gateway_core.contract import Deadline
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DecodeError, UsageError
from gateway_core.node.events import (
    ConnectionEstablished,
    ConnectionFailed,
    InvalidateIceCandidate,
    NewIceCandidate,
)
from gateway_core.node.factory import wireguard_node
from gateway_core.node.node import Node, RelayConfig
from gateway_core.policy.p2p_control import (
    EVENT_DOMAIN_STATUS,
    EVENT_GOODBYE,
    build_assigned_ips,
    decode_domain_status,
    is_control_packet,
    parse_control_packet,
)
from gateway_core.stats import Stats
from gateway_core.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    UdpHeader,
    build_icmp_echo,
    build_udp_packet,
    l4_checksum_ok,
    parse_ip,
    parse_tcp,
    parse_udp,
)
from gateway_core.wireguard.crypto import public_key

DNS_FORWARD_PORT = 53535
"""The gateway's DNS servers for SRV/TXT of DNS resources listen on its tunnel addresses at this port."""
PENDING_PER_GATEWAY = 32
"""Packets kept while a connection comes up (like the 32-packet buffers of the real client)."""
FIRST_SPORT = 40000
"""First source port of the client's UDP/TCP flows and DNS queries (counts up, deterministic)."""


class DevClient:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        private_key: bytes,
        tunnel_v4: IPv4Address,
        tunnel_v6: IPv6Address,
        entropy: SeededEntropy,
        now: Instant,
        wall_unix_ns: int,
        *,
        echo_ident: int = 0xC11E,
        write_tun: bool = False,
    ) -> None:
        self.name = name
        self.private_key = private_key
        self.public_key = public_key(private_key)
        self.tunnel_v4 = tunnel_v4
        self.tunnel_v6 = tunnel_v6
        self.echo_ident = echo_ident
        self.stats = Stats()
        self.received: list[Received] = []
        self.listeners: list[Callable[[Received], None]] = []
        """Called with every record as it is appended to :attr:`received` (the demo prints them)."""
        self.events: list[tuple[Instant, str, str]] = []
        """``(time, gateway, what)``: connection established / failed, unroutable sends."""
        self._now = now
        self._wall0 = wall_unix_ns - now
        self._entropy = entropy
        self.node = self._make_node(now)
        self.grants: dict[str, GatewayGrant] = {}
        self._relays: tuple[RelayConfig, ...] = ()
        self._early: dict[str, list[tuple[str, bool]]] = {}
        self.routes = ResourceTable()
        self._nat: dict[tuple[str, str], DomainNatRequest] = {}
        self._pending: dict[str, deque[bytes]] = {}
        self._connected: set[str] = set()
        self._dns_pending: dict[int, tuple[str, str]] = {}
        self._dns_tcp: dict[int, str] = {}
        """Source port of a DNS-over-TCP query -> the gateway it went to."""
        self.dns_servers: tuple[IPAddress, ...] = ()
        """The client's DNS servers for names outside its DNS resources (the system's, in order)."""
        self._tcp = TcpProbes()
        self._next_port = FIRST_SPORT
        self._next_qid = 1
        self._out: deque[Command] = deque()
        self.write_tun = write_tun
        """Decrypted IP packets (not control packets) leave as ``WriteTun`` commands instead of being
        parsed into :attr:`received` (a client with a real TUN device)."""

    def _make_node(self, now: Instant) -> Node:
        return wireguard_node(
            self.private_key,
            self._entropy,
            SeededEntropy(self._entropy.random_bytes(16)),
            now,
            lambda t: self._wall0 + t,
            controlling=True,
        )

    # --- node plumbing --------------------------------------------------------------------------------------

    def _record(self, rec: Received) -> None:
        self.received.append(rec)
        for listener in self.listeners:
            listener(rec)

    def _advance(self, now: Instant) -> None:
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now

    def _drain(self, now: Instant) -> None:
        for _ in range(4):
            while (c := self.node.poll_command()) is not None:
                self._out.append(c)
            progressed = False
            while (e := self.node.poll_event()) is not None:
                progressed = True
                if isinstance(e, NewIceCandidate):
                    self._out.append(SignalIce(e.cid, (e.candidate,)))
                elif isinstance(e, InvalidateIceCandidate):
                    self._out.append(SignalIce(e.cid, (e.candidate,), invalidate=True))
                elif isinstance(e, ConnectionEstablished):
                    self._connected.add(e.cid)
                    self.events.append((now, e.cid, "connected"))
                    for packet in self._pending.pop(e.cid, deque()):
                        self._encapsulate(now, e.cid, packet)
                elif isinstance(e, ConnectionFailed):
                    self._connected.discard(e.cid)
                    self.events.append((now, e.cid, "failed"))
            if not progressed:
                return

    def _encapsulate(self, now: Instant, gateway: str, packet: bytes) -> None:
        if gateway not in self._connected:
            q = self._pending.setdefault(gateway, deque(maxlen=PENDING_PER_GATEWAY))
            q.append(packet)
            return
        t = self.node.encapsulate(gateway, packet, now)
        if t is not None:
            self._out.append(t)
            self.stats.incr("sent")
        else:
            self.stats.incr("dropped.encapsulate")

    # --- driving contract -----------------------------------------------------------------------------------

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        self._advance(now)
        got = self.node.handle_datagram(now, local, remote, payload)
        if got is not None:
            self._inbound(now, got[0], got[1])
        self._drain(now)

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)
        self.node.handle_timeout(now)
        self._drain(now)

    def poll_timeout(self) -> Deadline | None:
        return self.node.poll_timeout()

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None

    # --- control (from the portal side) ---------------------------------------------------------------------

    def grant(self, now: Instant, grant: GatewayGrant, resource: ClientResource) -> None:
        """Access to ``resource`` through ``grant.gateway``: (re)connect and route the resource there."""
        self._advance(now)
        self._set_relays(now, grant.relays)
        self.grants[grant.gateway] = grant
        self.node.upsert_connection(
            grant.gateway, grant.public_key, grant.psk, grant.client_ice, grant.gateway_ice, now
        )
        self.add_resource(resource, grant.gateway)
        for c, invalid in self._early.pop(grant.gateway, []):
            if invalid:
                self.node.remove_remote_candidate(grant.gateway, c, now)
            else:
                self.node.add_remote_candidates(grant.gateway, (c,), now)
        self._drain(now)

    def set_relays(self, now: Instant, relays: tuple[RelayConfig, ...]) -> None:
        """The portal's current relays (relays went away, came, or got new credentials)."""
        self._advance(now)
        self._set_relays(now, relays)
        self._drain(now)

    def _set_relays(self, now: Instant, relays: tuple[RelayConfig, ...]) -> None:
        # Also when the list is the same but the node gave an allocation up (it failed while the client
        # was offline): Firezone's client hands every relay list it gets to its node, which allocates
        # again where it holds nothing and leaves live allocations alone.
        lost = any(r.id not in self.node.allocations for r in relays)
        if relays != self._relays or lost:
            gone = sorted({r.id for r in self._relays} - {r.id for r in relays})
            self.node.update_relays(gone, list(relays), now)
            self._relays = relays

    def add_resource(self, resource: ClientResource, gateway: str) -> None:
        """Route ``resource`` through ``gateway``."""
        self.routes.add(resource, gateway)

    def remove_resource(self, resource_id: uuid.UUID) -> None:
        """The portal took the resource away: the client stops routing it (proxy IPs are kept)."""
        self.routes.remove(resource_id)

    def add_remote_candidates(
        self, now: Instant, gateway: str, candidates: Iterable[str], invalidate: bool = False
    ) -> None:
        self._advance(now)
        if gateway not in self.node.connections:
            # Candidates can overtake the grant through the portal: keep them for the connection.
            self._early.setdefault(gateway, []).extend((c, invalidate) for c in candidates)
            return
        if invalidate:
            for c in candidates:
                self.node.remove_remote_candidate(gateway, c, now)
        else:
            # One message at a time, as Firezone's client adds a whole ``ice_candidates`` message.
            self.node.add_remote_candidates(gateway, tuple(candidates), now)
        self._drain(now)

    def is_connected(self, gateway: str) -> bool:
        return gateway in self._connected

    def forget_domain_nat(self, gateway: str) -> None:
        """Forget the DNS-resource NAT requests made to ``gateway`` (a new flow for a DNS resource should
        not trust gateway state that may have lapsed with the old one): the next packet to a proxy IP
        sends ``assigned_ips`` again and waits for Active."""
        for key in [k for k in self._nat if k[0] == gateway]:
            del self._nat[key]

    def set_dns_servers(self, servers: Iterable[IPAddress]) -> None:
        """The system's DNS servers changed (the first one is asked)."""
        self.dns_servers = tuple(servers)

    def discard_pending(self) -> int:
        """Drop the packets waiting for a connection (the applications gave up); how many there were."""
        n = sum(len(q) for q in self._pending.values())
        self._pending.clear()
        return n

    def reset_connections(self, now: Instant, private_key: bytes | None = None) -> None:
        """Drop every connection, queued packet and DNS-resource NAT request, and re-announce the relays
        (what Firezone's client does when its network changes); grants and routes are kept.

        With ``private_key`` the client also takes that new WireGuard key, as snownet's ``Node::reset``
        does (``rust/connlib/snownet/src/node.rs``): its next flows carry a new public key, so a gateway
        replaces its side of each connection instead of keeping paths that died with the old network."""
        self._advance(now)
        relays = self._relays
        for gid in sorted(self.node.connections):
            self.node.remove_connection(gid)
        self._connected.clear()
        self._pending.clear()
        self._nat.clear()
        if private_key is not None:
            self.private_key = private_key
            self.public_key = public_key(private_key)
            self.node = self._make_node(now)
            self._relays = ()
        self.set_relays(now, ())
        self.set_relays(now, relays)

    # --- application API ------------------------------------------------------------------------------------

    def _src_for(self, dst: IPAddress) -> IPAddress:
        return self.tunnel_v4 if dst.version == 4 else self.tunnel_v6

    def _port(self) -> int:
        port = self._next_port
        self._next_port = FIRST_SPORT + (self._next_port + 1 - FIRST_SPORT) % 20000
        return port

    def send_icmp(self, now: Instant, dst: IPAddress, seq: int, payload: bytes = b"ping") -> bool:
        """An ICMP(v6) echo request to ``dst``; False when no resource routes it."""
        self._advance(now)
        return self._send_app(now, build_icmp_echo(self._src_for(dst), dst, self.echo_ident, seq, payload))

    def send_udp(
        self, now: Instant, dst: IPAddress, dport: int, payload: bytes, sport: int | None = None
    ) -> int | None:
        """A UDP datagram to ``dst``:``dport``; returns the source port used (None when unroutable)."""
        self._advance(now)
        sp = self._port() if sport is None else sport
        ok = self._send_app(now, build_udp_packet(self._src_for(dst), dst, sp, dport, payload))
        return sp if ok else None

    def send_tcp_request(
        self, now: Instant, dst: IPAddress, dport: int, payload: bytes, sport: int | None = None
    ) -> int | None:
        """Open a TCP flow (SYN) and send ``payload`` once the SYN/ACK arrives; returns the source port."""
        self._advance(now)
        sp = self._port() if sport is None else sport
        ok = self._send_app(now, self._tcp.open(self._src_for(dst), dst, dport, sp, payload))
        return sp if ok else None

    def query_dns(
        self, now: Instant, name: str, rtype: str, via: str | None = None, tcp: bool = False
    ) -> DnsAnswer | None:
        """Resolve ``name``: A/AAAA of a DNS resource answered locally with proxy IPs (returned); SRV/TXT of
        a DNS resource forwarded to its gateway (the answer arrives in :attr:`received`, None returned);
        other names get a local NXDOMAIN (the simulated client has no system resolver). With ``via`` (a
        gateway id) the query is sent to that gateway whatever it asks (to test REFUSED and the like)."""
        self._advance(now)
        name = name.lower().rstrip(".")
        hit = self.routes.dns_resource_for(name)
        if via is not None:
            self._forward_dns(now, via, name, rtype, tcp)
            return None
        if hit is None:
            server = self.dns_servers[0] if self.dns_servers else None
            if server is not None and self.routes.route(server) is not None:
                self._query_server(now, server, name, rtype)
                return None
            ans = DnsAnswer(now, name, rtype, "NXDOMAIN", (), "local")
            self._record(ans)
            return ans
        resource, gateway = hit
        if rtype in ("A", "AAAA"):
            d = self.routes.assign(resource.id, gateway, name)
            ips = d.proxy_v4 if rtype == "A" else d.proxy_v6
            ans = DnsAnswer(now, name, rtype, "NOERROR", tuple(str(ip) for ip in ips), "local")
            self._record(ans)
            req = self._nat.get((gateway, name))
            if req is not None:
                req.recreate()
                if req.update(now):
                    self._encapsulate(now, gateway, req.packet)
            self._drain(now)
            return ans
        self._forward_dns(now, gateway, name, rtype, tcp)
        return None

    def _forward_dns(self, now: Instant, gateway: str, name: str, rtype: str, tcp: bool = False) -> None:
        grant = self.grants.get(gateway)
        if grant is None:
            self.stats.incr("dns.no_gateway")
            return
        q = dns.message.make_query(name, rtype)
        q.id = self._next_qid
        self._next_qid = self._next_qid % 0xFFFF + 1
        self._dns_pending[q.id] = (name, rtype)
        sp = self._port()
        wire = q.to_wire()
        if tcp:
            # DNS over TCP (RFC 7766): the message with its two-byte length, on the SYN/ACK.
            self._dns_tcp[sp] = gateway
            packet = self._tcp.open(self.tunnel_v4, grant.tunnel_v4, DNS_FORWARD_PORT, sp, _tcp_dns(wire))
        else:
            packet = build_udp_packet(self.tunnel_v4, grant.tunnel_v4, sp, DNS_FORWARD_PORT, wire)
        self._encapsulate(now, gateway, packet)
        self._drain(now)

    def _query_server(self, now: Instant, server: IPAddress, name: str, rtype: str) -> None:
        q = dns.message.make_query(name, rtype)
        q.id = self._next_qid
        self._next_qid = self._next_qid % 0xFFFF + 1
        self._dns_pending[q.id] = (name, rtype)
        self._send_app(now, build_udp_packet(self._src_for(server), server, self._port(), 53, q.to_wire()))

    def send_packet(self, now: Instant, packet: bytes) -> bool:
        """Route any application IP packet (what a TUN device hands over) like the API's sends; False
        when nothing routes it or it does not parse."""
        self._advance(now)
        try:
            return self._send_app(now, packet)
        except DecodeError:
            self.stats.incr("dropped.malformed")
            return False

    def send_packets(self, now: Instant, packets: list[bytes]) -> int:
        """A batch of application packets, each as :meth:`send_packet`; how many were routed. The node's
        commands are collected once, after the batch."""
        self._advance(now)
        sent = 0
        for packet in packets:
            try:
                sent += self._send_app(now, packet, drain=False)
            except DecodeError:
                self.stats.incr("dropped.malformed")
        self._drain(now)
        return sent

    def send_raw(self, now: Instant, gateway: str, packet: bytes) -> None:
        """Any IP packet to ``gateway`` through the tunnel, unrouted and unchecked (spoofing, foreign
        destinations, control packets: what a misbehaving client could send)."""
        self._advance(now)
        self._encapsulate(now, gateway, packet)
        self._drain(now)

    def proxy_ips(self, name: str) -> tuple[IPAddress, ...]:
        """The proxy IPs assigned to ``name`` so far (IPv4 then IPv6), empty if none."""
        return self.routes.proxy_ips(name)

    def dns_resource_for(self, name: str) -> tuple[ClientResource, str] | None:
        """The DNS resource ``name`` (lower case, no trailing dot) falls under, with its gateway's id."""
        return self.routes.dns_resource_for(name)

    # --- internals: sending ---------------------------------------------------------------------------------

    def _send_app(self, now: Instant, packet: bytes, drain: bool = True) -> bool:
        route = self.routes.route_raw(packet)
        if route is None:
            self.stats.incr("dropped.unroutable")
            self.events.append((now, "", f"unroutable {parse_ip(packet).dst}"))
            return False
        gateway, proxied = route
        if proxied is None:
            self._encapsulate(now, gateway, packet)
        else:
            rid, domain = proxied
            req = self._nat.get((gateway, domain))
            if req is None:
                d = self.routes.domain(rid, domain)
                req = DomainNatRequest(build_assigned_ips(rid, domain, (*d.proxy_v4, *d.proxy_v6)), now)
                self._nat[(gateway, domain)] = req
                self._encapsulate(now, gateway, req.packet)
                out, resend = req.outgoing(now, packet)
            else:
                out, resend = req.outgoing(now, packet)
            if resend:
                self._encapsulate(now, gateway, req.packet)
            if out is not None:
                self._encapsulate(now, gateway, out)
        if drain:
            self._drain(now)
        return True

    # --- internals: receiving -------------------------------------------------------------------------------

    def _inbound(self, now: Instant, gateway: str, packet: bytes) -> None:
        if is_control_packet(packet):
            self._control(now, gateway, packet)
            return
        if self.write_tun:
            self._out.append(WriteTun(packet))
            return
        try:
            ip = parse_ip(packet)
        except DecodeError:
            self.stats.incr("dropped.malformed")
            return
        if ip.dst not in (self.tunnel_v4, self.tunnel_v6):
            self.stats.incr("dropped.not_for_me")
            return
        if ip.fragment or not l4_checksum_ok(packet):  # as a host's stack: a bad checksum is dropped
            self.stats.incr("dropped.bad_checksum")
            return
        try:
            if ip.proto in (PROTO_ICMP, PROTO_ICMPV6):
                self._icmp_in(now, packet, ip.src)
            elif ip.proto == PROTO_UDP:
                self._udp_in(now, ip.src, parse_udp(ip.payload))
            elif ip.proto == PROTO_TCP:
                self._tcp_in(now, ip.src, ip.payload)
            else:
                self.stats.incr("dropped.protocol")
        except DecodeError:
            self.stats.incr("dropped.malformed")

    def _control(self, now: Instant, gateway: str, packet: bytes) -> None:
        try:
            cp = parse_control_packet(packet)
            if cp.event == EVENT_GOODBYE:
                if packet != firezone_control(EVENT_GOODBYE, b""):
                    self.stats.incr("control.not_canonical")
                self._record(GoodbyeReceived(now, gateway))
                self._connected.discard(gateway)
                self.node.remove_connection(gateway)
                return
            if cp.event != EVENT_DOMAIN_STATUS:
                self.stats.incr("control.ignored")
                return
            st = decode_domain_status(cp.payload)
        except DecodeError:
            self.stats.incr("control.malformed")
            return
        if packet != firezone_domain_status(st):  # for the tests only (Firezone's client does not check)
            self.stats.incr("control.not_canonical")
        self._record(DomainStatusReceived(now, gateway, st.resource, st.domain, st.status.value))
        req = self._nat.get((gateway, st.domain))
        if req is None:
            return
        for p in req.on_status(st.status):
            self._encapsulate(now, gateway, p)

    def _icmp_in(self, now: Instant, packet: bytes, src: IPAddress) -> None:
        rec = icmp_record(now, packet, src)
        if rec is not None:
            self._record(rec)

    def _udp_in(self, now: Instant, src: IPAddress, udp: UdpHeader) -> None:
        if udp.sport == DNS_FORWARD_PORT and any(
            src in (g.tunnel_v4, g.tunnel_v6) for g in self.grants.values()
        ):
            self._dns_in(now, udp.payload)
            return
        if udp.sport == 53 and src in self.dns_servers:
            self._dns_in(now, udp.payload, "tunnel")
            return
        self._record(UdpReceived(now, src, udp.sport, udp.dport, udp.payload))

    def _dns_in(self, now: Instant, message: bytes, source: str = "gateway") -> None:
        try:
            qid = int.from_bytes(message[:2], "big") if len(message) >= 2 else -1
            asked = self._dns_pending.pop(qid, None)
            if asked is None:
                self.stats.incr("dns.unexpected")
                return
            self._record(dns_record(now, message, *asked, source=source))
        except DecodeError:
            self.stats.incr("dns.malformed")

    def _tcp_in(self, now: Instant, src: IPAddress, seg: bytes) -> None:
        tcp = parse_tcp(seg)
        gateway = self._dns_tcp.get(tcp.dport) if tcp.sport == DNS_FORWARD_PORT else None
        if gateway is not None:
            request = self._tcp.on_segment(self._src_for(src), src, tcp)
            if request is not None:
                self._encapsulate(now, gateway, request)
            if len(tcp.payload) >= 2:
                del self._dns_tcp[tcp.dport]
                size = int.from_bytes(tcp.payload[:2], "big")
                self._dns_in(now, tcp.payload[2 : 2 + size])
            return
        self._record(TcpReceived(now, src, tcp.sport, tcp.dport, tcp.flags, tcp.payload))
        request = self._tcp.on_segment(self._src_for(src), src, tcp)
        if request is not None:
            self._send_app(now, request)


def _tcp_dns(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message
