"""The ``flow_edge`` step of the stateful harness: the packets of one flow, through the gateway's flow cache.

Theory of operation. Once a packet of a TCP or UDP flow has gone the gateway's full way, the decision is
kept (``gateway_core/policy/flowcache.py``) and the flow's next packets are forwarded from the cache, in
both directions, *before* the validation of the full way: the cache must refuse every packet the full way
would treat otherwise. A ``flow_edge`` step makes one client send, to the CIDR resource's web host or
through the DNS-resource NAT to a proxy IP of ``app.corp.test`` (``a``; the family of the proxy IP from
``b``), and checks each packet against the model like any probe. Besides what arrives and what is dropped, the
step predicts exactly which packets the cache forwards, in each direction (the gateway's counters
``gateway.flow_cache_hits.outbound``/``.inbound``, :data:`HITS`), from decision 0155: the first packet of
a flow in each direction goes the full way and is cached, the following ones are the cache's; a NAT
session that starts or ends (a new flow through the NAT, a RST, 120 s idle) clears the client's cache, as
do filter and translation changes (a DNS query's NAT set-up: the step starts new flows after one); a
malformed packet, a RST and anything not TCP or UDP are never the cache's; the cache of a direction is
cleared when it holds :data:`~gateway_core.policy.flowcache.MAX_FLOWS` and a new flow comes. In order:

1. two datagrams of one UDP flow to the echo port (the second one and its answer go through the cache);
2. the :data:`UDP_CASES`, malformed packets of that flow sent raw into the tunnel: each must be dropped,
   nothing forwarded or answered, and counted under the reason the full way's validation gives
   (``drop.<reason>`` goes up by one); then the :data:`TUN_UDP_CASES`, malformed answers of the flow
   from the resource's host through the TUN (refused alike), an empty answer and one of exactly 1280
   bytes (the cache's, delivered) and one of 1281 (dropped);
3. a third datagram of the flow, then a TCP request from the same source port to the echo port (a new NAT
   session, answered by a RST that ends it) and a fourth datagram (the full way again, through the NAT);
4. a TCP request to the open web port, the :data:`TCP_CASES` from the client, the :data:`TUN_TCP_CASES`
   from the host, a bare ACK from the host (the cache's), the request again, a RST from the host;
5. the shortest packets the TUN routes to a client (a bare IPv4 or IPv6 header) and one to a tunnel
   address nobody has; a UDP flow to the gateway's own tunnel address and one from it;
6. through the NAT only: a flow whose NAT port is taken (its port rewritten both ways, the high byte
   too), a flow kept alive over 140 s by the cache's packets alone, and (IPv4) the cache filled to its
   bound.

Predictions come from the model (:meth:`ReferenceModel.predict_packet`), the drops from the validation
rules (``gateway_core.wire.ip.validate``, as Firezone's ``IpPacket::new``), not from the cache's code. The
step has weight 0 (never drawn: the drawn programs stay as they were); :func:`flow_program` walks it
(``make test``, ``make mutation``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from devpeers.client_types import DnsAnswer
from gateway_core.addr import IPAddress
from gateway_core.clock import secs
from gateway_core.policy.flowcache import MAX_FLOWS
from gateway_core.wire.ip import MAX_IP_SIZE
from gateway_core.wire.ipbuild import build_ip, build_tcp_packet, build_udp_packet
from gateway_core.wire.ipconst import TCP_ACK, TCP_RST
from sim.hosts.resources import Arrival
from sim.reference import Outcome, Prediction
from sim.stateful.probes import PROBE_SETTLE, Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import Handler, InvariantError, Scene
from sim.stateful.traffic import NO_HOST_V4

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

NAME = "app.corp.test"
"""The DNS-resource name the NAT flows go to (addresses of both families)."""
ECHO, WEB = 7, 80
"""The hosts' UDP echo port and open TCP port (TCP to the echo port is answered with a RST)."""
HITS = ("gateway.flow_cache_hits.outbound", "gateway.flow_cache_hits.inbound")
"""The gateway's counters of packets forwarded by the flow cache, from the client and to it."""
GATEWAY_PORT = 5353
"""A UDP port of the gateway's own tunnel address (its host answers port unreachable)."""
UDP_IDLE_END = secs(125)
"""Longer than a UDP NAT session's idle lifetime (120 s, ``gateway_core.policy.nat.UDP_TTL``)."""
CLOSED_UDP = 9
"""A UDP port the hosts do not answer on (they send ICMP port unreachable)."""
REFRESH_GAP = secs(70)
"""Between two packets of the refreshed flow: two gaps exceed the idle lifetime, one does not."""
COLLIDING_PORT = {4: 0x50FF, 6: 0x51FF}
"""Source ports of the flows whose NAT port is taken: the next free one differs in its high byte as well
(a cached checksum constant must count the whole port)."""
FILL_PORT = 40000
"""The first source port of the flows that fill the cache (beyond the probes' 20000-38999)."""
UNASSIGNED_V4 = IPv4Address("100.64.3.211")
"""A tunnel address no client of the program has: a TUN packet to it has no client."""


