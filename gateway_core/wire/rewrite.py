"""In-place rewriting of IP packets on a ``bytearray``: NAT of addresses and ports, ECN merge and full
checksum recomputation (Firezone: ``translate_destination``, ``translate_source`` and
``with_ecn_from_transport`` of ``IpPacket`` in ``rust/connlib/ip-packet/src/lib.rs``).

:func:`nat_rewrite` fixes every affected checksum incrementally (RFC 1624) instead of recomputing it, so
the cost does not depend on the payload size: the IPv4 header checksum for an address change, and the
TCP/UDP/ICMPv6 checksum for an address (pseudo-header) or port change. ICMPv4 has no pseudo-header, so
only an echo identifier change touches its checksum. For a packet whose checksums were correct the result
equals a full recomputation (tested); a packet with a wrong checksum keeps it wrong (Firezone recomputes
from scratch and would "repair" it; end-to-end integrity is preserved here instead). A UDP checksum of 0
("none" in IPv4) stays 0; an incrementally computed 0 is sent as 0xFFFF (RFC 768).

All checks happen before the first byte is written: on an exception the buffer is unchanged.
"""

from __future__ import annotations

import struct

from gateway_core.addr import IPAddress
from gateway_core.errors import DecodeError, UsageError
from gateway_core.wire.checksum import checksum_adjust_int, internet_checksum, pseudo_header_sum
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    locate_l4,
    src_dst,
)

__all__ = [
    "ECN_CE",
    "merge_ecn",
    "nat_rewrite",
    "recompute_checksums",
    "set_dport",
    "set_dst",
    "set_sport",
    "set_src",
]

# Why: RFC 3168 codepoints; only ECT(0)/ECT(1) inner packets may become CE.
ECN_CE = 3
_ECT = (1, 2)

_U16 = struct.Struct("!H")

# Offset of the checksum field inside the transport header, and the minimal header length.
_CSUM_AT = {PROTO_UDP: 6, PROTO_TCP: 16, PROTO_ICMP: 2, PROTO_ICMPV6: 2}
_MIN_L4 = {PROTO_UDP: 8, PROTO_TCP: 20, PROTO_ICMP: 8, PROTO_ICMPV6: 8}


def _has_l4(version: int, proto: int) -> bool:
    """Whether the transport is one whose header (and checksum) we know, in the right IP family."""
    if proto == PROTO_ICMP:
        return version == 4
    if proto == PROTO_ICMPV6:
        return version == 6
    return proto in (PROTO_TCP, PROTO_UDP)


