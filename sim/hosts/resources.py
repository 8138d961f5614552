"""Resources behind the gateway: hosts answering ICMP echo, UDP echo and a TCP-ish request/response.

Theory of operation: a :class:`ResourceServer` is a pure component without timers that takes raw IP
packets (the gateway writes them to its TUN; the simulated network routes them to the resource by
address) and answers with raw IP packets (``WriteTun``) addressed back to the packet's source, which is
a client's tunnel address, routed by the world to the gateway:

- ICMP/ICMPv6 echo request -> echo reply with the same identifier, sequence and payload;
- UDP to one of ``udp_ports`` -> the payload mirrored back (UDP echo);
- UDP to any other port -> ICMP port unreachable (ICMPv4 3/3, ICMPv6 1/4) quoting the packet, as a host
  with a closed port does;
- TCP to one of ``tcp_ports``: a SYN gets a SYN/ACK (ISN derived from the ports, no randomness); a
  segment carrying data gets one ACK segment carrying ``b"re:" + data`` (the "response"); FIN gets
  FIN/ACK. There is no retransmission, window or state beyond that: enough to see a request/response
  cross the gateway and its NAT;
- TCP to any other port -> RST/ACK, as a host with a closed port does;
- with a ``dns`` zone, UDP to port 53 -> the zone's answer (a DNS server inside a resource);
- anything else, or anything malformed, or not for one of its addresses -> counted and dropped.

Every packet that arrives is logged in :attr:`ResourceServer.received` (time, protocol, source,
destination, ports) before anything else: the stateful test's security invariant ("nothing reaches a
resource outside a live authorisation and its filters", :mod:`sim.stateful.invariants`) reads it.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.commands import Command, WriteTun
from gateway_core.contract import Deadline
from gateway_core.stats import Stats
from gateway_core.wire.icmp import build_icmp_error
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
    l4_checksum_ok,
    parse_icmp,
    parse_ip,
    parse_tcp,
    parse_udp,
)
from sim.hosts.dns_upstream import DnsZone

ICMPV4_CODE_PORT_UNREACHABLE = 3
ICMPV6_CODE_PORT_UNREACHABLE = 4
"""What a host with a closed UDP port answers (RFC 792, RFC 4443)."""
DNS_SERVER_PORT = 53
"""A resource with a DNS zone answers queries on this UDP port."""
TCP_RESPONSE_PREFIX = b"re:"
"""The TCP "service" answers every request with this prefix followed by the request."""
_ISN = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One packet that reached the resource (for an ICMP echo request ``sport`` is its identifier and
    ``dport`` its sequence number; 0 for other ICMP)."""

    at: Instant
    proto: int
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    length: int