def _v4(packet: bytes) -> bool:
    return packet[0] >> 4 == 4


def _l4(packet: bytes) -> int:
    return 20 if _v4(packet) else 40


def _udp_length(length: Callable[[int], int]) -> Callable[[bytes], bytes]:
    """The UDP length field set to ``length(the datagram's real length)``."""

    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        off = _l4(p)
        b[off + 4 : off + 6] = struct.pack("!H", length(len(p) - off))
        return bytes(b)

    return mangle


def _ip_length(extra: int) -> Callable[[bytes], bytes]:
    """The IP header claims ``extra`` bytes more than the packet has."""

    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        if _v4(p):
            b[2:4] = struct.pack("!H", len(p) + extra)
        else:
            b[4:6] = struct.pack("!H", len(p) - 40 + extra)
        return bytes(b)

    return mangle


def _fragment(field: int) -> Callable[[bytes], bytes]:
    """IPv4 flags and fragment offset (an IPv6 packet is left alone: the case is skipped there)."""

    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        b[6:8] = struct.pack("!H", field)
        return bytes(b)

    return mangle


def _too_large(p: bytes) -> bytes:
    """The same flow's datagram padded to one byte over the gateway's 1280-byte limit (lengths kept
    consistent)."""
    off = _l4(p)
    pad = MAX_IP_SIZE + 1 - len(p)
    b = bytearray(p + bytes(pad))
    b[off + 4 : off + 6] = struct.pack("!H", len(b) - off)
    if _v4(p):
        b[2:4] = struct.pack("!H", len(b))
    else:
        b[4:6] = struct.pack("!H", len(b) - 40)
    return bytes(b)


def _data_offset(words: int) -> Callable[[bytes], bytes]:
    def mangle(p: bytes) -> bytes:
        b = bytearray(p)
        off = _l4(p)
        b[off + 12] = (words << 4) | (b[off + 12] & 0x0F)
        return bytes(b)

    return mangle


def _truncated_tcp(p: bytes) -> bytes:
    """The segment cut to 12 bytes of TCP header (the IP length says so: only the TCP header is short)."""
    b = bytearray(p[: _l4(p) + 12])
    if _v4(p):
        b[2:4] = struct.pack("!H", len(b))
    else:
        b[4:6] = struct.pack("!H", len(b) - 40)
    return bytes(b)


@dataclass(frozen=True, slots=True)
class FlowCase:
    """A malformed packet of a cached flow and the drop reason its validation gives."""

    what: str
    mangle: Callable[[bytes], bytes]
    reason: str
    v4_only: bool = False


