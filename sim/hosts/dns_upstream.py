"""An upstream DNS server for the gateway's side of the simulated world, and its resolver table.

Theory of operation: :class:`DnsZone` is a fixed table of records (A, AAAA, SRV, TXT, by exact name,
case-insensitive, no trailing dot) that answers DNS messages with dnspython's message codec only (no
resolver, no network): :meth:`DnsZone.answer` takes a query in wire format and returns the response
(``NOERROR`` with the matching records, ``NOERROR`` without records when the name exists but not the type,
``NXDOMAIN`` when the name is unknown, ``FORMERR`` for an unparsable message), and
:meth:`DnsZone.resolve` is the resolver table behind the gateway's ``ResolveDomain``: every A and AAAA
address of a name, sorted, IPv4 first.

:class:`UpstreamDnsServer` is a pure component with no timers that serves the zone on UDP (``Transmit``
back to the sender) and, for raw IP packets routed to it, UDP/IP to port 53 (``WriteTun`` of the answer
packet). Every query it serves is logged in :attr:`UpstreamDnsServer.queries` (time, name, type) so a test
can check what reached the upstream. Nothing malformed raises: it is counted and dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Transmit, WriteTun
from gateway_core.contract import Deadline
from gateway_core.errors import UsageError
from gateway_core.stats import Stats
from gateway_core.wire.ip import PROTO_UDP, build_udp_packet, parse_ip, parse_udp

DNS_PORT = 53
"""The port a recursive resolver listens on."""
RECORD_TTL = 300
"""TTL of every answer (any positive value works; 300 s is a common zone default)."""
SUPPORTED_TYPES = ("A", "AAAA", "SRV", "TXT")
"""The record types the zone holds: addresses for DNS resources, SRV and TXT for forwarding."""


def _key(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class ServedQuery:
    """One query the upstream answered (for assertions)."""

    at: Instant
    name: str
    rtype: str
    rcode: str


class DnsZone:
    """The records: ``{name: {type: [rdata text, ...]}}``; see the module docstring."""

    def __init__(self, records: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self._records: dict[str, dict[str, tuple[str, ...]]] = {}
        for name, by_type in records.items():
            entry: dict[str, tuple[str, ...]] = {}
            for rtype, values in by_type.items():
                if rtype not in SUPPORTED_TYPES:
                    raise UsageError(f"unsupported record type {rtype!r} for {name!r}")
                entry[rtype] = tuple(values)
            self._records[_key(name)] = entry

    def names(self) -> list[str]:
        return sorted(self._records)

    def records(self, name: str, rtype: str) -> tuple[str, ...]:
        return self._records.get(_key(name), {}).get(rtype, ())

    def resolve(self, domain: str) -> tuple[IPAddress, ...]:
        """Every A then AAAA address of ``domain`` (the gateway's ``ResolveDomain``); empty if unknown."""
        v4 = sorted(ip_address(a) for a in self.records(domain, "A"))
        v6 = sorted(ip_address(a) for a in self.records(domain, "AAAA"))
        return (*v4, *v6)

    def answer(self, query: bytes) -> tuple[bytes, ServedQuery | None]:
        """The response to ``query`` (wire format) and what was asked; FORMERR for garbage."""
        try:
            msg = dns.message.from_wire(query)
        except (dns.exception.DNSException, ValueError, IndexError):
            return _formerr(query), None
        if msg.flags & 0x8000 or len(msg.question) != 1:
            resp = dns.message.make_response(msg)
            resp.set_rcode(dns.rcode.FORMERR)
            return resp.to_wire(), None
        q = msg.question[0]
        name = _key(q.name.to_text())
        rtype = dns.rdatatype.to_text(q.rdtype)
        resp = dns.message.make_response(msg)
        resp.flags |= 0x0080  # RA: this is a recursive resolver
        if name not in self._records:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        else:
            values = self._records[name].get(rtype, ())
            if values:
                resp.answer.append(
                    dns.rrset.from_text_list(q.name, RECORD_TTL, dns.rdataclass.IN, q.rdtype, list(values))
                )
        # want_shuffle=False: dnspython shuffles records with ``random`` by default (not deterministic).
        wire = resp.to_wire(want_shuffle=False)
        return wire, ServedQuery(Instant(0), name, rtype, dns.rcode.to_text(resp.rcode()))


def _formerr(query: bytes) -> bytes:
    """A bare FORMERR header echoing the id (or 0 when even that is missing)."""
    qid = query[:2] if len(query) >= 2 else b"\x00\x00"
    return qid + bytes((0x80, dns.rcode.FORMERR, 0, 0, 0, 0, 0, 0, 0, 0))


class UpstreamDnsServer:
    """Serves a :class:`DnsZone` on UDP port 53; see the module docstring."""

    def __init__(self, zone: DnsZone) -> None:
        self.zone = zone
        self.stats = Stats()
        self.queries: list[ServedQuery] = []
        self._out: deque[Command] = deque()
        self._now = Instant(0)

    def _serve(self, now: Instant, message: bytes) -> bytes:
        self._now = max(self._now, now)
        resp, served = self.zone.answer(message)
        if served is None:
            self.stats.incr("dns.formerr")
        else:
            self.stats.incr(f"dns.{served.rcode.lower()}")
            self.queries.append(ServedQuery(now, served.name, served.rtype, served.rcode))
        return resp

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        self._out.append(Transmit(local, remote, self._serve(now, payload)))

    def handle_tun_packet(self, now: Instant, packet: bytes) -> None:
        try:
            ip = parse_ip(packet)
            if ip.proto != PROTO_UDP:
                raise ValueError("not UDP")
            udp = parse_udp(ip.payload)
        except ValueError:
            self.stats.incr("dropped.not_dns")
            return
        if udp.dport != DNS_PORT:
            self.stats.incr("dropped.not_dns")
            return
        resp = self._serve(now, udp.payload)
        self._out.append(WriteTun(build_udp_packet(ip.dst, ip.src, udp.dport, udp.sport, resp)))

    def handle_timeout(self, now: Instant) -> None:
        self._now = max(self._now, now)

    def poll_timeout(self) -> Deadline | None:
        return None

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None
