"""Kernel offloads as pure functions: the virtio-net header of a TUN device opened with ``IFF_VNET_HDR``,
splitting a super-packet into MTU-sized IP packets (:func:`segment`) and coalescing consecutive segments
of one flow into one super-packet (:func:`coalesce`).

Theory of operation
-------------------
A TUN device with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` prefixes every packet with a 10-byte
``struct virtio_net_hdr`` (``linux/virtio_net.h``: flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset; host byte order, which is little-endian on every machine we run on). On a read the kernel may
hand us

- a packet whose transport checksum is only *partial* (``F_NEEDS_CSUM``): the field at
  ``csum_start + csum_offset`` holds the pseudo-header sum and we finish it;
- a TCP (``GSO_TCPV4``/``GSO_TCPV6``) or UDP (``GSO_UDP_L4``) *super-packet* of up to 64 KiB, whose payload
  must be cut into ``gso_size`` pieces, each a complete IP packet: the IP and transport headers are
  copied, the IPv4 total length, identification (+1 per segment) and header checksum, the IPv6 payload
  length, the TCP sequence number (FIN and PSH only on the last segment, CWR only on the first), the UDP
  length and every transport checksum are set.

On a write we may hand the kernel one super-packet in place of many segments: consecutive TCP segments
of one flow (same addresses, ports, IP fields, ACK number, window and options; sequence numbers that
follow on; every payload ``gso_size`` long but the last, which may be shorter; only ACK, PSH on the
last) become one packet with ``GSO_TCPV4``/``GSO_TCPV6``; consecutive UDP datagrams of one flow become one
``GSO_UDP_L4`` packet (when the device accepted USO). The transport checksum of a super-packet is left
partial (``F_NEEDS_CSUM``, the pseudo-header sum for the whole length): the kernel computes each
segment's own when it splits or delivers it. A segment whose own checksum is wrong is never merged (it
is written alone and the kernel drops it, as it would have without us), so coalescing cannot turn a
corrupt segment into a valid one. This is the rule set of Linux's own GRO (``net/ipv4/tcp_offload.c``
``tcp_gro_receive``) and of wireguard-go (``tun/tcp_offload_linux.go``); the code is ours.

Everything here is a function of bytes to bytes: no state, no clock, no I/O. Malformed input raises
:class:`gateway_core.errors.DecodeError` (the caller drops and counts it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway_core.errors import DecodeError

VNET_HDR = struct.Struct("<BBHHHH")
"""``struct virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (little-endian:
the host order of a legacy header, ``TUNSETVNETLE`` not needed on x86/arm64)."""
VNET_HDR_LEN = VNET_HDR.size
"""10 bytes, the kernel's default ``TUNSETVNETHDRSZ``."""

F_NEEDS_CSUM = 1
"""``VIRTIO_NET_HDR_F_NEEDS_CSUM``: the transport checksum is partial (pseudo-header sum only)."""
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 4, 5
"""``VIRTIO_NET_HDR_GSO_*`` types we produce or accept (``GSO_UDP`` = 3, UFO, is not negotiated)."""
GSO_ECN = 0x80
"""``VIRTIO_NET_HDR_GSO_ECN`` bit: the segments carry CWR/ECE; only the first keeps CWR."""

TCP_CSUM_OFFSET, UDP_CSUM_OFFSET = 16, 6
"""Offsets of the checksum field in the TCP and UDP headers."""

MAX_SUPER = 65535
"""Largest super-packet we build: the IPv4 total length field (IPv6 payload length likewise)."""

MAX_SEGMENTS = 64
"""Segments per super-packet we build at most (``UDP_MAX_SEGMENTS`` of older kernels; a TCP run of 1240-byte
segments reaches the 64 KiB bound first)."""

_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_PSH, _TCP_ACK, _TCP_URG, _TCP_CWR = 1, 2, 4, 8, 16, 32, 128

ZERO_HDR = bytes(VNET_HDR_LEN)
"""The header of a plain packet (no GSO, complete checksums)."""

_H = struct.Struct("!H")
_I = struct.Struct("!I")
_M = 0xFFFF


