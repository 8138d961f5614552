"""A simulated Firezone client built from the core's parts, with an application API for scenarios.

Theory of operation
-------------------
:class:`SimClient` is a pure sans-IO component. It owns one controlling ICE :class:`Node` whose tunnels
are WireGuard initiators (one connection per gateway, connection id = the gateway's id) and plays the
parts of Firezone's client that matter to a gateway:

- **Access** comes from the portal side (:mod:`sim.client_portal`): :meth:`SimClient.grant` hands over
  what the portal derives for the pair (gateway public key, preshared key, both ICE credentials, relays
  with the client's TURN credentials, the gateway's tunnel addresses) and the resource; the client
  upserts the connection and routes the resource to that gateway. Local ICE candidates leave as
  :class:`SignalIce` commands (the host hands them to the portal); the gateway's arrive through
  :meth:`SimClient.add_remote_candidates`.
- **Routing** of an application packet: a proxy IP goes to its DNS resource's gateway, else the longest
  CIDR resource prefix, else the Internet resource. Unroutable packets are counted and dropped. Packets
  sent before the connection is established wait in a small per-gateway queue (as the real client's
  buffer does) and leave on ``ConnectionEstablished``.
- **DNS resources**: an A/AAAA query for a name matching a DNS resource is answered locally with proxy
  IPs the client invents, 4 IPv4 from ``100.96.0.0/11`` and 4 IPv6 from ``fd00:2021:1111:8000::/107`` per
  (resource, domain), handed out in order. The first packet to a proxy IP starts a
  :class:`~gateway_core.policy.p2p_control.DomainNatRequest` for (gateway, domain): ``assigned_ips`` is
  sent in-band, packets are buffered until ``domain_status`` says Active, then flushed; a repeated query
  re-sends ``assigned_ips`` (§8.6).
- **SRV/TXT** queries for names matching a DNS resource are sent through the tunnel to the gateway's
  tunnel address, port 53535, over UDP; the answer comes back the same way.
- **Everything received** is appended to :attr:`SimClient.received` as typed records (echo replies, ICMP
  errors with type/code and the quoted flow, UDP and TCP payloads, DNS answers, ``domain_status``,
  goodbyes), with the virtual time, for assertions.

The TCP "stack" is the smallest that crosses a NAT honestly: SYN, then on SYN/ACK one ACK segment
carrying the request; the resource's data segment is the response (no retransmission).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import dns.exception
import dns.message
import dns.rcode

from gateway_core.addr import IPAddress, IPNetwork, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command
from gateway_core.contract import Deadline
from gateway_core.dns.patterns import is_subdomain
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DecodeError, UsageError
from gateway_core.node.events import (
    ConnectionEstablished,
    ConnectionFailed,
    InvalidateIceCandidate,
    NewIceCandidate,
)
from gateway_core.node.factory import wireguard_node
from gateway_core.node.node import RelayConfig
from gateway_core.policy.p2p_control import (
    EVENT_DOMAIN_STATUS,
    EVENT_GOODBYE,
    DomainNatRequest,
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
    TCP_ACK,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    UdpHeader,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
    parse_ip,
    parse_tcp,
    parse_udp,
)
from gateway_core.wireguard.crypto import public_key
from sim.hosts.client_types import (
    ClientResource,
    DnsAnswer,
    DomainStatusReceived,
    EchoReply,
    GatewayGrant,
    GoodbyeReceived,
    IcmpErrorReceived,
    Received,
    SignalIce,
    TcpReceived,
    UdpReceived,
    dns_record,
    icmp_record,
)

__all__ = [
    "ClientResource",
    "DnsAnswer",
    "DomainStatusReceived",
    "EchoReply",
    "GatewayGrant",
    "GoodbyeReceived",
    "IcmpErrorReceived",
    "Received",
    "SignalIce",
    "SimClient",
    "TcpReceived",
    "UdpReceived",
]

PROXY_V4 = IPv4Network("100.96.0.0/11")
PROXY_V6 = IPv6Network("fd00:2021:1111:8000::/107")
"""Firezone's DNS-resource proxy ranges (``client.rs:51,56``)."""
PROXY_IPS_PER_FAMILY = 4
"""The client assigns 4 proxy IPs per family and domain (datapath §8.1)."""
DNS_FORWARD_PORT = 53535
"""The gateway's layer-4 DNS servers listen on its tunnel addresses at this port (datapath §10.2)."""
PENDING_PER_GATEWAY = 32
"""Packets kept while a connection comes up (like the 32-packet buffers of the real client)."""
FIRST_SPORT = 40000
"""First source port of the client's UDP/TCP flows and DNS queries (counts up, deterministic)."""


