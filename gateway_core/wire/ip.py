"""IPv4/IPv6 packets with UDP, TCP and ICMP payloads: parsers, builders and data-path accessors.

Stateless codecs over ``bytes``-like values. Parsers raise :class:`~gateway_core.errors.DecodeError` and
nothing else for malformed input. Trailing bytes after the length an IP header declares are ignored (the
TUN and the tunnel hand us exact packets; a declared length longer than the buffer is an error).

Two levels of API:

- Typed, allocating views for tests, the simulator and off-hot-path code: :func:`parse_ipv4`,
  :func:`parse_ipv6`, :func:`parse_ip`, :func:`parse_udp`, :func:`parse_tcp`, :func:`parse_icmp` and the
  ``build_*`` functions.
- Data-path accessors that create no wrapper object: :func:`ip_version`, :func:`src_dst`,
  :func:`l4_info` (the offset and protocol of the transport header), :func:`five_tuple` (a plain tuple) and
  :func:`validate` (the validity rules of ``IpPacket::new`` in Firezone's
  ``rust/connlib/ip-packet/src/lib.rs``, returning a ``DropReason`` or ``None``).

The builders live in :mod:`gateway_core.wire.ipbuild` and the constants in :mod:`gateway_core.wire.ipconst`
(both re-exported here, so ``from gateway_core.wire.ip import build_udp_packet`` is the stable spelling).
ICMP errors (the gateway's own and those arriving from the TUN) live in :mod:`gateway_core.wire.icmp`;
in-place NAT rewriting with incremental checksum fix-up in :mod:`gateway_core.wire.rewrite`.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from gateway_core.addr import IPAddress
from gateway_core.errors import DecodeError, DropReason
from gateway_core.wire.checksum import internet_checksum, pseudo_header_sum
from gateway_core.wire.ipbuild import (
    build_icmp,
    build_icmp_echo,
    build_ip,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_tcp_packet,
    build_udp,
    build_udp_packet,
)
from gateway_core.wire.ipconst import (
    DEFAULT_TTL,
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    MAX_IP_SIZE,
    PROTO_AH,
    PROTO_HOPOPT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_IPV6_FRAG,
    PROTO_IPV6_OPTS,
    PROTO_IPV6_ROUTE,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)

__all__ = [
    "DEFAULT_TTL",
    "ICMPV4_ECHO_REPLY",
    "ICMPV4_ECHO_REQUEST",
    "ICMPV6_ECHO_REPLY",
    "ICMPV6_ECHO_REQUEST",
    "IPV4_HEADER_LEN",
    "IPV6_HEADER_LEN",
    "MAX_IP_SIZE",
    "PROTO_AH",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "TCP_ACK",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "FiveTuple",
    "IcmpHeader",
    "Ipv4Header",
    "Ipv6Header",
    "ParsedIp",
    "TcpHeader",
    "UdpHeader",
    "build_icmp",
    "build_icmp_echo",
    "build_ip",
    "build_ipv4",
    "build_ipv6",
    "build_tcp",
    "build_tcp_packet",
    "build_udp",
    "build_udp_packet",
    "five_tuple",
    "internet_checksum",
    "ip_version",
    "l4_checksum_ok",
    "l4_info",
    "locate_l4",
    "parse_icmp",
    "parse_ip",
    "parse_ipv4",
    "parse_ipv6",
    "parse_tcp",
    "parse_udp",
    "src_dst",
    "validate",
]

# Precompiled layouts (why: hot path, no per-call format parsing).
_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_ICMP = struct.Struct("!BBHI")
_U16 = struct.Struct("!H")
_U16X2 = struct.Struct("!HH")
_V4_PEEK = struct.Struct("!BxHxxHxB")  # version/IHL, total length, flags/fragment offset, protocol

# Why: ICMPv4 timestamp / timestamp reply (RFC 792) have a fixed 20-byte length.
_ICMPV4_TIMESTAMP = (13, 14)
_ICMPV4_TIMESTAMP_LEN = 20
_IPV6_SIMPLE_EXT = frozenset((PROTO_HOPOPT, PROTO_IPV6_ROUTE, PROTO_IPV6_OPTS))


# --- typed views ------------------------------------------------------------------------------------------


class Ipv4Header(NamedTuple):
    tos: int
    total_len: int
    ident: int
    dont_fragment: bool
    more_fragments: bool
    frag_offset: int  # in 8-byte units
    ttl: int
    proto: int
    checksum: int
    src: IPv4Address
    dst: IPv4Address
    options: bytes
    header_len: int


class Ipv6Header(NamedTuple):
    traffic_class: int
    flow_label: int
    payload_len: int
    next_header: int
    hop_limit: int
    src: IPv6Address
    dst: IPv6Address


class ParsedIp(NamedTuple):
    """A parsed IP packet: the fields the data path needs, and the transport bytes."""

    version: int
    src: IPAddress
    dst: IPAddress
    proto: int  # IPv4 protocol / the IPv6 next header after all extension headers
    ttl: int  # TTL / hop limit
    l4_offset: int  # offset of the transport header
    total_len: int  # the packet's length as declared by its header(s)
    fragment: bool  # a fragment (MF set or non-zero offset)
    payload: bytes  # packet[l4_offset:total_len]


class UdpHeader(NamedTuple):
    sport: int
    dport: int
    length: int
    checksum: int
    payload: bytes


class TcpHeader(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    header_len: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: bytes
    payload: bytes


class IcmpHeader(NamedTuple):
    icmp_type: int
    code: int
    checksum: int
    rest: int  # the 32-bit "rest of header" (echo: identifier << 16 | sequence)
    payload: bytes

    @property
    def ident(self) -> int:
        return self.rest >> 16

    @property
    def seq(self) -> int:
        return self.rest & 0xFFFF


# (proto, src, dst, sport, dport): ports for TCP/UDP, the echo identifier twice for ICMP echo, 0 otherwise.
FiveTuple = tuple[int, IPAddress, IPAddress, int, int]


# --- parsers ----------------------------------------------------------------------------------------------


def parse_ipv4(packet: bytes | bytearray | memoryview) -> Ipv4Header:
    """Parse an IPv4 header (strict: whole header present, declared total length within the buffer)."""
    n = len(packet)
    if n < IPV4_HEADER_LEN:
        raise DecodeError("IPv4 header truncated")
    vihl, tos, total, ident, ff, ttl, proto, csum, src, dst = _V4.unpack_from(packet)
    if vihl >> 4 != 4:
        raise DecodeError("not IPv4")
    hl = (vihl & 0xF) * 4
    if hl < IPV4_HEADER_LEN:
        raise DecodeError("IPv4 IHL < 5")
    if total < hl or total > n:
        raise DecodeError("IPv4 total length inconsistent")
    return Ipv4Header(
        tos,
        total,
        ident,
        bool(ff & 0x4000),
        bool(ff & 0x2000),
        ff & 0x1FFF,
        ttl,
        proto,
        csum,
        IPv4Address(src),
        IPv4Address(dst),
        bytes(packet[IPV4_HEADER_LEN:hl]),
        hl,
    )


def parse_ipv6(packet: bytes | bytearray | memoryview) -> Ipv6Header:
    """Parse the fixed IPv6 header (strict: declared payload within the buffer)."""
    if len(packet) < IPV6_HEADER_LEN:
        raise DecodeError("IPv6 header truncated")
    vtf, plen, nh, hlim, src, dst = _V6.unpack_from(packet)
    if vtf >> 28 != 6:
        raise DecodeError("not IPv6")
    if IPV6_HEADER_LEN + plen > len(packet):
        raise DecodeError("IPv6 payload length exceeds packet")
    return Ipv6Header((vtf >> 20) & 0xFF, vtf & 0xFFFFF, plen, nh, hlim, IPv6Address(src), IPv6Address(dst))


def locate_l4(packet: bytes | bytearray | memoryview, lax: bool = False) -> tuple[int, int, int, int, bool]:
    """Locate the transport header: ``(version, proto, l4_offset, end, fragment)``.

    Strict (``lax=False``): the declared lengths must fit in the buffer. Lax (the packet quoted inside an
    ICMP error): the packet may be truncated after its headers, and an inconsistent total length (or an
    IPv6 payload length of 0) means "up to the end of the buffer". Either way the IP header and every
    extension header must be complete. For a non-first fragment ``l4_offset`` points at fragment data.
    """
    n = len(packet)
    if n == 0:
        raise DecodeError("empty packet")
    v = packet[0] >> 4
    if v == 4:
        if n < IPV4_HEADER_LEN:
            raise DecodeError("IPv4 header truncated")
        vihl, total, ff, proto = _V4_PEEK.unpack_from(packet)
        hl = (vihl & 0xF) * 4
        if hl < IPV4_HEADER_LEN or hl > n:
            raise DecodeError("bad IPv4 header length")
        if total < hl or total > n:
            if not lax:
                raise DecodeError("IPv4 total length inconsistent")
            total = n
        fragment = bool(ff & 0x3FFF)
        off = hl
        if proto == PROTO_AH and not (ff & 0x1FFF):
            # IPv4 authentication header (RFC 4302): length in 4-byte units minus 2.
            if off + 2 > total:
                raise DecodeError("AH truncated")
            proto = packet[off]
            off += (packet[off + 1] + 2) * 4
            if off > total:
                raise DecodeError("AH truncated")
        return 4, proto, off, total, fragment
    if v == 6:
        if n < IPV6_HEADER_LEN:
            raise DecodeError("IPv6 header truncated")
        end = IPV6_HEADER_LEN + ((packet[4] << 8) | packet[5])
        if end > n or (lax and end == IPV6_HEADER_LEN):
            if not lax:
                raise DecodeError("IPv6 payload length exceeds packet")
            end = n
        nh = packet[6]
        off = IPV6_HEADER_LEN
        fragment = False
        while True:
            if nh in _IPV6_SIMPLE_EXT:
                if off + 2 > end:
                    raise DecodeError("IPv6 extension header truncated")
                nh, ln = packet[off], (packet[off + 1] + 1) * 8
            elif nh == PROTO_IPV6_FRAG:
                if off + 8 > end:
                    raise DecodeError("IPv6 fragment header truncated")
                fo = (packet[off + 2] << 8) | packet[off + 3]
                if fo & 0xFFF9:  # offset != 0 or M flag
                    fragment = True
                nh, ln = packet[off], 8
            elif nh == PROTO_AH:
                if off + 2 > end:
                    raise DecodeError("AH truncated")
                nh, ln = packet[off], (packet[off + 1] + 2) * 4
            else:
                return 6, nh, off, end, fragment
            off += ln
            if off > end:
                raise DecodeError("IPv6 extension header truncated")
            if fragment:
                return 6, nh, off, end, True
    raise DecodeError("unsupported IP version")


def parse_ip(packet: bytes | bytearray | memoryview) -> ParsedIp:
    """Parse an IPv4 or IPv6 packet (with IPv6 extension headers and the IPv4 authentication header)."""
    version, proto, off, end, fragment = locate_l4(packet)
    src, dst = _addresses(packet, version)
    ttl = packet[8] if version == 4 else packet[7]
    return ParsedIp(version, src, dst, proto, ttl, off, end, fragment, bytes(packet[off:end]))


def parse_udp(segment: bytes | bytearray | memoryview) -> UdpHeader:
    """Parse a UDP header; the length field must cover the header and fit the segment."""
    if len(segment) < 8:
        raise DecodeError("UDP header truncated")
    sport, dport, length, csum = _UDP.unpack_from(segment)
    if length < 8 or length > len(segment):
        raise DecodeError("UDP length inconsistent")
    return UdpHeader(sport, dport, length, csum, bytes(segment[8:length]))


def parse_tcp(segment: bytes | bytearray | memoryview) -> TcpHeader:
    """Parse a TCP header with its options; the data offset must be >= 5 and fit the segment."""
    if len(segment) < 20:
        raise DecodeError("TCP header truncated")
    sport, dport, seq, ack, doff, flags, win, csum, urg = _TCP.unpack_from(segment)
    hl = (doff >> 4) * 4
    if hl < 20 or hl > len(segment):
        raise DecodeError("TCP data offset inconsistent")
    return TcpHeader(
        sport,
        dport,
        seq,
        ack,
        hl,
        flags | ((doff & 1) << 8),
        win,
        csum,
        urg,
        bytes(segment[20:hl]),
        bytes(segment[hl:]),
    )


def parse_icmp(segment: bytes | bytearray | memoryview) -> IcmpHeader:
    """Parse an ICMPv4 or ICMPv6 header (both share the 8-byte layout)."""
    if len(segment) < 8:
        raise DecodeError("ICMP header truncated")
    t, c, csum, rest = _ICMP.unpack_from(segment)
    return IcmpHeader(t, c, csum, rest, bytes(segment[8:]))


# --- data-path accessors (no wrapper objects) -------------------------------------------------------------


def ip_version(packet: bytes | bytearray | memoryview) -> int:
    """4 or 6; DecodeError for anything else (including an empty buffer)."""
    if not packet:
        raise DecodeError("empty packet")
    v: int = packet[0] >> 4
    if v == 4:
        if len(packet) < IPV4_HEADER_LEN:
            raise DecodeError("IPv4 header truncated")
        return 4
    if v == 6:
        if len(packet) < IPV6_HEADER_LEN:
            raise DecodeError("IPv6 header truncated")
        return 6
    raise DecodeError("unsupported IP version")


def src_dst(packet: bytes | bytearray | memoryview) -> tuple[IPAddress, IPAddress]:
    """Source and destination address (only the fixed header is needed)."""
    return _addresses(packet, ip_version(packet))


# Address objects are immutable; the data path sees few distinct ones, and building an IPv4Address costs
# several times a dict lookup. Why 4096: far more than the tunnel and resource addresses in use at once,
# small in memory (~1 MB); the whole cache is dropped when full, so spoofed sources cannot grow it.
_ADDR_CACHE_MAX = 4096
_addr_cache: dict[bytes, IPAddress] = {}


def _address(raw: bytes) -> IPAddress:
    a = _addr_cache.get(raw)
    if a is None:
        if len(_addr_cache) >= _ADDR_CACHE_MAX:
            _addr_cache.clear()
        a = IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)
        _addr_cache[raw] = a
    return a


def _addresses(packet: bytes | bytearray | memoryview, version: int) -> tuple[IPAddress, IPAddress]:
    if version == 4:
        s, d = packet[12:16], packet[16:20]
    else:
        s, d = packet[8:24], packet[24:40]
    if type(s) is bytes and type(d) is bytes:
        return _address(s), _address(d)
    return _address(bytes(s)), _address(bytes(d))


def l4_info(packet: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(proto, l4_offset, end)`` of a complete, unfragmented packet (DecodeError for a fragment)."""
    _, proto, off, end, fragment = locate_l4(packet)
    if fragment:
        raise DecodeError("fragment")
    return proto, off, end