class ResourceServer:
    """See the module docstring."""

    def __init__(
        self,
        addresses: Iterable[IPAddress],
        *,
        udp_ports: Iterable[int] = (7,),
        tcp_ports: Iterable[int] = (80,),
        dns: DnsZone | None = None,
    ) -> None:
        self.addresses = frozenset(addresses)
        self.dns = dns
        self.udp_ports = frozenset(udp_ports)
        self.tcp_ports = frozenset(tcp_ports)
        self.stats = Stats()
        self.received: list[Arrival] = []
        self.ecn_marks: Counter[int] = Counter()
        """Accepted packets by the ECN bits of their IP header (0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE)."""
        self.listeners: list[Callable[[Arrival], None]] = []
        """Called with every arrival as it is logged (the demo prints them)."""
        self._out: deque[Command] = deque()
        self._now = Instant(0)

    # --- driving contract (no timers)

    def handle_timeout(self, now: Instant) -> None:
        self._now = max(self._now, now)

    def poll_timeout(self) -> Deadline | None:
        return None

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None

    # --- packets

    def handle_tun_packet(self, now: Instant, packet: bytes) -> None:
        self._now = max(self._now, now)
        try:
            ip = parse_ip(packet)
            ok = l4_checksum_ok(packet)
        except ValueError:
            self.stats.incr("dropped.malformed")
            return
        if ip.dst not in self.addresses:
            self.stats.incr("dropped.not_mine")
            return
        if not ok:
            self.stats.incr("dropped.bad_checksum")
            return
        self.ecn_marks[packet[1] & 3 if ip.version == 4 else (packet[1] >> 4) & 3] += 1
        try:
            if ip.proto in (PROTO_ICMP, PROTO_ICMPV6):
                self._icmp(now, packet, ip.src, ip.dst, ip.payload)
            elif ip.proto == PROTO_UDP:
                self._udp(now, packet, ip.src, ip.dst, ip.payload)
            elif ip.proto == PROTO_TCP:
                self._tcp(now, ip.src, ip.dst, ip.payload)
            else:
                self._log(now, ip.proto, ip.src, ip.dst, 0, 0, len(packet))
                self.stats.incr("dropped.protocol")
        except ValueError:
            self.stats.incr("dropped.malformed")

    def _log(
        self, now: Instant, proto: int, src: IPAddress, dst: IPAddress, sport: int, dport: int, n: int
    ) -> None:
        arrival = Arrival(now, proto, src, dst, sport, dport, n)
        self.received.append(arrival)
        for listener in self.listeners:
            listener(arrival)

    def _icmp(self, now: Instant, packet: bytes, src: IPAddress, dst: IPAddress, seg: bytes) -> None:
        icmp = parse_icmp(seg)
        request = ICMPV4_ECHO_REQUEST if src.version == 4 else ICMPV6_ECHO_REQUEST
        echo = icmp.icmp_type == request and icmp.code == 0
        self._log(
            now,
            PROTO_ICMP if src.version == 4 else PROTO_ICMPV6,
            src,
            dst,
            *((icmp.ident, icmp.seq) if echo else (0, 0)),
            len(packet),
        )
        if not echo:
            self.stats.incr("icmp.ignored")
            return
        self.stats.incr("icmp.echo")
        self._out.append(WriteTun(build_icmp_echo(dst, src, icmp.ident, icmp.seq, icmp.payload, reply=True)))

    def _udp(self, now: Instant, packet: bytes, src: IPAddress, dst: IPAddress, seg: bytes) -> None:
        udp = parse_udp(seg)
        self._log(now, PROTO_UDP, src, dst, udp.sport, udp.dport, len(packet))
        if udp.dport == DNS_SERVER_PORT and self.dns is not None:
            self.stats.incr("dns.answered")
            answer, _ = self.dns.answer(udp.payload)
            self._out.append(WriteTun(build_udp_packet(dst, src, udp.dport, udp.sport, answer)))
            return
        if udp.dport in self.udp_ports:
            self.stats.incr("udp.echo")
            self._out.append(WriteTun(build_udp_packet(dst, src, udp.dport, udp.sport, udp.payload)))
            return
        self.stats.incr("udp.port_unreachable")
        self._out.append(
            WriteTun(build_icmp_error(packet, ICMPV4_CODE_PORT_UNREACHABLE, ICMPV6_CODE_PORT_UNREACHABLE))
        )

    def _tcp(self, now: Instant, src: IPAddress, dst: IPAddress, seg: bytes) -> None:
        tcp = parse_tcp(seg)
        self._log(now, PROTO_TCP, src, dst, tcp.sport, tcp.dport, len(seg))
        if tcp.flags & TCP_RST:
            self.stats.incr("tcp.rst_received")
            return
        syn = bool(tcp.flags & TCP_SYN)
        fin = bool(tcp.flags & TCP_FIN)
        consumed = len(tcp.payload) + (1 if syn else 0) + (1 if fin else 0)
        ack = (tcp.seq + consumed) & 0xFFFFFFFF
        if tcp.dport not in self.tcp_ports:
            self.stats.incr("tcp.reset")
            self._out.append(
                WriteTun(
                    build_tcp_packet(dst, src, tcp.dport, tcp.sport, seq=0, ack=ack, flags=TCP_RST | TCP_ACK)
                )
            )
            return
        isn = int.from_bytes(_ISN.pack(tcp.sport, tcp.dport), "big")
        if syn:
            self.stats.incr("tcp.syn")
            flags, seq, data = TCP_SYN | TCP_ACK, isn, b""
        elif tcp.payload:
            self.stats.incr("tcp.request")
            flags, seq, data = TCP_ACK, tcp.ack, TCP_RESPONSE_PREFIX + tcp.payload
        elif fin:
            self.stats.incr("tcp.fin")
            flags, seq, data = TCP_FIN | TCP_ACK, tcp.ack, b""
        else:
            return  # a bare ACK needs no answer
        self._out.append(
            WriteTun(build_tcp_packet(dst, src, tcp.dport, tcp.sport, data, seq=seq, ack=ack, flags=flags))
        )
