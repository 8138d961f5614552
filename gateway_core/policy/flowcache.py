"""A per-flow cache of the policy's decision: the data path's fast path for TCP and UDP.

Theory of operation. The full per-packet path (``Gateway.handle_datagram`` / ``handle_tun_packet``:
validation, anti-spoofing, the filter table, the DNS-resource NAT, the rewrite) depends, for a TCP or UDP
packet of the usual shape, only on its addresses and ports and on the client's state. So once a packet of
a flow has gone the full way and been forwarded, the outcome is kept here under the packet's address and
port bytes (:data:`V4_KEY`, :data:`V6_KEY`) as a :data:`FlowEntry`: the protocol, the 12 (IPv4) or 36
(IPv6) bytes that replace them (``None``: forwarded unchanged), the two RFC 1624 checksum constants and
the NAT session to refresh. The next packet of the flow is looked up with one slice and one dict probe
(bytes hash in C), checked for the shape the full path would accept (:func:`forward`), and rewritten with
one slice assignment and two constant checksum adjustments: no ``ipaddress`` object, no NAT table probe.

Only forwarded packets are cached, never drops or replies, so the cache can only say yes to what the
full path said yes to. It is invalidated (cleared) whenever the answer could change: the client's filter
table is rebuilt (authorise, revoke, update, expire, retain, NAT set-up), a proxy IP's translation
changes, a NAT session is created or ends (a new session can claim a reply's outside key; an ended one
leaves a tombstone), and it is bounded (:data:`MAX_FLOWS` per direction, cleared when full). Packets of
any other shape (IPv4 options, IPv6 extension headers, ICMP, fragments, TCP RST, anything the validation
would refuse) always take the full path, as do all packets while flow logs are on.

The rewrite is exactly the full path's: :func:`gateway_core.wire.rewrite.nat_rewrite` adjusts each
checksum with ``checksum_adjust_int(c, old, new)``, whose result depends only on ``~c + (M - old % M) +
new % M`` (``M = 0xFFFF``); the constant here is that sum's fixed part for the flow (``0``: no adjustment,
as when the old and new field sums are equal). A test compares both paths byte for byte.
"""

from __future__ import annotations

import struct

from gateway_core.clock import Instant
from gateway_core.policy.nat import NatSession, NatTable
from gateway_core.wire.ipconst import MAX_IP_SIZE, PROTO_TCP, PROTO_UDP, TCP_RST

MAX_FLOWS = 512
"""Cached flows per client and direction; the cache is cleared when full. A flow costs about 250 bytes
here, so a client flooding new flows costs at most ~250 KiB (10,000 such clients ~2.5 GB would need
10,000 authorised flooding clients; the NAT table itself allows 8192 sessions per client). 512 covers a
busy client's concurrent flows (a browser keeps tens); a miss costs only the full path. Firezone has no
such cache (its per-packet path is compiled)."""

V4_KEY = slice(12, 24)
"""IPv4 without options: source, destination, source port, destination port."""
V6_KEY = slice(8, 44)
"""IPv6 without extension headers: the same."""
_M = 0xFFFF
_V4_FIXED = struct.Struct("!H2xHxB")  # total length, flags + fragment offset, protocol (from byte 2)

FlowEntry = tuple[int, bytes | None, int, int, int, NatSession | None, NatTable | None]
"""``(protocol, replacement bytes or None, IPv4 header checksum constant, transport checksum constant,
transport checksum offset, NAT session or None, its table)``; a constant of 0 means "leave it"."""


class FlowCache:
    """One client's cached decisions: ``outbound`` (from the client) and ``inbound`` (to it)."""

    __slots__ = ("inbound", "outbound")

    def __init__(self) -> None:
        self.outbound: dict[bytes, FlowEntry] = {}
        self.inbound: dict[bytes, FlowEntry] = {}

    def clear(self) -> None:
        """Forget every decision (the client's filters or NAT changed)."""
        self.outbound.clear()
        self.inbound.clear()

    def __len__(self) -> int:
        return len(self.outbound) + len(self.inbound)


def fast_key(packet: bytes | bytearray) -> bytes | None:
    """The cache key of a packet of a cacheable shape (IPv4 without options or IPv6 without extension
    headers, carrying TCP without RST or UDP), else ``None``. The packet is a validated one."""
    b0 = packet[0]
    if b0 == 0x45:
        proto, l4 = packet[9], 20
    elif b0 >> 4 == 6:
        proto, l4 = packet[6], 40
    else:
        return None
    if proto == PROTO_UDP:
        pass
    elif proto != PROTO_TCP or packet[l4 + 13] & TCP_RST:
        return None
    return bytes(packet[V4_KEY] if l4 == 20 else packet[V6_KEY])


