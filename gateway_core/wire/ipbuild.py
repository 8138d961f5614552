"""Builders of IPv4/IPv6 packets with UDP, TCP and ICMP payloads (correct checksums, either family).

Builders raise :class:`~gateway_core.errors.UsageError` for invalid arguments (the caller's bug), never
DecodeError. Re-exported by :mod:`gateway_core.wire.ip`.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from gateway_core.addr import IPAddress
from gateway_core.errors import UsageError
from gateway_core.wire.checksum import internet_checksum, pseudo_header_sum
from gateway_core.wire.ipconst import (
    DEFAULT_TTL,
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    IPV4_HEADER_LEN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
)

# Precompiled layouts (why: no per-call format parsing).
_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_ICMP = struct.Struct("!BBHI")
_U16 = struct.Struct("!H")


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise UsageError(f"port out of range: {port}")


def build_ipv4(
    src: IPv4Address,
    dst: IPv4Address,
    proto: int,
    payload: bytes,
    ttl: int = DEFAULT_TTL,
    ident: int = 0,
    *,
    tos: int = 0,
    dont_fragment: bool = True,
    more_fragments: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet with a correct header checksum. DF is set by default (as etherparse and Linux do)."""
    if len(options) % 4 or len(options) > 40:
        raise UsageError("IPv4 options must be a multiple of 4 bytes, at most 40")
    hl = IPV4_HEADER_LEN + len(options)
    total = hl + len(payload)
    if total > 0xFFFF:
        raise UsageError("IPv4 packet too large")
    ff = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | (frag_offset & 0x1FFF)
    hdr = bytearray(
        _V4.pack(0x40 | (hl // 4), tos, total, ident, ff, ttl, proto, 0, src.packed, dst.packed) + options
    )
    _U16.pack_into(hdr, 10, internet_checksum(hdr))
    return bytes(hdr) + payload


def build_ipv6(
    src: IPv6Address,
    dst: IPv6Address,
    next_header: int,
    payload: bytes,
    hop_limit: int = DEFAULT_TTL,
    *,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 packet (fixed header only; extension headers go into ``payload`` with their next header)."""
    if len(payload) > 0xFFFF:
        raise UsageError("IPv6 payload too large")
    vtf = (6 << 28) | ((traffic_class & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _V6.pack(vtf, len(payload), next_header, hop_limit, src.packed, dst.packed) + payload


def build_ip(src: IPAddress, dst: IPAddress, proto: int, payload: bytes, ttl: int = DEFAULT_TTL) -> bytes:
    """An IPv4 or IPv6 packet, by the family of the addresses (which must agree, else UsageError).

    Builders raise :class:`UsageError` for invalid arguments (the caller's bug), never DecodeError.
    """
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return build_ipv4(src, dst, proto, payload, ttl)
    if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
        return build_ipv6(src, dst, proto, payload, ttl)
    raise UsageError("mixed IP address families")


def build_udp(src_ip: IPAddress, dst_ip: IPAddress, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header and payload with the checksum over the pseudo-header of either family.

    A computed checksum of 0 is sent as 0xFFFF (RFC 768).
    """
    _check_port(sport)
    _check_port(dport)
    length = 8 + len(payload)
    if length > 0xFFFF:
        raise UsageError("UDP datagram too large")
    seg = _UDP.pack(sport, dport, length, 0) + payload
    csum = internet_checksum(seg, pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length)) or 0xFFFF
    return seg[:6] + _U16.pack(csum) + seg[8:]


def build_tcp(
    src_ip: IPAddress,
    dst_ip: IPAddress,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = TCP_ACK,
    window: int = 65535,
    urgent: int = 0,
    options: bytes = b"",
) -> bytes:
    """A TCP header (with options padded by the caller to 4 bytes) and payload, with its checksum."""
    _check_port(sport)
    _check_port(dport)
    if len(options) % 4 or len(options) > 40:
        raise UsageError("TCP options must be a multiple of 4 bytes, at most 40")
    hl = 20 + len(options)
    seg = bytearray(
        _TCP.pack(
            sport, dport, seq, ack, ((hl // 4) << 4) | ((flags >> 8) & 1), flags & 0xFF, window, 0, urgent
        )
    )
    seg += options
    seg += payload
    _U16.pack_into(seg, 16, internet_checksum(seg, pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, len(seg))))
    return bytes(seg)


def build_icmp(
    src_ip: IPAddress, dst_ip: IPAddress, icmp_type: int, code: int, rest: int, payload: bytes
) -> bytes:
    """An ICMPv4 (IPv4 addresses) or ICMPv6 (IPv6 addresses, checksum with pseudo-header) message."""
    seg = bytearray(_ICMP.pack(icmp_type, code, 0, rest & 0xFFFFFFFF))
    seg += payload
    if src_ip.version == 6:
        csum = internet_checksum(seg, pseudo_header_sum(src_ip, dst_ip, PROTO_ICMPV6, len(seg)))
    else:
        csum = internet_checksum(seg)
    _U16.pack_into(seg, 2, csum)
    return bytes(seg)


def build_udp_packet(
    src_ip: IPAddress, dst_ip: IPAddress, sport: int, dport: int, payload: bytes, ttl: int = DEFAULT_TTL
) -> bytes:
    """A whole IPv4/UDP or IPv6/UDP packet."""
    return build_ip(src_ip, dst_ip, PROTO_UDP, build_udp(src_ip, dst_ip, sport, dport, payload), ttl)


def build_tcp_packet(
    src_ip: IPAddress,
    dst_ip: IPAddress,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = TCP_ACK,
    window: int = 65535,
    ttl: int = DEFAULT_TTL,
) -> bytes:
    """A whole IPv4/TCP or IPv6/TCP packet."""
    seg = build_tcp(src_ip, dst_ip, sport, dport, payload, seq=seq, ack=ack, flags=flags, window=window)
    return build_ip(src_ip, dst_ip, PROTO_TCP, seg, ttl)


def build_icmp_echo(
    src_ip: IPAddress,
    dst_ip: IPAddress,
    ident: int,
    seq: int,
    payload: bytes,
    reply: bool = False,
    ttl: int = DEFAULT_TTL,
) -> bytes:
    """A whole IPv4 ICMP or IPv6 ICMPv6 echo request (or reply) packet."""
    if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF):
        raise UsageError("echo identifier/sequence out of range")
    rest = (ident << 16) | seq
    if src_ip.version == 6:
        t = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
        return build_ip(src_ip, dst_ip, PROTO_ICMPV6, build_icmp(src_ip, dst_ip, t, 0, rest, payload), ttl)
    t = ICMPV4_ECHO_REPLY if reply else ICMPV4_ECHO_REQUEST
    return build_ip(src_ip, dst_ip, PROTO_ICMP, build_icmp(src_ip, dst_ip, t, 0, rest, payload), ttl)