def five_tuple(packet: bytes | bytearray | memoryview) -> FiveTuple:
    """``(proto, src, dst, sport, dport)`` of an unfragmented packet.

    TCP/UDP: the ports. ICMP/ICMPv6 echo request or reply: the identifier as both ports (Firezone's
    ``Protocol::Icmp(id)``). Other ICMP messages and other protocols: ``0, 0``. The transport header must
    be complete (8 bytes for UDP/ICMP, the data offset for TCP).
    """
    version, proto, off, end, fragment = locate_l4(packet)
    if fragment:
        raise DecodeError("fragment")
    src, dst = _addresses(packet, version)
    if proto in (PROTO_UDP, PROTO_TCP):
        if end - off < (8 if proto == PROTO_UDP else 20):
            raise DecodeError("transport header truncated")
        sport, dport = _U16X2.unpack_from(packet, off)
        return proto, src, dst, sport, dport
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if end - off < 8:
            raise DecodeError("ICMP header truncated")
        t = packet[off]
        if (version == 4 and proto == PROTO_ICMP and t in (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY)) or (
            version == 6 and proto == PROTO_ICMPV6 and t in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
        ):
            ident = (packet[off + 4] << 8) | packet[off + 5]
            return proto, src, dst, ident, ident
    return proto, src, dst, 0, 0