UDP_CASES = (
    FlowCase("UDP length one byte beyond the datagram", _udp_length(lambda n: n + 1), "malformed_l4"),
    FlowCase("UDP length below its header", _udp_length(lambda n: 7), "malformed_l4"),
    FlowCase("IP length beyond the packet", _ip_length(4), "malformed_ip"),
    FlowCase("IPv4 more-fragments flag", _fragment(0x2000), "fragment", v4_only=True),
    FlowCase("IPv4 fragment offset", _fragment(0x0001), "fragment", v4_only=True),
    FlowCase("one byte over 1280", _too_large, "ip_too_large"),
)
TCP_CASES = (
    FlowCase("TCP data offset of 4 words", _data_offset(4), "malformed_l4"),
    FlowCase("TCP data offset beyond the segment", _data_offset(15), "malformed_l4"),
)
TUN_UDP_CASES = (
    *UDP_CASES,
    FlowCase("IP length short of the packet (the UDP length then beyond it)", _ip_length(-4), "malformed_l4"),
)
"""Malformed answers of a cached flow from the resource's host, through the TUN: the WireGuard layer does
not stand before them as it does before the client's (it drops a packet shorter than its IP length)."""
TUN_TCP_CASES = (*TCP_CASES, FlowCase("TCP header cut to 12 bytes", _truncated_tcp, "malformed_l4"))