def _adjust_constant(old: int, new: int) -> int:
    """The part of RFC 1624's ``~HC + ~m + m'`` fixed by the flow (``0``: no change to make)."""
    return 0 if old == new else (_M - old % _M) + new % _M


def _field_sums(block: bytes, v6: bool) -> tuple[int, int]:
    """``(address sum, address and port sum)`` of a key's fields, as ``nat_rewrite`` adds them up."""
    n = 16 if v6 else 4
    a = int.from_bytes(block[:n], "big") + int.from_bytes(block[n : 2 * n], "big")
    ports = int.from_bytes(block[2 * n : 2 * n + 2], "big") + int.from_bytes(block[2 * n + 2 :], "big")
    return a, a + ports


def remember(
    table: dict[bytes, FlowEntry],
    key: bytes,
    out: bytes | bytearray,
    session: NatSession | None,
    nat: NatTable | None,
) -> None:
    """Cache the full path's outcome for ``key`` (from :func:`fast_key` of the packet before the path):
    ``out`` is the packet it forwarded, ``session`` the NAT session it went through (``None``: none)."""
    v6 = len(key) == 36
    l4 = 40 if v6 else 20
    proto = out[6] if v6 else out[9]
    new = bytes(out[V6_KEY] if v6 else out[V4_KEY])
    if len(table) >= MAX_FLOWS:
        table.clear()
    if new == key:
        table[key] = (proto, None, 0, 0, 0, None, None)
        return
    old_a, old_all = _field_sums(key, v6)
    new_a, new_all = _field_sums(new, v6)
    hdr = 0 if v6 else _adjust_constant(old_a, new_a)
    csum_at = l4 + (6 if proto == PROTO_UDP else 16)
    table[key] = (proto, new, hdr, _adjust_constant(old_all, new_all), csum_at, session, nat)


def forward(table: dict[bytes, FlowEntry], packet: bytes, now: Instant) -> bytes | None:
    """The packet to forward if its flow is cached and the packet has the shape the full path would
    accept as it did the flow's first; ``None``: take the full path."""
    n = len(packet)
    if n > MAX_IP_SIZE:
        return None
    b0 = packet[0]
    if b0 == 0x45:
        if n < 28:
            return None
        e = table.get(packet[12:24])
        if e is None:
            return None
        total, ff, proto = _V4_FIXED.unpack_from(packet, 2)
        if total != n or ff & 0x3FFF or proto != e[0]:
            return None
        l4 = 20
    elif b0 >> 4 == 6:
        if n < 48:
            return None
        e = table.get(packet[8:44])
        if e is None or packet[6] != e[0] or (packet[4] << 8) | packet[5] != n - 40:
            return None
        proto, l4 = e[0], 40
    else:
        return None
    avail = n - l4
    if proto == PROTO_UDP:
        ulen = (packet[l4 + 4] << 8) | packet[l4 + 5]
        if ulen < 8 or ulen > avail:
            return None
    elif avail < 20 or not 20 <= (packet[l4 + 12] >> 4) * 4 <= avail or packet[l4 + 13] & TCP_RST:
        return None
    repl = e[1]
    if repl is None:
        return packet
    s = e[5]
    if s is not None:
        s.last_seen = now
        e[6]._now = now  # type: ignore[union-attr]  # NatTable's tick, as translate_*_key does
    buf = bytearray(packet)
    if l4 == 20:
        buf[12:24] = repl
        k = e[2]
        if k:
            t = (~((packet[10] << 8) | packet[11]) & _M) + k
            t = (t & _M) + (t >> 16)
            t = ~((t & _M) + (t >> 16)) & _M
            buf[10] = t >> 8
            buf[11] = t & 0xFF
    else:
        buf[8:44] = repl
    k = e[3]
    if k:
        at = e[4]
        c = (packet[at] << 8) | packet[at + 1]
        if c or proto != PROTO_UDP:
            t = (~c & _M) + k
            t = (t & _M) + (t >> 16)
            t = ~((t & _M) + (t >> 16)) & _M
            if t == 0 and proto == PROTO_UDP:
                t = _M
            buf[at] = t >> 8
            buf[at + 1] = t & 0xFF
    return bytes(buf)