def validate(packet: bytes | bytearray | memoryview) -> DropReason | None:
    """``None`` if the data path may handle the packet, else why to drop it (as Firezone's ``IpPacket::new``).

    At most 1280 bytes; a parsable IPv4/IPv6 packet; not a fragment; UDP/TCP/ICMP headers and lengths
    consistent (as etherparse 0.19 checks them); ICMPv4 only inside IPv4 and ICMPv6 only inside IPv6.
    Never raises.
    """
    if len(packet) > MAX_IP_SIZE:
        return DropReason.IP_TOO_LARGE
    if packet and packet[0] >> 4 not in (4, 6):
        return DropReason.UNSUPPORTED_IP_VERSION
    try:
        version, proto, off, end, fragment = locate_l4(packet)
    except DecodeError:
        return DropReason.MALFORMED_IP
    if fragment:
        return DropReason.FRAGMENT
    avail = end - off
    if proto == PROTO_UDP:
        if avail < 8:
            return DropReason.MALFORMED_L4
        length = (packet[off + 4] << 8) | packet[off + 5]
        if length < 8 or length > avail:
            return DropReason.MALFORMED_L4
    elif proto == PROTO_TCP:
        if avail < 20:
            return DropReason.MALFORMED_L4
        hl = (packet[off + 12] >> 4) * 4
        if hl < 20 or hl > avail:
            return DropReason.MALFORMED_L4
    elif proto == PROTO_ICMP:
        if version != 4 or avail < 8:
            return DropReason.MALFORMED_L4
        # etherparse's Icmpv4Slice also insists that a timestamp (reply), code 0, is exactly 20 bytes.
        if packet[off] in _ICMPV4_TIMESTAMP and packet[off + 1] == 0 and avail != _ICMPV4_TIMESTAMP_LEN:
            return DropReason.MALFORMED_L4
    elif proto == PROTO_ICMPV6 and (version != 6 or avail < 8):
        return DropReason.MALFORMED_L4
    return None


def l4_checksum_ok(packet: bytes | bytearray | memoryview) -> bool:
    """Whether the UDP/TCP/ICMP checksum (and the IPv4 header checksum) of a whole packet verify.

    An IPv4 UDP checksum of zero means "none" and verifies. Other protocols: only the IPv4 header.
    """
    version, proto, off, end, fragment = locate_l4(packet)
    if fragment:
        raise DecodeError("fragment")
    if version == 4 and internet_checksum(packet[: (packet[0] & 0xF) * 4]) != 0:
        return False
    seg = packet[off:end]
    if proto == PROTO_UDP and len(seg) >= 8:
        if version == 4 and seg[6] == 0 and seg[7] == 0:
            return True
        udp_len = (seg[4] << 8) | seg[5]
        if 8 <= udp_len <= len(seg):
            seg = seg[:udp_len]  # the checksum covers the UDP length, not bytes after it
    if proto in (PROTO_UDP, PROTO_TCP) or (proto == PROTO_ICMPV6 and version == 6):
        src, dst = src_dst(packet)
        return internet_checksum(seg, pseudo_header_sum(src, dst, proto, len(seg))) == 0
    if proto == PROTO_ICMP:
        return internet_checksum(seg) == 0
    return True