def _is_echo(version: int, proto: int, icmp_type: int) -> bool:
    if version == 4 and proto == PROTO_ICMP:
        return icmp_type in (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY)
    if version == 6 and proto == PROTO_ICMPV6:
        return icmp_type in (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
    return False


def nat_rewrite(
    buf: bytearray,
    *,
    src: IPAddress | None = None,
    dst: IPAddress | None = None,
    sport: int | None = None,
    dport: int | None = None,
) -> None:
    """Rewrite the given fields of the whole, unfragmented IP packet in ``buf`` and fix its checksums.

    For ICMP echo request/reply ``sport`` and ``dport`` both mean the identifier (Firezone's
    ``Protocol::Icmp(id)``); giving both with different values is a UsageError. A port for any other
    protocol (or ICMP type) is a DecodeError, as is a malformed packet or a fragment. An address of the
    other family is a UsageError.
    """
    version, proto, off, end, fragment = locate_l4(buf)
    if fragment:
        raise DecodeError("cannot rewrite a fragment")
    if (src is not None and src.version != version) or (dst is not None and dst.version != version):
        raise UsageError("address of the other IP family")
    has_l4 = _has_l4(version, proto)
    if has_l4 and end - off < _MIN_L4[proto]:
        raise DecodeError("transport header truncated")
    echo_at = -1
    if sport is not None or dport is not None:
        if (sport is not None and not 0 <= sport <= 0xFFFF) or (
            dport is not None and not 0 <= dport <= 0xFFFF
        ):
            raise UsageError(f"port out of range: {sport}, {dport}")
        if not has_l4:
            raise DecodeError("packet has no ports to rewrite")
        if proto != PROTO_TCP and proto != PROTO_UDP:
            if not _is_echo(version, proto, buf[off]):
                raise DecodeError("ICMP message other than echo has no identifier to rewrite")
            if sport is not None and dport is not None and sport != dport:
                raise UsageError("an echo has one identifier: sport and dport differ")
            echo_at = off + 4

    # --- checks done: write ---
    alen, s_at = (4, 12) if version == 4 else (16, 8)
    old = new = 0  # sums of the old and new values of every changed 16-bit-aligned field
    if src is not None:
        v = int(src)
        old += int.from_bytes(buf[s_at : s_at + alen], "big")
        new += v
        buf[s_at : s_at + alen] = v.to_bytes(alen, "big")
    if dst is not None:
        d_at = s_at + alen
        v = int(dst)
        old += int.from_bytes(buf[d_at : d_at + alen], "big")
        new += v
        buf[d_at : d_at + alen] = v.to_bytes(alen, "big")
    if version == 4 and old != new:
        _U16.pack_into(buf, 10, checksum_adjust_int(_U16.unpack_from(buf, 10)[0], old, new))
    if not has_l4:
        return
    if proto == PROTO_ICMP:  # no pseudo-header: the addresses are not covered
        old = new = 0
    if echo_at >= 0:
        ident = sport if sport is not None else dport
        assert ident is not None  # echo_at is only set when an identifier was given
        old += _U16.unpack_from(buf, echo_at)[0]
        new += ident
        _U16.pack_into(buf, echo_at, ident)
    else:
        if sport is not None:
            old += _U16.unpack_from(buf, off)[0]
            new += sport
            _U16.pack_into(buf, off, sport)
        if dport is not None:
            old += _U16.unpack_from(buf, off + 2)[0]
            new += dport
            _U16.pack_into(buf, off + 2, dport)
    if old == new:
        return
    c_at = off + _CSUM_AT[proto]
    cur = _U16.unpack_from(buf, c_at)[0]
    if proto == PROTO_UDP and cur == 0:
        return  # no checksum (IPv4); an invalid zero in IPv6 stays invalid
    fixed = checksum_adjust_int(cur, old, new)
    if fixed == 0 and (
        proto == PROTO_UDP
        or (proto == PROTO_ICMP and not any(buf[off : off + 2]) and not any(buf[off + 4 : end]))
    ):
        # UDP sends a computed 0 as 0xFFFF. An ICMPv4 message of zeros but its checksum (an echo reply with
        # identifier, sequence number and payload 0; no pseudo-header makes the sum non-zero) sums to +0,
        # whose checksum is 0xFFFF, which RFC 1624's equation never yields.
        fixed = 0xFFFF
    _U16.pack_into(buf, c_at, fixed)


def set_src(buf: bytearray, ip: IPAddress) -> None:
    """Set the source address (with checksum fix-up)."""
    nat_rewrite(buf, src=ip)


def set_dst(buf: bytearray, ip: IPAddress) -> None:
    """Set the destination address (with checksum fix-up)."""
    nat_rewrite(buf, dst=ip)


def set_sport(buf: bytearray, port: int) -> None:
    """Set the TCP/UDP source port or the ICMP echo identifier (with checksum fix-up)."""
    nat_rewrite(buf, sport=port)


def set_dport(buf: bytearray, port: int) -> None:
    """Set the TCP/UDP destination port or the ICMP echo identifier (with checksum fix-up)."""
    nat_rewrite(buf, dport=port)


def recompute_checksums(buf: bytearray) -> None:
    """Recompute the transport checksum (TCP, UDP, ICMPv4, ICMPv6) and the IPv4 header checksum from
    scratch, as Firezone does after a NAT rewrite. The UDP checksum covers the UDP length; 0 becomes 0xFFFF.
    """
    version, proto, off, end, fragment = locate_l4(buf)
    if fragment:
        raise DecodeError("cannot checksum a fragment")
    if _has_l4(version, proto):
        if end - off < _MIN_L4[proto]:
            raise DecodeError("transport header truncated")
        seg_end = end
        if proto == PROTO_UDP:
            seg_end = off + _U16.unpack_from(buf, off + 4)[0]
            if seg_end - off < 8 or seg_end > end:
                raise DecodeError("UDP length inconsistent")
        c_at = off + _CSUM_AT[proto]
        buf[c_at : c_at + 2] = b"\0\0"
        seg = bytes(buf[off:seg_end])
        if proto == PROTO_ICMP:
            csum = internet_checksum(seg)
        else:
            s, d = src_dst(buf)
            csum = internet_checksum(seg, pseudo_header_sum(s, d, proto, seg_end - off))
        if proto == PROTO_UDP and csum == 0:
            csum = 0xFFFF
        _U16.pack_into(buf, c_at, csum)
    if version == 4:
        hl = (buf[0] & 0xF) * 4
        buf[10:12] = b"\0\0"
        _U16.pack_into(buf, 10, internet_checksum(bytes(buf[:hl])))


def ecn_of(packet: bytes) -> int:
    """The ECN bits of an IP packet (IPv4: the low two bits of the TOS byte; IPv6: bits 4-5 of byte 1,
    the low two of the traffic class); 0 for anything too short to tell. Snownet gives an encapsulated
    packet's datagram these bits (``rust/connlib/snownet/src/node.rs``)."""
    if len(packet) < 2:
        return 0
    return packet[1] & 3 if packet[0] < 0x60 else (packet[1] >> 4) & 3


def merge_ecn(buf: bytearray, outer_ecn: int) -> None:
    """If the outer datagram is CE and the inner packet ECT(0)/ECT(1), mark the inner packet CE.

    Every other combination leaves the packet unchanged. Only the fixed IP header is needed.
    """
    if outer_ecn != ECN_CE or not buf:
        return
    v = buf[0] >> 4
    if v == 4 and len(buf) >= 20:
        old = buf[1]
        if old & 3 in _ECT:
            buf[1] = old | 3
            word_old = (buf[0] << 8) | old
            word_new = (buf[0] << 8) | buf[1]
            _U16.pack_into(buf, 10, checksum_adjust_int(_U16.unpack_from(buf, 10)[0], word_old, word_new))
    elif v == 6 and len(buf) >= 40:
        # Traffic class = low nibble of byte 0 + high nibble of byte 1; ECN = bits 4-5 of byte 1.
        if (buf[1] >> 4) & 3 in _ECT:
            buf[1] |= 0x30
    else:
        raise DecodeError("not an IP packet")