class FlowEdges:
    """See the module docstring."""

    def __init__(self, scene: Scene, traffic: Traffic) -> None:
        self.s = scene
        self.traffic = traffic
        self.out: set[tuple[str, int, IPAddress, int]] = set()
        """Flows ``(proto, sport, destination, port)`` whose client packets the gateway has cached (the
        model: decision 0155), and (:attr:`inb`) those whose answers it has cached."""
        self.inb: set[tuple[str, int, IPAddress, int]] = set()
        self.sessions: set[tuple[str, int, IPAddress]] = set()
        """The NAT sessions ``(proto, sport, proxy IP)`` of the step's flows."""

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.FLOW_EDGE: self._do_flow_edge}

    def _forget(self) -> None:
        """An event that clears the client's whole cache (a NAT session started or ended, the filters or a
        translation changed)."""
        self.out.clear()
        self.inb.clear()

    def _do_flow_edge(self, step: Step, c: int) -> None:
        s = self.s
        nat = bool(step.a % 2)
        self._forget()  # a DNS query below may set up the NAT; the step's flows are new ones anyway
        self.sessions.clear()
        if nat:
            if (c, "app") not in s.model.routes:
                s.coverage["flow_edge_skipped"] += 1
                return
            dst = self._proxy_ip(c, bool(step.b % 2))
        else:
            dst = self.traffic.web_target(0)
        if not s.model.has_peer(c, s.world.now):
            s.coverage["flow_edge_skipped"] += 1
            return
        if (
            nat
        ):  # the name's NAT set-up (a filter rebuild) may land during the first packet: a flow of its own
            self._probe(c, "udp", dst, ECHO, nat, check=False)
            self._forget()
        first = self._probe(c, "udp", dst, ECHO, nat)
        second = self._probe(c, "udp", dst, ECHO, nat, first.sport)
        for case in UDP_CASES:
            if not (case.v4_only and dst.version == 6):
                self._malformed(c, "udp", dst, ECHO, first.sport, case)
        answer = self._answer(second, first.sport)
        for case in TUN_UDP_CASES:
            if not (case.v4_only and dst.version == 6):
                self._inject(c, case.mangle(answer(b"late")), case.what, case.reason)
        self._inject(c, answer(b""), "an empty answer", None, hit=True)
        self._inject(c, _too_large(answer(b"")), "a 1281-byte answer", "ip_too_large")
        full = bytes(MAX_IP_SIZE - (28 if dst.version == 4 else 48))
        self._inject(c, answer(full), "a 1280-byte answer", None, hit=True)
        self._probe(c, "udp", dst, ECHO, nat, first.sport)
        reset = self._probe(c, "tcp", dst, ECHO, nat, first.sport)  # a new NAT session, ended by the RST
        self._after_reset(c, reset, second, nat)
        self._probe(c, "udp", dst, ECHO, nat, first.sport)
        web = self._probe(c, "tcp", dst, WEB, nat)
        for case in TCP_CASES:
            self._malformed(c, "tcp", dst, WEB, web.sport, case)
        segment = self._answer(web, web.sport, tcp=True)
        for case in TUN_TCP_CASES:
            self._inject(c, case.mangle(segment(b"late", TCP_ACK)), case.what, case.reason)
        self._inject(c, segment(b"", TCP_ACK), "a bare ACK", None, hit=True)
        self._probe(c, "tcp", dst, WEB, nat, web.sport)
        self._inject(
            c, segment(b"", TCP_RST | TCP_ACK), "a RST", None, hit=False, ends=("tcp", web.sport, dst)
        )
        self._probe(c, "udp", dst, ECHO, nat, first.sport)
        self._route_edges(c, web, nat)
        self._gateway_flows(c, dst.version == 6)
        if nat:
            self._colliding_flow(c, dst, COLLIDING_PORT[dst.version])
            refreshed = self._refreshed_flow(c, dst)
            if dst.version == 4:
                self._full_cache(c, dst, refreshed)
            else:
                self._unreachable(c)

    def _answer(self, p: Probe, sport: int, tcp: bool = False) -> Callable[..., bytes]:
        """A builder of more answers of the flow of ``p`` from its host (as the host sent its answer)."""
        if not p.arrivals:
            raise InvariantError(f"{p.what}: nothing arrived")
        a: Arrival = p.arrivals[-1]

        def udp(payload: bytes) -> bytes:
            return build_udp_packet(a.dst, a.src, a.dport, a.sport, payload)

        def segment(payload: bytes, flags: int) -> bytes:
            return build_tcp_packet(a.dst, a.src, a.dport, a.sport, payload, flags=flags)

        return segment if tcp else udp

    def _hits(self) -> tuple[int, int]:
        st = self.s.gw.gateway.stats()
        return st.get(HITS[0], 0), st.get(HITS[1], 0)

    def _check_hits(self, what: str, before: tuple[int, int], want: tuple[int, int]) -> None:
        """The packets the flow cache forwarded (from the client, to it) are exactly the predicted ones."""
        got = self._hits()
        delta = (got[0] - before[0], got[1] - before[1])
        if not self.s.model.lossy and delta != want:
            raise InvariantError(f"{what}: flow cache hits (outbound, inbound) {delta}, expected {want}")
        self.s.coverage["event:flow_cache_checked"] += 1

    def _proxy_ip(self, c: int, v6: bool, name: str = NAME) -> IPAddress:
        s = self.s
        client = s.client(c)
        before = len(client.received)
        rtype = "AAAA" if v6 else "A"
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, name, rtype))
        answers = [r for r in client.received[before:] if isinstance(r, DnsAnswer)]
        if len(answers) != 1 or answers[0].rcode != "NOERROR":
            raise InvariantError(f"local {rtype} answer for {name}: {answers}")
        s.model.nat_query(c, name)
        proxies = client.proxy_ips(name)
        return proxies[4] if v6 else proxies[0]

    def _probe(
        self,
        c: int,
        proto: str,
        dst: IPAddress,
        port: int,
        nat: bool,
        sport: int = 0,
        check: bool = True,
        name: str = NAME,
        answered: bool = True,
    ) -> Probe:
        """One packet of the flow (``sport``: the flow's source port; 0 for a new flow), checked, with the
        cache's part: a packet of a flow the cache holds is forwarded by it, any other goes the full way
        and (forwarded) is cached; a new NAT session clears the cache before, a RST answer (TCP to the echo
        port) is never cached and ends its NAT session, which clears the cache; ``answered`` False: the
        answer is an ICMP error (a closed UDP port), never cached either."""
        s = self.s
        now = s.world.now
        out_hit = sport != 0 and (proto, sport, dst, port) in self.out
        hits = self._hits()
        if nat:
            pred = s.model.predict_packet(c, dst, proto, port, now, name)
            s.model.nat_probe(c, name)
            p = self.traffic.run(Probe(c, proto, dst, port, pred, "app", sport=sport))
            s.model.nat_settle(c, name, now)
        else:
            pred = s.model.predict_packet(c, dst, proto, port, now)
            p = self.traffic.run(Probe(c, proto, dst, port, pred, self.traffic.host_for(dst), sport=sport))
        # A TCP request is a SYN and the request (to the echo port: only the SYN, answered by a RST), the
        # answer a SYN/ACK and the response: the first packet of each direction may miss, the second hits.
        n = 2 if proto == "tcp" else 1
        flow = (proto, p.sport, dst, port)
        if nat and (proto, p.sport, dst) not in self.sessions:
            self.sessions.add((proto, p.sport, dst))
            self._forget()
        want_out = n - (not out_hit)
        want_in = 0
        if s.model.gateway_allows(c, dst, proto, port, now) is None:  # refused (ICMP prohibited): not cached
            want_out = 0
        elif proto == "tcp" and port != WEB:
            self.out.add(flow)
            want_out = 0 if not out_hit else 1
            if nat:
                self.sessions.discard((proto, p.sport, dst))
                self._forget()
        else:
            self.out.add(flow)
            if answered:
                want_in = n - (flow not in self.inb)
                self.inb.add(flow)
        if check:
            self._check_hits(p.what, hits, (want_out, want_in))
        s.coverage["event:flow_packet"] += 1
        return p

    def _malformed(self, c: int, proto: str, dst: IPAddress, port: int, sport: int, case: FlowCase) -> None:
        """A malformed packet of the cached flow: dropped (nothing forwarded, nothing answered), counted."""
        s = self.s
        key = f"drop.{case.reason}"
        before = s.gw.gateway.stats().get(key, 0)
        hits = self._hits()
        host = "app" if s.model.client_route(c, dst) == "app" else self.traffic.host_for(dst)
        pred = Prediction.exact(Outcome.NOTHING, 0)
        p = Probe(c, proto, dst, port, pred.lossy() if s.model.lossy else pred, host, raw=True, sport=sport)
        p.mangle = case.mangle
        self.traffic.run(p)
        after = s.gw.gateway.stats().get(key, 0)
        if not s.model.lossy and after != before + 1:
            raise InvariantError(f"{p.what} ({case.what}): {key} {before} -> {after}, expected one more")
        self._check_hits(f"{p.what} ({case.what})", hits, (0, 0))
        s.coverage["event:flow_edge"] += 1

    def _inject(
        self,
        c: int,
        packet: bytes,
        what: str,
        reason: str | None,
        hit: bool = False,
        ends: tuple[str, int, IPAddress] | None = None,
        sender: str | None = None,
    ) -> None:
        """A packet from the TUN for client ``c``: dropped and counted under ``drop.<reason>``, or (``reason``
        None) delivered to the client, by the cache (``hit``) or the full way; ``ends``: the NAT session the
        packet (a RST) ends."""
        s = self.s
        client = s.client(c)
        key = f"drop.{reason}"
        before = s.gw.gateway.stats().get(key, 0)
        hits = self._hits()
        got = len(client.received)
        s.world.send_ip(s.world.hosts[sender or self._sender(packet)], packet)
        s.world.run_for(PROBE_SETTLE)
        what = f"to client-{c} from the TUN: {what} ({len(packet)} bytes)"
        if not s.model.lossy:
            after = s.gw.gateway.stats().get(key, 0)
            delivered = len(client.received) - got
            if reason is not None and (after != before + 1 or delivered):
                raise InvariantError(
                    f"{what}: {key} {before} -> {after}, {delivered} delivered; expected a drop"
                )
            if reason is None and delivered != 1:
                raise InvariantError(f"{what}: {delivered} records at the client, expected one")
        self._check_hits(what, hits, (0, int(hit)))
        if ends is not None and ends in self.sessions:
            self.sessions.discard(ends)
            self._forget()
        s.coverage["event:flow_edge"] += 1

    def _sender(self, packet: bytes) -> str:
        """The host whose address is the packet's source."""
        src = packet[12:16] if _v4(packet) else packet[8:24]
        for name, host in self.s.world.hosts.items():
            if any(a is not None and a.packed == src for a in (host.ipv4, host.ipv6)):
                return name
        raise InvariantError(f"no host owns the source of {packet[:40].hex()}")

    def _gateway_flows(self, c: int, v6: bool) -> None:
        """A UDP flow to the gateway's own tunnel address (its host answers with an ICMP error, never cached)
        and one from it, each of two packets: the first goes the full way, the second the cache's."""
        s = self.s
        peers = s.gw.gateway.peers
        assert peers.gateway_ips is not None
        gw = peers.gateway_ips[1] if v6 else peers.gateway_ips[0]
        sport = 0
        for want in ((0, 0), (1, 0)):
            hits = self._hits()
            pred = s.model.predict_gateway_address(c, "udp", GATEWAY_PORT, s.world.now)
            p = self.traffic.run(Probe(c, "udp", gw, GATEWAY_PORT, pred, None, raw=True, sport=sport))
            sport = p.sport
            self._check_hits(f"{p.what} (from port {sport})", hits, want)
        client = s.client(c)
        mine = client.tunnel_v6 if v6 else client.tunnel_v4
        for hit in (False, True):
            packet = build_udp_packet(gw, mine, GATEWAY_PORT, sport, b"from the gateway")
            self._inject(c, packet, "from the gateway's tunnel address", None, hit=hit, sender="web")

    def _colliding_flow(self, c: int, app: IPAddress, sport: int) -> None:
        """A UDP flow to a proxy IP of another name of the same address, from the source port of a flow to
        ``app.corp.test`` still in the NAT: the NAT gives it the next port (the port's high byte changes
        too), rewritten both ways, and the cache rewrites (and checksums) its packets as the full way did."""
        v6 = app.version == 6
        self._probe(c, "udp", app, ECHO, True, sport)
        other = "v6only.corp.test" if v6 else "v4only.corp.test"
        dst = self._proxy_ip(c, v6, other)
        self._probe(c, "udp", dst, ECHO, True, check=False, name=other)  # (the name's set-up: see above)
        self._forget()
        p = self._probe(c, "udp", dst, ECHO, True, sport, name=other)
        if not self.s.model.lossy and p.arrivals and p.arrivals[-1].sport == sport:
            raise InvariantError(f"{p.what}: the NAT kept port {sport}, which another session holds")
        self._probe(c, "udp", dst, ECHO, True, sport, name=other)
        self.s.coverage["event:flow_cache_port_changed"] += 1

    def _refreshed_flow(self, c: int, dst: IPAddress) -> Probe:
        """Three UDP flows through the NAT, after every other UDP session has ended (each end clears the
        cache), whose packets come every 70 s: one both ways, one from the client only (to a closed port:
        its answers are ICMP errors, which refresh nothing), one from the host only (answers injected, the
        client silent). The cache's packets of either direction keep a session alive (120 s idle, decision
        0042), so every packet 70 and 140 s after the first is still the cache's."""
        s = self.s
        s.world.run_for(UDP_IDLE_END)
        self.sessions = {x for x in self.sessions if x[0] != "udp"}
        self._forget()
        both = self._probe(c, "udp", dst, ECHO, True)
        out_only = self._probe(c, "udp", dst, CLOSED_UDP, True, answered=False)
        in_only = self._probe(c, "udp", dst, ECHO, True)
        answer = self._answer(in_only, in_only.sport)
        self._probe(c, "udp", dst, ECHO, True, both.sport)  # (cached again: the later sessions cleared it)
        self._probe(c, "udp", dst, CLOSED_UDP, True, out_only.sport, answered=False)
        for _ in range(2):
            s.world.run_for(REFRESH_GAP)
            self._probe(c, "udp", dst, ECHO, True, both.sport)
            self._probe(c, "udp", dst, CLOSED_UDP, True, out_only.sport, answered=False)
            self._inject(c, answer(b"unasked"), "an answer on a flow the client is silent on", None, hit=True)
        s.coverage["event:flow_cache_refreshed"] += 1
        return both

    def _after_reset(self, c: int, reset: Probe, udp: Probe, nat: bool) -> None:
        """After the answer to a SYN to the echo port (a RST through the NAT, never cached; the CIDR
        resource's filters may refuse it instead), a bare ACK from the host on the same ports goes the full
        way: through the NAT dropped as a packet of the session the RST ended (its outside port is the
        client's: no other TCP session holds it), else delivered or refused by the filters as the model
        says. The host's address is where the flow's UDP datagrams arrived."""
        a: Arrival = udp.arrivals[-1]
        ack = build_tcp_packet(a.dst, a.src, ECHO, reset.sport, b"", flags=TCP_ACK)
        if nat:
            reason: str | None = "nat_session_expired"
        else:
            allowed = self.s.model.gateway_allows(c, reset.dst, "tcp", ECHO, self.s.world.now)
            reason = None if allowed else "filtered"
        self._inject(c, ack, "an ACK after the SYN to the echo port", reason, hit=False)

    def _full_cache(self, c: int, dst: IPAddress, flow: Probe) -> None:
        """New flows from the client (to an address of the CIDR resource where no host answers) until its
        cache of outbound decisions holds :data:`MAX_FLOWS`; one more clears it (the bound), so the next
        packet of ``flow`` goes the full way out, while its answer is still the cache's."""
        s = self.s
        src = s.client(c).tunnel_v4
        gid = s.gw.gateway_id()
        held = len(self.out)
        for i in range(MAX_FLOWS - held + 1):
            packet = build_udp_packet(src, NO_HOST_V4, FILL_PORT + i, ECHO, b"fill")
            hits = self._hits()
            s.gw.drive(c, lambda cc, t, pk=packet: cc.send_raw(t, gid, pk))
            self._check_hits(f"a new flow to {NO_HOST_V4} from port {FILL_PORT + i}", hits, (0, 0))
        s.world.run_for(PROBE_SETTLE)
        self.out.clear()
        self._probe(c, "udp", dst, ECHO, True, flow.sport)
        s.coverage["event:flow_cache_full"] += 1

    def _unreachable(self, c: int) -> None:
        """A datagram to an IPv6 proxy IP of a name with IPv4 addresses only: answered "unreachable" (no
        NAT64), never cached, and counted (``policy.icmp_unreachable``)."""
        s = self.s
        name = "v4only.corp.test"
        dst = self._proxy_ip(c, True, name)
        key = "policy.icmp_unreachable"
        for _ in range(2):
            before = s.gw.gateway.stats().get(key, 0)
            p = self._probe(c, "udp", dst, ECHO, True, check=False, name=name)
            after = s.gw.gateway.stats().get(key, 0)
            if not s.model.lossy and after != before + 1:
                raise InvariantError(f"{p.what}: {key} {before} -> {after}, expected one more")
        s.coverage["event:flow_unreachable_counted"] += 1

    def _route_edges(self, c: int, web: Probe, nat: bool) -> None:
        """The shortest packets the TUN routes to a client (a bare IPv4 or IPv6 header, of a protocol
        without header of its own), refused by the client's policy as any packet of that protocol from the
        host (the CIDR resource's filters; the DNS resource's real address, not through the NAT, is no
        resource's), not as malformed; and one to a tunnel address nobody has."""
        refused = "not_authorized" if nat else "filtered"
        a = web.arrivals[0]
        client = self.s.client(c)
        src = a.dst
        v4 = build_ip(src, client.tunnel_v4, 253, b"") if src.version == 4 else None
        if v4 is not None:
            self._inject(c, v4, "a bare IPv4 header", refused)
            self._inject(c, build_ip(src, UNASSIGNED_V4, 253, b""), "to nobody's address", "unknown_client")
        else:
            self._inject(c, build_ip(src, client.tunnel_v6, 59, b""), "a bare IPv6 header", refused)


def flow_program() -> Program:
    """One client with the CIDR and the DNS resource; a flow to the web host, and through the NAT in each
    family."""
    grants = [Step(StepKind.GRANT, 0, 0), Step(StepKind.GRANT, 0, 1)]
    flows = [
        Step(StepKind.FLOW_EDGE, 0, 0, 0),
        Step(StepKind.FLOW_EDGE, 0, 1, 0),
        Step(StepKind.FLOW_EDGE, 0, 1, 1),
    ]
    return Program(WorldSpec(8, 1, 1), grants + flows)
