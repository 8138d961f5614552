"""ICMP errors: the ones the gateway sends, the ones it receives from the TUN, and the helpers to
re-address the latter for a DNS-resource NAT session.

Generated errors (Firezone's ``icmp_dest_unreachable_*`` in ``rust/connlib/ip-packet/src/make.rs``) come
"from" the original destination and go to the original source, TTL/hop limit 20, ICMPv4 type 3 (code 13
prohibited / 0 network unreachable) or ICMPv6 type 1 (code 1 prohibited / 3 address unreachable), 4 zero
bytes after the checksum. ICMPv4 quotes the original IP header (with its options) plus 8 bytes; ICMPv6
quotes up to 1200 bytes of the original packet.

Received errors (``IpPacket::icmp_error`` in ``rust/connlib/ip-packet/src/lib.rs``) are the kinds
etherparse 0.19 decodes: ICMPv4 Destination Unreachable (codes 0-15) and Time Exceeded (0-1); ICMPv6
Destination Unreachable (0-6), Packet Too Big (code 0) and Time Exceeded (0-1). Echo request/reply are
"not an error"; every other type or code is unsupported (:class:`UnsupportedIcmpError`, a
:class:`DecodeError`). The quoted packet is parsed leniently and must carry 4 bytes of its TCP/UDP header
or a whole 8-byte ICMP echo *request* header.

Re-addressing follows ``rust/connlib/ip-packet/src/icmp_error.rs`` (``FailedPacket::translate_destination``)
and ``IcmpErrorPrototype::into_packet`` in ``rust/connlib/tunnel/src/gateway/nat_table.rs``.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from gateway_core.addr import IPAddress
from gateway_core.errors import DecodeError, UsageError
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    MAX_IP_SIZE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    build_icmp,
    build_ipv4,
    build_ipv6,
    l4_info,
    locate_l4,
    src_dst,
)

__all__ = [
    "ICMPV4_DEST_UNREACHABLE",
    "ICMPV4_TIME_EXCEEDED",
    "ICMPV6_DEST_UNREACHABLE",
    "ICMPV6_ERROR_MAX_PAYLOAD",
    "ICMPV6_PACKET_TOO_BIG",
    "ICMPV6_TIME_EXCEEDED",
    "ICMP_ERROR_TTL",
    "IcmpError",
    "UnsupportedIcmpError",
    "build_icmp_error",
    "build_icmp_error_like",
    "build_icmp_prohibited",
    "build_icmp_unreachable",
    "is_prohibited",
    "parse_icmp_error",
    "rewrite_embedded",
    "translate_icmp_error",
]

# ICMP error types (why: RFC 792 / RFC 4443 values).
ICMPV4_DEST_UNREACHABLE = 3
ICMPV4_TIME_EXCEEDED = 11
ICMPV6_DEST_UNREACHABLE = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3

# Codes the gateway uses (why: as Firezone's make.rs; the client keys its "ask for a new flow" on 3/13
# and 1/1).
ICMPV4_CODE_NET_UNREACHABLE = 0
ICMPV4_CODE_FRAG_NEEDED = 4
ICMPV4_CODE_ADMIN_PROHIBITED = 13
ICMPV6_CODE_ADMIN_PROHIBITED = 1
ICMPV6_CODE_ADDRESS_UNREACHABLE = 3

# Why: Firezone builds its ICMP errors with TTL/hop limit 20 (make.rs:223/249, nat_table.rs:203/210).
ICMP_ERROR_TTL = 20
# Why: 1280 - 40 (IPv6 header) - 40 (etherparse 0.19 Icmpv6Header::MAX_LEN) = 1200 (make.rs:247).
ICMPV6_ERROR_MAX_PAYLOAD = MAX_IP_SIZE - 40 - 40
# Why: RFC 792 quotes the original IP header plus the first 64 bits of its data (make.rs:227-234).
_ICMPV4_QUOTE_AFTER_HEADER = 8

# Highest code etherparse 0.19 decodes for each supported (version, type); others are "unknown".
_SUPPORTED: dict[tuple[int, int], int] = {
    (4, ICMPV4_DEST_UNREACHABLE): 15,
    (4, ICMPV4_TIME_EXCEEDED): 1,
    (6, ICMPV6_DEST_UNREACHABLE): 6,
    (6, ICMPV6_PACKET_TOO_BIG): 0,
    (6, ICMPV6_TIME_EXCEEDED): 1,
}

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class UnsupportedIcmpError(DecodeError):
    """An ICMP message the data path does not handle (neither echo nor a supported error)."""


class IcmpError(NamedTuple):
    """An ICMP error received from the TUN and the failed packet it quotes."""

    version: int  # 4 (ICMPv4) or 6 (ICMPv6)
    icmp_type: int
    code: int
    mtu: int  # next-hop MTU (ICMPv4 3/4) or Packet Too Big MTU (ICMPv6 2); else 0
    embedded: bytes  # the quoted (failed) packet, as received, possibly truncated
    inner_proto: int  # PROTO_TCP, PROTO_UDP, PROTO_ICMP or PROTO_ICMPV6
    inner_src: IPAddress
    inner_dst: IPAddress  # the destination the failed packet could not reach
    inner_sport: int  # TCP/UDP source port, or the echo identifier
    inner_dport: int  # TCP/UDP destination port, or the echo identifier
    inner_l4_offset: int  # offset of the transport header inside ``embedded``


def is_prohibited(err: IcmpError) -> bool:
    """ICMPv4 3/13 or ICMPv6 1/1 (the client's trigger to request a new flow authorisation)."""
    if err.version == 4:
        return err.icmp_type == ICMPV4_DEST_UNREACHABLE and err.code == ICMPV4_CODE_ADMIN_PROHIBITED
    return err.icmp_type == ICMPV6_DEST_UNREACHABLE and err.code == ICMPV6_CODE_ADMIN_PROHIBITED


# --- errors the gateway generates ------------------------------------------------------------------------


def build_icmp_error(original: bytes | bytearray | memoryview, code_v4: int, code_v6: int) -> bytes:
    """ICMPv4 type 3 / ICMPv6 type 1 with the given code, answering ``original`` "from" its destination.

    ``original`` must be a parsable IP packet (DecodeError otherwise); bytes after its declared length are
    not quoted. Its transport header is not inspected.
    """
    version, _, _, end, _ = locate_l4(original)
    src, dst = src_dst(original)
    if version == 4:
        assert isinstance(src, IPv4Address) and isinstance(dst, IPv4Address)
        quote = bytes(original[: min(end, (original[0] & 0xF) * 4 + _ICMPV4_QUOTE_AFTER_HEADER)])
        msg = build_icmp(dst, src, ICMPV4_DEST_UNREACHABLE, code_v4, 0, quote)
        return build_ipv4(dst, src, PROTO_ICMP, msg, ICMP_ERROR_TTL)
    assert isinstance(src, IPv6Address) and isinstance(dst, IPv6Address)
    quote = bytes(original[: min(end, ICMPV6_ERROR_MAX_PAYLOAD)])
    msg = build_icmp(dst, src, ICMPV6_DEST_UNREACHABLE, code_v6, 0, quote)
    return build_ipv6(dst, src, PROTO_ICMPV6, msg, ICMP_ERROR_TTL)


def build_icmp_prohibited(original: bytes | bytearray | memoryview) -> bytes:
    """The policy denial: ICMPv4 3/13 "administratively prohibited" or ICMPv6 1/1."""
    return build_icmp_error(original, ICMPV4_CODE_ADMIN_PROHIBITED, ICMPV6_CODE_ADMIN_PROHIBITED)


def build_icmp_unreachable(original: bytes | bytearray | memoryview) -> bytes:
    """No usable DNS-resource mapping: ICMPv4 3/0 "network unreachable" or ICMPv6 1/3 "address"."""
    return build_icmp_error(original, ICMPV4_CODE_NET_UNREACHABLE, ICMPV6_CODE_ADDRESS_UNREACHABLE)


# --- errors received from the TUN ------------------------------------------------------------------------


def parse_icmp_error(packet: bytes | bytearray | memoryview) -> IcmpError | None:
    """The ICMP error in a whole IP packet; ``None`` for a non-ICMP packet or an ICMP echo.

    Raises :class:`UnsupportedIcmpError` for other ICMP types/codes and :class:`DecodeError` when the
    packet or the quoted packet is malformed or carries too little of its transport header.
    """
    proto, off, end = l4_info(packet)
    v = packet[0] >> 4
    if (v == 4 and proto != PROTO_ICMP) or (v == 6 and proto != PROTO_ICMPV6):
        return None
    if end - off < 8:
        raise DecodeError("ICMP header truncated")
    t, c = packet[off], packet[off + 1]
    if t in (
        (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY) if v == 4 else (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
    ):
        return None
    top = _SUPPORTED.get((v, t))
    if top is None or c > top:
        raise UnsupportedIcmpError(f"ICMPv{v} type {t} code {c} not supported")
    mtu = 0
    if v == 4 and t == ICMPV4_DEST_UNREACHABLE and c == ICMPV4_CODE_FRAG_NEEDED:
        mtu = _U16.unpack_from(packet, off + 6)[0]
    elif v == 6 and t == ICMPV6_PACKET_TOO_BIG:
        mtu = _U32.unpack_from(packet, off + 4)[0]
    embedded = bytes(packet[off + 8 : end])
    if not embedded or embedded[0] >> 4 != v:
        raise DecodeError("quoted packet is not of the ICMP message's IP version")
    _, iproto, ioff, iend, _ = locate_l4(embedded, lax=True)
    isrc, idst = src_dst(embedded)
    avail = iend - ioff
    if iproto in (PROTO_TCP, PROTO_UDP):
        if avail < 4:
            raise DecodeError("quoted transport header shorter than 4 bytes")
        sport, dport = _U16.unpack_from(embedded, ioff)[0], _U16.unpack_from(embedded, ioff + 2)[0]
    elif iproto in (PROTO_ICMP, PROTO_ICMPV6):
        if avail < 8:
            raise DecodeError("quoted ICMP header shorter than 8 bytes")
        want = ICMPV4_ECHO_REQUEST if iproto == PROTO_ICMP else ICMPV6_ECHO_REQUEST
        if embedded[ioff] != want:
            raise DecodeError("quoted ICMP message is not an echo request")
        sport = dport = _U16.unpack_from(embedded, ioff + 4)[0]
    else:
        raise DecodeError(f"quoted packet has unsupported protocol {iproto}")
    return IcmpError(v, t, c, mtu, embedded, iproto, isrc, idst, sport, dport, ioff)


def rewrite_embedded(err: IcmpError, inside_dst: IPAddress, inside_port: int) -> bytes:
    """Re-addressing, step 1: the quoted packet with its destination set to ``inside_dst`` and its source
    port (or echo identifier) set to ``inside_port``. Embedded checksums are left as they are (as Firezone
    does).
    """
    if inside_dst.version != err.version:
        raise UsageError("inside destination of the other IP family")
    if not 0 <= inside_port <= 0xFFFF:
        raise UsageError(f"port out of range: {inside_port}")
    buf = bytearray(err.embedded)
    if err.version == 4:
        buf[16:20] = inside_dst.packed
    else:
        buf[24:40] = inside_dst.packed
    at = err.inner_l4_offset + (4 if err.inner_proto in (PROTO_ICMP, PROTO_ICMPV6) else 0)
    _U16.pack_into(buf, at, inside_port)
    return bytes(buf)


def _rest_of_header(err: IcmpError) -> int:
    """Re-addressing, step 2: the 4 bytes after the checksum, re-serialised from the decoded type."""
    if err.version == 4 and err.icmp_type == ICMPV4_DEST_UNREACHABLE and err.code == ICMPV4_CODE_FRAG_NEEDED:
        return err.mtu & 0xFFFF
    if err.version == 6 and err.icmp_type == ICMPV6_PACKET_TOO_BIG:
        return err.mtu
    return 0


def build_icmp_error_like(err: IcmpError, src: IPAddress, dst: IPAddress, embedded: bytes) -> bytes:
    """Re-addressing, step 2: a fresh ICMP error of the same family, type, code (and MTU) as ``err``, from
    ``src`` to ``dst`` with TTL/hop limit 20, quoting ``embedded``.
    """
    if src.version != err.version or dst.version != err.version:
        raise UsageError("ICMP error re-addressed to the other IP family")
    msg = build_icmp(src, dst, err.icmp_type, err.code, _rest_of_header(err), embedded)
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        return build_ipv4(src, dst, PROTO_ICMP, msg, ICMP_ERROR_TTL)
    assert isinstance(src, IPv6Address) and isinstance(dst, IPv6Address)
    return build_ipv6(src, dst, PROTO_ICMPV6, msg, ICMP_ERROR_TTL)


def translate_icmp_error(
    err: IcmpError, inside_dst: IPAddress, inside_port: int, client_ip: IPAddress
) -> bytes:
    """The error as the client must see it: from the proxy IP ``inside_dst`` to ``client_ip``,
    quoting its own packet (destination ``inside_dst``, source port/identifier ``inside_port``).
    """
    return build_icmp_error_like(err, inside_dst, client_ip, rewrite_embedded(err, inside_dst, inside_port))