@dataclass(frozen=True, slots=True)
class VnetHdr:
    """A decoded ``struct virtio_net_hdr``."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HDR.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VnetHdr:
        if len(data) < VNET_HDR_LEN:
            raise DecodeError("short virtio-net header")
        return cls(*VNET_HDR.unpack_from(data))


def _fold(v: int) -> int:
    """Ones'-complement sum (1..0xFFFF) of a non-zero value congruent to a sum of 16-bit words."""
    r = v % _M
    return r if r else _M


def _sum(data: bytes | bytearray | memoryview) -> int:
    """A value congruent (mod 0xFFFF) to the 16-bit word sum of ``data`` (odd length: zero padded)."""
    v = int.from_bytes(data, "big")
    return v << 8 if len(data) & 1 else v


def _l4(packet: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(version, l4 offset, protocol)`` of an IP packet without IPv6 extension headers or IPv4 fragments."""
    if len(packet) < 20:
        raise DecodeError("short IP packet")
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            raise DecodeError("bad IPv4 header length")
        if _H.unpack_from(packet, 6)[0] & 0x3FFF:
            raise DecodeError("IPv4 fragment")
        return 4, ihl, packet[9]
    if version == 6:
        if len(packet) < 40:
            raise DecodeError("short IPv6 packet")
        return 6, 40, packet[6]
    raise DecodeError(f"IP version {version}")


def _addr_sum(packet: bytes | bytearray | memoryview, version: int, proto: int) -> int:
    """Pseudo-header sum without the length: both addresses and the protocol."""
    if version == 4:
        return _sum(packet[12:20]) + proto
    return _sum(packet[8:40]) + proto


def _ipv4_header_checksum(hdr: bytearray) -> None:
    """Set the IPv4 header checksum of the packet (or headers) in ``hdr``."""
    hdr[10:12] = b"\0\0"
    _H.pack_into(hdr, 10, ~_fold(_sum(memoryview(hdr)[: (hdr[0] & 0x0F) * 4])) & 0xFFFF)


# --------------------------------------------------------------------------------------------------
# Read side: super-packet -> packets


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a partial checksum (``F_NEEDS_CSUM`` without GSO): sum from ``csum_start`` to the end
    (the field holds the pseudo-header sum) and store its complement."""
    at = csum_start + csum_offset
    if csum_start >= len(packet) or at + 2 > len(packet) or csum_start & 1:
        raise DecodeError("checksum offsets outside the packet")
    out = bytearray(packet)
    c = ~_fold(_sum(memoryview(out)[csum_start:])) & 0xFFFF
    if c == 0 and csum_offset == UDP_CSUM_OFFSET:
        c = 0xFFFF  # UDP (the only header with its checksum at 6): a computed 0 is sent as 0xFFFF
    _H.pack_into(out, at, c)
    return bytes(out)


def segment(hdr: VnetHdr, packet: bytes) -> list[bytes]:
    """The IP packets that the frame ``hdr`` + ``packet`` read from the TUN stands for (see the module
    docstring); a plain packet comes back as itself. Raises :class:`DecodeError`."""
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if hdr.flags & F_NEEDS_CSUM:
            return [complete_checksum(packet, hdr.csum_start, hdr.csum_offset)]
        return [packet]
    if gso in (GSO_TCPV4, GSO_TCPV6):
        return split_tcp(packet, hdr.gso_size, 4 if gso == GSO_TCPV4 else 6)
    if gso == GSO_UDP_L4:
        return split_udp(packet, hdr.gso_size)
    raise DecodeError(f"GSO type {hdr.gso_type}")


def split_tcp(packet: bytes, mss: int, version: int | None = None) -> list[bytes]:
    """Cut a TCP super-packet into segments of at most ``mss`` payload bytes with complete headers."""
    v, off, proto = _l4(packet)
    if proto != 6 or (version is not None and v != version):
        raise DecodeError("TCP GSO packet is not TCP of the announced version")
    if len(packet) < off + 20:
        raise DecodeError("short TCP header")
    thl = (packet[off + 12] >> 4) * 4
    hlen = off + thl
    if thl < 20 or len(packet) < hlen:
        raise DecodeError("bad TCP header length")
    if mss <= 0:
        raise DecodeError("GSO size 0")
    total = len(packet) - hlen
    if total <= mss:
        # One segment: just make the checksum whole.
        return [_finish_tcp(packet, v, off)]
    seq0 = _I.unpack_from(packet, off + 4)[0]
    flags = packet[off + 13]
    ident0 = _H.unpack_from(packet, 4)[0] if v == 4 else 0
    template = bytearray(packet[:hlen])
    # Partial sums of what stays the same in every segment: the IP header without its length,
    # identification and checksum; the TCP header without sequence number, flags and checksum, plus the
    # pseudo-header without its length. Per segment only the changed words are added.
    if v == 4:
        template[2:6] = b"\0\0\0\0"
        template[10:12] = b"\0\0"
    template[off + 4 : off + 8] = b"\0\0\0\0"
    template[off + 13] = 0
    template[off + 16 : off + 18] = b"\0\0"
    tcp_base = _addr_sum(packet, v, 6) + thl + _sum(memoryview(template)[off:])
    ip_base = _sum(memoryview(template)[:off]) if v == 4 else 0
    mv = memoryview(packet)
    out: list[bytes] = []
    first_flags = flags & ~(_TCP_FIN | _TCP_PSH)
    mid_flags = first_flags & ~_TCP_CWR
    last_flags = flags & ~_TCP_CWR
    pack = _H.pack_into
    pack_i = _I.pack_into
    o = 0
    i = 0
    while o < total:
        chunk = mv[hlen + o : hlen + o + mss]
        n = len(chunk)
        h = bytearray(template)
        if v == 4:
            ident = (ident0 + i) & 0xFFFF
            pack(h, 2, hlen + n)
            pack(h, 4, ident)
            pack(h, 10, ~_fold(ip_base + hlen + n + ident) & 0xFFFF)
        else:
            pack(h, 4, thl + n)
        seq = (seq0 + o) & 0xFFFFFFFF
        pack_i(h, off + 4, seq)
        if o + n >= total:
            f = flags if i == 0 else last_flags
        else:
            f = first_flags if i == 0 else mid_flags
        h[off + 13] = f
        c = ~_fold(tcp_base + n + (seq >> 16) + (seq & 0xFFFF) + f + _sum(chunk)) & 0xFFFF
        pack(h, off + 16, c)
        h += chunk
        out.append(bytes(h))
        o += n
        i += 1
    return out


def _finish_tcp(packet: bytes, version: int, off: int) -> bytes:
    out = bytearray(packet)
    out[off + 16 : off + 18] = b"\0\0"
    n = len(out) - off
    _H.pack_into(out, off + 16, ~_fold(_addr_sum(out, version, 6) + n + _sum(memoryview(out)[off:])) & 0xFFFF)
    if version == 4:
        _H.pack_into(out, 2, len(out))
        _ipv4_header_checksum(out)
    return bytes(out)


def split_udp(packet: bytes, size: int) -> list[bytes]:
    """Cut a UDP super-packet (``GSO_UDP_L4``) into datagrams of at most ``size`` payload bytes."""
    v, off, proto = _l4(packet)
    if proto != 17 or len(packet) < off + 8:
        raise DecodeError("UDP GSO packet is not UDP")
    if size <= 0:
        raise DecodeError("GSO size 0")
    hlen = off + 8
    total = len(packet) - hlen
    ident0 = _H.unpack_from(packet, 4)[0] if v == 4 else 0
    addr = _addr_sum(packet, v, 17)
    template = bytearray(packet[:hlen])
    mv = memoryview(packet)
    out: list[bytes] = []
    o = 0
    i = 0
    while o < total or i == 0:
        chunk = mv[hlen + o : hlen + o + size]
        n = len(chunk)
        h = bytearray(template)
        if v == 4:
            _H.pack_into(h, 2, hlen + n)
            _H.pack_into(h, 4, (ident0 + i) & 0xFFFF)
            _ipv4_header_checksum(h)
        else:
            _H.pack_into(h, 4, 8 + n)
        _H.pack_into(h, off + 4, 8 + n)
        h[off + 6 : off + 8] = b"\0\0"
        c = ~_fold(addr + 8 + n + _sum(memoryview(h)[off:]) + _sum(chunk)) & 0xFFFF
        _H.pack_into(h, off + 6, c or 0xFFFF)
        out.append(bytes(h) + chunk)
        o += n
        i += 1
    return out


# --------------------------------------------------------------------------------------------------
# Write side: packets -> super-packets


def _l4_checksum_ok(packet: bytes, version: int, off: int, proto: int) -> bool:
    return (
        _fold(_addr_sum(packet, version, proto) + (len(packet) - off) + _sum(memoryview(packet)[off:])) == _M
    )


def _trust(packet: bytes, version: int, off: int, proto: int) -> bool:
    return True


class _Group:
    """An open super-packet under construction: the first packet's headers and the payloads after it."""

    __slots__ = (
        "closed",
        "first",
        "gso",
        "hlen",
        "ip_same",
        "next_seq",
        "off",
        "parts",
        "size",
        "tcp_ack",
        "tcp_ack_psh",
        "tcp_rest",
        "total",
        "version",
    )

    def __init__(self, packet: bytes, version: int, off: int, hlen: int, gso: int, size: int) -> None:
        self.first = packet
        # What every merged segment must repeat: the IP fields other than length, identification and
        # checksum (IPv4: version/IHL, TOS, flags/fragment, TTL, protocol; IPv6: version, class, flow label
        # and next header/hop limit), and for TCP the ACK number, data offset, flags (ACK, or ACK|PSH),
        # window, urgent pointer and options.
        self.ip_same = packet[0:2] + packet[6:10] if version == 4 else packet[0:4] + packet[6:8]
        self.tcp_ack = self.tcp_ack_psh = self.tcp_rest = b""
        if gso != GSO_UDP_L4:
            self.tcp_ack = packet[off + 8 : off + 16]
            psh = bytearray(self.tcp_ack)
            psh[5] |= _TCP_PSH
            self.tcp_ack_psh = bytes(psh)
            self.tcp_rest = packet[off + 18 : hlen]
        self.version = version
        self.off = off
        self.hlen = hlen
        self.gso = gso
        self.size = size  # gso_size: the first payload's length
        self.parts: list[bytes | memoryview] = [packet]
        self.total = len(packet)
        seq = (_I.unpack_from(packet, off + 4)[0] + size) & 0xFFFFFFFF if gso != GSO_UDP_L4 else 0
        self.next_seq = seq.to_bytes(4, "big")
        self.closed = False

    def frame(self) -> bytes:
        """The frame to write: virtio-net header + packet."""
        if len(self.parts) == 1:
            return ZERO_HDR + self.first
        off, hlen, v = self.off, self.hlen, self.version
        h = bytearray(self.first[:hlen])
        length = self.total - off
        if v == 4:
            _H.pack_into(h, 2, self.total)
            _ipv4_header_checksum(h)
        else:
            _H.pack_into(h, 4, length)
        if self.gso == GSO_UDP_L4:
            _H.pack_into(h, off + 4, length)
            at = off + UDP_CSUM_OFFSET
        else:
            at = off + TCP_CSUM_OFFSET
            h[off + 13] |= self.parts[-1][off + 13] & _TCP_PSH  # PSH of the last segment
        _H.pack_into(h, at, _fold(_addr_sum(h, v, h[9] if v == 4 else h[6]) + length))
        vh = VNET_HDR.pack(F_NEEDS_CSUM, self.gso, hlen, self.size, off, at - off)
        return b"".join([vh, h, *(memoryview(p)[hlen:] for p in self.parts)])


def coalesce(
    packets: list[bytes], *, udp: bool = False, max_size: int = MAX_SUPER, verify: bool = True
) -> list[bytes]:
    """Frames (virtio-net header + packet) for writing ``packets`` to a TUN with TSO (and USO if ``udp``).

    Segments of one TCP flow (UDP flow with ``udp``) that could have come from one super-packet are
    merged; everything else is written alone with a zero header. Packets keep their order within a flow;
    frames are ordered by their first packet. Never raises: what cannot be parsed goes out alone.

    With ``verify`` (the default, as Linux GRO) a segment is merged only if its own transport checksum
    is right. Without, checksums are trusted: for packets that come out of an authenticated tunnel,
    where only their sender could have got them wrong (decision 0150).
    """
    ok = _l4_checksum_ok if verify else _trust
    out: list[_Group | bytes] = []
    open_: dict[bytes, _Group] = {}
    for p in packets:
        try:
            v, off, proto = _l4(p)
        except DecodeError:
            out.append(ZERO_HDR + p)
            continue
        if proto == 6 and len(p) >= off + 20:
            hlen = off + (p[off + 12] >> 4) * 4
            key = p[12 : off + 4] if v == 4 else p[8:44]  # addresses and ports (no IPv4 options: see below)
            g = open_.get(key)
            if g is not None:
                n = len(p) - hlen
                if (
                    hlen == g.hlen
                    and 0 < n <= g.size
                    and g.total + n <= max_size
                    and p[off + 4 : off + 8] == g.next_seq
                    and ((tag := p[off + 8 : off + 16]) == g.tcp_ack or tag == g.tcp_ack_psh)
                    and p[off + 18 : hlen] == g.tcp_rest
                    and (p[0:2] + p[6:10] if v == 4 else p[0:4] + p[6:8]) == g.ip_same
                    and ok(p, v, off, 6)
                ):
                    g.parts.append(p)
                    g.total += n
                    g.next_seq = ((int.from_bytes(g.next_seq, "big") + n) & 0xFFFFFFFF).to_bytes(4, "big")
                    if n < g.size or tag == g.tcp_ack_psh or len(g.parts) >= MAX_SEGMENTS:
                        del open_[key]
                    continue
                del open_[key]  # anything else of this flow ends the run (order within the flow)
            if (
                p[off + 13] == _TCP_ACK
                and len(p) > hlen
                and (v == 6 or off == 20)
                and hlen <= len(p)
                and ok(p, v, off, 6)
            ):
                g = _Group(p, v, off, hlen, GSO_TCPV4 if v == 4 else GSO_TCPV6, len(p) - hlen)
                open_[key] = g
                out.append(g)
            else:
                out.append(ZERO_HDR + p)
        elif proto == 17 and udp and len(p) >= off + 8:
            key = p[12:20] + p[off : off + 4] if v == 4 else p[8:40] + p[off : off + 4]
            g = open_.get(key)
            n = len(p) - off - 8
            if g is not None and _udp_follows(g, p, off, n, max_size) and ok(p, v, off, 17):
                g.parts.append(p)
                g.total += n
                if n < g.size or len(g.parts) >= MAX_SEGMENTS:
                    g.closed = True
                    del open_[key]
                continue
            if g is not None:
                del open_[key]
            if (
                n > 0
                and (v == 6 or off == 20)
                and _H.unpack_from(p, off + 4)[0] == len(p) - off
                and ok(p, v, off, 17)
            ):
                g = _Group(p, v, off, off + 8, GSO_UDP_L4, n)
                open_[key] = g
                out.append(g)
            else:
                out.append(ZERO_HDR + p)
        else:
            out.append(ZERO_HDR + p)
    return [x.frame() if isinstance(x, _Group) else x for x in out]


def _same_ip(g: _Group, p: bytes) -> bool:
    f = g.first
    if g.version == 4:
        # version/IHL, TOS; flags (DF); TTL, protocol (addresses: same key)
        return f[0:2] == p[0:2] and f[6:7] == p[6:7] and f[8:10] == p[8:10]
    return f[0:4] == p[0:4] and f[6:8] == p[6:8]  # traffic class, flow label, next header, hop limit


def _udp_follows(g: _Group, p: bytes, off: int, n: int, max_size: int) -> bool:
    return (
        g.gso == GSO_UDP_L4
        and off == g.off
        and 0 < n <= g.size
        and g.total + n <= max_size
        and _H.unpack_from(p, off + 4)[0] == len(p) - off
        and _same_ip(g, p)
    )
