"""The dev client's vocabulary: what the portal grants, what the client signals, what it records.

Plain frozen records, shared by :mod:`devpeers.client`, the simulator's client signalling and hosts, the
dev client process (:mod:`devio.client`) and the tests (the simulator's stateful test reads
:class:`Received` records to check its model).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import dns.exception
import dns.message
import dns.rcode

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.commands import Command
from gateway_core.errors import DecodeError
from gateway_core.node.node import RelayConfig
from gateway_core.wire.icmp import parse_icmp_error
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REPLY,
    ICMPV6_ECHO_REPLY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    parse_icmp,
    parse_ip,
)


@dataclass(frozen=True, slots=True)
class SignalIce(Command):
    """Send local ICE ``candidates`` for ``gateway`` to the portal (invalidated ones if ``invalidate``)."""

    gateway: str
    candidates: tuple[str, ...]
    invalidate: bool = False


@dataclass(frozen=True, slots=True)
class GatewayGrant:
    """What the portal gives a client for one gateway (client channel's ``flow_created``)."""

    gateway: str
    """The gateway's id (the connection id)."""
    public_key: bytes
    psk: bytes
    client_ice: tuple[str, str]
    gateway_ice: tuple[str, str]
    tunnel_v4: IPv4Address
    tunnel_v6: IPv6Address
    relays: tuple[RelayConfig, ...]


@dataclass(frozen=True, slots=True)
class ClientResource:
    """A resource as the client knows it: ``kind`` ``cidr`` / ``dns`` / ``internet``."""

    id: uuid.UUID
    kind: str
    address: str
    """CIDR text, DNS pattern (``*.corp.test``, ``?.x``, ``api.x``) or empty for the Internet resource."""


# --- what the client received -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EchoReply:
    at: Instant
    src: IPAddress
    ident: int
    seq: int


@dataclass(frozen=True, slots=True)
class IcmpErrorReceived:
    """An ICMP error; ``inner_*`` describe the quoted packet (for echo: ports = identifier)."""

    at: Instant
    src: IPAddress
    icmp_type: int
    code: int
    inner_proto: int
    inner_dst: IPAddress
    inner_sport: int
    inner_dport: int
    inner_seq: int | None


@dataclass(frozen=True, slots=True)
class UdpReceived:
    at: Instant
    src: IPAddress
    sport: int
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TcpReceived:
    at: Instant
    src: IPAddress
    sport: int
    dport: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """A DNS answer: ``source`` ``local`` (the client's stub resolver) or ``gateway`` (forwarded)."""

    at: Instant
    name: str
    rtype: str
    rcode: str
    records: tuple[str, ...]
    source: str
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class DomainStatusReceived:
    at: Instant
    gateway: str
    resource: uuid.UUID
    domain: str
    status: str


@dataclass(frozen=True, slots=True)
class GoodbyeReceived:
    at: Instant
    gateway: str


Received = (
    EchoReply
    | IcmpErrorReceived
    | UdpReceived
    | TcpReceived
    | DnsAnswer
    | DomainStatusReceived
    | GoodbyeReceived
)


def icmp_record(now: Instant, packet: bytes, src: IPAddress) -> EchoReply | IcmpErrorReceived | None:
    """The record of an ICMP(v6) packet the client received (None for other ICMP messages).

    Raises :class:`DecodeError` for a malformed packet."""
    err = parse_icmp_error(packet)
    if err is None:
        icmp = parse_icmp(parse_ip(packet).payload)
        if icmp.icmp_type in (ICMPV4_ECHO_REPLY, ICMPV6_ECHO_REPLY):
            return EchoReply(now, src, icmp.ident, icmp.seq)
        return None
    seq = None
    if err.inner_proto in (PROTO_ICMP, PROTO_ICMPV6):
        at = err.inner_l4_offset + 6
        if len(err.embedded) >= at + 2:
            seq = int.from_bytes(err.embedded[at : at + 2], "big")
    return IcmpErrorReceived(
        now,
        src,
        err.icmp_type,
        err.code,
        err.inner_proto,
        err.inner_dst,
        err.inner_sport,
        err.inner_dport,
        seq,
    )


def dns_record(now: Instant, message: bytes, name: str, rtype: str, source: str = "gateway") -> DnsAnswer:
    """The record of a DNS response to the query for ``name``/``rtype`` (DecodeError if unparsable);
    ``source``: ``gateway`` (its forwarder) or ``tunnel`` (a DNS server reached through the tunnel)."""
    try:
        msg = dns.message.from_wire(message)
    except (dns.exception.DNSException, ValueError, IndexError):
        raise DecodeError("malformed DNS response") from None
    records = tuple(sorted(rd.to_text() for rrset in msg.answer for rd in rrset))
    return DnsAnswer(
        now, name, rtype, dns.rcode.to_text(msg.rcode()), records, source, bool(msg.flags & 0x0200)
    )