@dataclass(slots=True)
class _Domain:
    resource: uuid.UUID
    gateway: str
    proxy_v4: tuple[IPv4Address, ...]
    proxy_v6: tuple[IPv6Address, ...]


@dataclass(slots=True)
class _TcpPending:
    payload: bytes
    isn: int


class SimClient:
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
        self.node = wireguard_node(
            private_key,
            entropy,
            SeededEntropy(entropy.random_bytes(16)),
            now,
            lambda t: self._wall0 + t,
            controlling=True,
        )
        self.grants: dict[str, GatewayGrant] = {}
        self._relays: tuple[RelayConfig, ...] = ()
        self._early: dict[str, list[tuple[str, bool]]] = {}
        self.resources: dict[uuid.UUID, tuple[ClientResource, str]] = {}
        self._cidrs: list[tuple[IPNetwork, uuid.UUID]] = []
        self._domains: dict[tuple[uuid.UUID, str], _Domain] = {}
        self._proxy: dict[IPAddress, tuple[uuid.UUID, str]] = {}
        self._next_v4 = int(PROXY_V4.network_address) + 1
        self._next_v6 = int(PROXY_V6.network_address) + 1
        self._nat: dict[tuple[str, str], DomainNatRequest] = {}
        self._pending: dict[str, deque[bytes]] = {}
        self._connected: set[str] = set()
        self._dns_pending: dict[int, tuple[str, str]] = {}
        self._tcp: dict[tuple[IPAddress, int, int], _TcpPending] = {}
        self._next_port = FIRST_SPORT
        self._next_qid = 1
        self._out: deque[Command] = deque()
        self.tun_sink: Callable[[Instant, str, bytes], None] | None = None
        """When set (a client with a real TUN device, ``e2e.client``), every decrypted IP packet that is
        not a control packet goes here as ``(now, gateway, packet)`` instead of into :attr:`received`."""

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
                self.node.add_remote_candidate(grant.gateway, c, now)
        self._drain(now)

    def set_relays(self, now: Instant, relays: tuple[RelayConfig, ...]) -> None:
        """The portal's current relays (relays went away, came, or got new credentials)."""
        self._advance(now)
        self._set_relays(now, relays)
        self._drain(now)

    def _set_relays(self, now: Instant, relays: tuple[RelayConfig, ...]) -> None:
        if relays != self._relays:
            gone = sorted({r.id for r in self._relays} - {r.id for r in relays})
            self.node.update_relays(gone, list(relays), now)
            self._relays = relays

    def add_resource(self, resource: ClientResource, gateway: str) -> None:
        self.resources[resource.id] = (resource, gateway)
        if resource.kind == "cidr":
            net = ip_network(resource.address)
            self._cidrs = [(n, r) for n, r in self._cidrs if r != resource.id] + [(net, resource.id)]
            self._cidrs.sort(key=lambda x: (-x[0].prefixlen, str(x[0])))

    def remove_resource(self, resource_id: uuid.UUID) -> None:
        """The portal took the resource away: the client stops routing it (proxy IPs are kept)."""
        self.resources.pop(resource_id, None)
        self._cidrs = [(n, r) for n, r in self._cidrs if r != resource_id]

    def add_remote_candidates(
        self, now: Instant, gateway: str, candidates: Iterable[str], invalidate: bool = False
    ) -> None:
        self._advance(now)
        if gateway not in self.node.connections:
            # Candidates can overtake the grant through the portal: keep them for the connection.
            self._early.setdefault(gateway, []).extend((c, invalidate) for c in candidates)
            return
        for c in candidates:
            if invalidate:
                self.node.remove_remote_candidate(gateway, c, now)
            else:
                self.node.add_remote_candidate(gateway, c, now)
        self._drain(now)

    def is_connected(self, gateway: str) -> bool:
        return gateway in self._connected

    # --- network changes (used by the stateful test's roaming and gateway-restart steps) ------------------

    def reset_connections(self, now: Instant) -> None:
        """The client's network changed (it roamed): like Firezone's client, drop every connection,
        packet buffer and DNS-resource NAT request, and allocate on the relays again."""
        relays = self._relays
        for gid in sorted(self.node.connections):
            self.node.remove_connection(gid)
        self._connected.clear()
        self._pending.clear()
        self._nat.clear()
        self.set_relays(now, ())
        self.set_relays(now, relays)

    def forget_nat_requests(self, gateway: str) -> None:
        """Start the DNS-resource NAT requests towards ``gateway`` over (a new connection to it: the
        gateway may not have the old NAT state any more)."""
        for key in [k for k in self._nat if k[0] == gateway]:
            del self._nat[key]

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
        isn = (sp << 16) | (dport & 0xFFFF)
        self._tcp[(dst, dport, sp)] = _TcpPending(payload, isn)
        ok = self._send_app(now, build_tcp_packet(self._src_for(dst), dst, sp, dport, seq=isn, flags=TCP_SYN))
        return sp if ok else None

    def query_dns(self, now: Instant, name: str, rtype: str, via: str | None = None) -> DnsAnswer | None:
        """Resolve ``name``: A/AAAA of a DNS resource answered locally with proxy IPs (returned); SRV/TXT of
        a DNS resource forwarded to its gateway (the answer arrives in :attr:`received`, None returned);
        other names get a local NXDOMAIN (the simulated client has no system resolver). With ``via`` (a
        gateway id) the query is sent to that gateway whatever it asks (to test REFUSED and the like)."""
        self._advance(now)
        name = name.lower().rstrip(".")
        hit = self._dns_resource_for(name)
        if via is not None:
            self._forward_dns(now, via, name, rtype)
            return None
        if hit is None:
            ans = DnsAnswer(now, name, rtype, "NXDOMAIN", (), "local")
            self._record(ans)
            return ans
        resource, gateway = hit
        if rtype in ("A", "AAAA"):
            d = self._assign(resource.id, gateway, name)
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
        self._forward_dns(now, gateway, name, rtype)
        return None

    def _forward_dns(self, now: Instant, gateway: str, name: str, rtype: str) -> None:
        grant = self.grants.get(gateway)
        if grant is None:
            self.stats.incr("dns.no_gateway")
            return
        q = dns.message.make_query(name, rtype)
        q.id = self._next_qid
        self._next_qid = self._next_qid % 0xFFFF + 1
        self._dns_pending[q.id] = (name, rtype)
        sp = self._port()
        packet = build_udp_packet(self.tunnel_v4, grant.tunnel_v4, sp, DNS_FORWARD_PORT, q.to_wire())
        self._encapsulate(now, gateway, packet)
        self._drain(now)

    def send_packet(self, now: Instant, packet: bytes) -> bool:
        """Route any application IP packet (what a TUN device hands over) like the API's sends; False
        when nothing routes it or it does not parse."""
        self._advance(now)
        try:
            return self._send_app(now, packet)
        except DecodeError:
            self.stats.incr("dropped.malformed")
            return False

    def send_raw(self, now: Instant, gateway: str, packet: bytes) -> None:
        """Any IP packet to ``gateway`` through the tunnel, unrouted and unchecked (spoofing, foreign
        destinations, control packets: what a misbehaving client could send)."""
        self._advance(now)
        self._encapsulate(now, gateway, packet)
        self._drain(now)

    def proxy_ips(self, name: str) -> tuple[IPAddress, ...]:
        """The proxy IPs assigned to ``name`` so far (IPv4 then IPv6), empty if none."""
        for (_, domain), d in sorted(self._domains.items(), key=lambda kv: str(kv[0])):
            if domain == name.lower().rstrip("."):
                return (*d.proxy_v4, *d.proxy_v6)
        return ()

    # --- internals: sending ---------------------------------------------------------------------------------

    def _dns_resource_for(self, name: str) -> tuple[ClientResource, str] | None:
        hits = [
            (r, gw) for r, gw in self.resources.values() if r.kind == "dns" and is_subdomain(name, r.address)
        ]
        if not hits:
            return None
        # The most specific pattern wins (longest address), ties by id: deterministic.
        return sorted(hits, key=lambda h: (-len(h[0].address), str(h[0].id)))[0]

    def _assign(self, resource: uuid.UUID, gateway: str, name: str) -> _Domain:
        d = self._domains.get((resource, name))
        if d is None:
            v4 = tuple(IPv4Address(self._next_v4 + i) for i in range(PROXY_IPS_PER_FAMILY))
            v6 = tuple(IPv6Address(self._next_v6 + i) for i in range(PROXY_IPS_PER_FAMILY))
            self._next_v4 += PROXY_IPS_PER_FAMILY
            self._next_v6 += PROXY_IPS_PER_FAMILY
            d = _Domain(resource, gateway, v4, v6)
            self._domains[(resource, name)] = d
            for a in v4:
                self._proxy[a] = (resource, name)
            for b in v6:
                self._proxy[b] = (resource, name)
        return d

    def _route(self, dst: IPAddress) -> tuple[str, tuple[uuid.UUID, str] | None] | None:
        """(gateway, (resource, domain) for a proxy IP) or None when nothing routes ``dst``."""
        proxied = self._proxy.get(dst)
        if proxied is not None:
            entry = self.resources.get(proxied[0])
            return None if entry is None else (entry[1], proxied)
        for net, rid in self._cidrs:
            if dst.version == net.version and dst in net:
                return self.resources[rid][1], None
        for r, gw in sorted(self.resources.values(), key=lambda x: str(x[0].id)):
            if r.kind == "internet" and dst not in PROXY_V4 and dst not in PROXY_V6:
                return gw, None
        return None

    def _send_app(self, now: Instant, packet: bytes) -> bool:
        dst = parse_ip(packet).dst
        route = self._route(dst)
        if route is None:
            self.stats.incr("dropped.unroutable")
            self.events.append((now, "", f"unroutable {dst}"))
            return False
        gateway, proxied = route
        if proxied is None:
            self._encapsulate(now, gateway, packet)
        else:
            rid, domain = proxied
            req = self._nat.get((gateway, domain))
            if req is None:
                d = self._domains[(rid, domain)]
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
        self._drain(now)
        return True

    # --- internals: receiving -------------------------------------------------------------------------------

    def _inbound(self, now: Instant, gateway: str, packet: bytes) -> None:
        if is_control_packet(packet):
            self._control(now, gateway, packet)
            return
        if self.tun_sink is not None:
            self.tun_sink(now, gateway, packet)
            return
        try:
            ip = parse_ip(packet)
        except DecodeError:
            self.stats.incr("dropped.malformed")
            return
        if ip.dst not in (self.tunnel_v4, self.tunnel_v6):
            self.stats.incr("dropped.not_for_me")
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
        self._record(UdpReceived(now, src, udp.sport, udp.dport, udp.payload))

    def _dns_in(self, now: Instant, message: bytes) -> None:
        try:
            qid = int.from_bytes(message[:2], "big") if len(message) >= 2 else -1
            asked = self._dns_pending.pop(qid, None)
            if asked is None:
                self.stats.incr("dns.unexpected")
                return
            self._record(dns_record(now, message, *asked))
        except DecodeError:
            self.stats.incr("dns.malformed")

    def _tcp_in(self, now: Instant, src: IPAddress, seg: bytes) -> None:
        tcp = parse_tcp(seg)
        self._record(TcpReceived(now, src, tcp.sport, tcp.dport, tcp.flags, tcp.payload))
        key = (src, tcp.sport, tcp.dport)
        pending = self._tcp.get(key)
        if pending is None:
            return
        if tcp.flags & TCP_RST:
            del self._tcp[key]
            return
        if tcp.flags & TCP_SYN and tcp.flags & TCP_ACK:
            del self._tcp[key]
            packet = build_tcp_packet(
                self._src_for(src),
                src,
                tcp.dport,
                tcp.sport,
                pending.payload,
                seq=(pending.isn + 1) & 0xFFFFFFFF,
                ack=(tcp.seq + 1) & 0xFFFFFFFF,
                flags=TCP_ACK | TCP_PSH,
            )
            self._send_app(now, packet)
