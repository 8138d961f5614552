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
new % M`` (``M = 0xFFFF``); the constant here is that sum's fixed part for the flow, ``new - old - 1``
modulo ``M`` (a flow whose old and new field sums are equal, which ``nat_rewrite`` leaves unadjusted, is not
cached). A test compares both paths byte for byte; the gateway counts the packets the cache forwarded
(``gateway.flow_cache_hits.*``, decision 0177) and the stateful test predicts them.
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
_V4_FIXED = struct.Struct("!H2xHxBH")  # total length, flags + fragment offset, protocol, header checksum
_U16X2 = struct.Struct("!HH")
_U16 = struct.Struct("!H")

# How a cached flow's packets are rewritten (``FlowEntry[0]``), each with the struct that packs the
# rewritten head of the packet (everything up to and including the transport checksum).
KEEP = 0
"""Forwarded unchanged."""
V4_UDP = 1
V4_TCP = 2
V6_UDP = 3
V6_TCP = 4
_V4_UDP_HEAD = struct.Struct("!10sH12sHH")  # bytes 0-9, header checksum, key, UDP length, UDP checksum
_V4_TCP_HEAD = struct.Struct("!10sH12s12sH")  # ..., key, sequence to urgent flags/window, TCP checksum
_V6_UDP_HEAD = struct.Struct("!8s36sHH")  # bytes 0-7, key, UDP length, UDP checksum
_V6_TCP_HEAD = struct.Struct("!8s36s12sH")
# The slices that fill the heads' byte fields, as constants: a literal slice one byte longer than its ``Ns``
# field would pack the same bytes (``struct`` cuts an ``s`` field to its length).
_V4_PRE = slice(0, 10)  # version to TTL and protocol
_V6_PRE = slice(0, 8)  # version to hop limit
_V4_TCP_MID = slice(24, 36)  # sequence number to window
_V6_TCP_MID = slice(44, 56)

FlowEntry = tuple[int, int, bytes, int, int, NatSession | None, NatTable | None]
"""``(rewrite kind, protocol, replacement key bytes, IPv4 header checksum constant, transport checksum
constant, NAT session or None, its table)``. A checksum constant ``k`` gives the adjusted checksum of
``c`` as ``0xFFFE - (k - c) % 0xFFFF``, which is RFC 1624's ``~(~c + ~m + m')`` with end-around carry
(``checksum_adjust_int``) with the flow's fixed part folded into ``k``."""


_KEEP_REST: tuple[bytes, int, int, None, None] = (b"", 0, 0, None, None)
"""The rest of an entry of a flow forwarded unchanged (:data:`KEEP`): :func:`forward` reads nothing of it."""


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
    """The checksum constant of a change of the field sum ``old`` to ``new`` (see :data:`FlowEntry`): only
    its value modulo ``0xFFFF`` counts (:func:`forward` takes ``(k - c) % 0xFFFF``, never negative in
    Python), so RFC 1624's ``~m + m'`` with the ``- 1`` of ``0xFFFE - ...`` folded in is ``new - old - 1``."""
    return new - old - 1


def _field_sums(block: bytes) -> tuple[int, int]:
    """``(address sum, address and port sum)`` of a key's fields (12 or 36 bytes: two addresses of 4 or 16
    bytes, two ports), as ``nat_rewrite`` adds them up."""
    n = len(block) // 2 - 2
    a = int.from_bytes(block[:n]) + int.from_bytes(block[n : 2 * n])  # (big-endian: the default since 3.11)
    ports = int.from_bytes(block[2 * n : 2 * n + 2]) + int.from_bytes(block[2 * n + 2 :])
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
    proto = out[6] if v6 else out[9]
    new = bytes(out[V6_KEY] if v6 else out[V4_KEY])
    if len(table) >= MAX_FLOWS:
        table.clear()
    if new == key:
        table[key] = (KEEP, proto, *_KEEP_REST)
        return
    old_a, old_all = _field_sums(key)
    new_a, new_all = _field_sums(new)
    if old_all == new_all or (not v6 and old_a == new_a):
        return  # a rewrite that leaves a checksum as it is (never seen in practice): always the full path
    kind = (V6_UDP if proto == PROTO_UDP else V6_TCP) if v6 else (V4_UDP if proto == PROTO_UDP else V4_TCP)
    # (the header constant of an IPv6 flow is never read: IPv6 has no header checksum)
    table[key] = (
        kind,
        proto,
        new,
        _adjust_constant(old_a, new_a),
        _adjust_constant(old_all, new_all),
        session,
        nat,
    )


def forward(table: dict[bytes, FlowEntry], packet: bytes, now: Instant) -> bytes | None:
    """The packet to forward if its flow is cached and the packet has the shape the full path would
    accept as it did the flow's first; ``None``: take the full path."""
    n = len(packet)
    if n > MAX_IP_SIZE:
        return None
    if packet[0] == 0x45:
        if n < 28:
            return None
        e = table.get(packet[12:24])
        if e is None:
            return None
        total, ff, proto, hc = _V4_FIXED.unpack_from(packet, 2)
        if total != n or ff & 0x3FFF or proto != e[1]:
            return None
        l4 = 20
    elif packet[0] >> 4 == 6:
        if n < 48:
            return None
        e = table.get(packet[8:44])
        if e is None or packet[6] != e[1] or (packet[4] << 8) | packet[5] != n - 40:
            return None
        proto = e[1]
        hc = l4 = 40
    else:
        return None
    if proto == PROTO_UDP:
        ulen, c = _U16X2.unpack_from(packet, l4 + 4)
        if ulen < 8 or ulen > n - l4:
            return None
    elif n - l4 < 20 or not 20 <= (packet[l4 + 12] >> 4) * 4 <= n - l4 or packet[l4 + 13] & TCP_RST:
        return None
    kind = e[0]
    if kind == KEEP:
        return packet
    s = e[5]
    if s is not None:
        s.last_seen = now
        e[6]._now = now  # type: ignore[union-attr]  # the table's tick, as translate_*_key does
    if kind == V4_UDP:
        return (
            _V4_UDP_HEAD.pack(
                packet[_V4_PRE], 0xFFFE - (e[3] - hc) % _M, e[2], ulen, c and (0xFFFE - (e[4] - c) % _M or _M)
            )
            + packet[28:]
        )
    if kind == V4_TCP:
        c = _U16.unpack_from(packet, 36)[0]
        return (
            _V4_TCP_HEAD.pack(
                packet[_V4_PRE],
                0xFFFE - (e[3] - hc) % _M,
                e[2],
                packet[_V4_TCP_MID],
                0xFFFE - (e[4] - c) % _M,
            )
            + packet[38:]
        )
    if kind == V6_UDP:
        return (
            _V6_UDP_HEAD.pack(packet[_V6_PRE], e[2], ulen, c and (0xFFFE - (e[4] - c) % _M or _M))
            + packet[48:]
        )
    c = _U16.unpack_from(packet, 56)[0]
    return (
        _V6_TCP_HEAD.pack(packet[_V6_PRE], e[2], packet[_V6_TCP_MID], 0xFFFE - (e[4] - c) % _M) + packet[58:]
    )
