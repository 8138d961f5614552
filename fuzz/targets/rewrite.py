"""NAT rewriting (``gateway_core/wire/rewrite.py``) on any packet: ``nat_rewrite``,
``recompute_checksums`` and ``merge_ecn`` raise only ``DecodeError`` for a malformed packet (the
addresses and ports given are always valid, so ``UsageError`` would be a bug here).

After a successful rewrite the fields read back as written, the packet keeps its length, and if the
transport checksum verified before, it still verifies (incremental update, RFC 1624).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from gateway_core.errors import DecodeError
from gateway_core.wire import ip, rewrite

NEW4 = (IPv4Address("100.64.0.9"), IPv4Address("172.20.0.1"))
NEW6 = (IPv6Address("fd00:2021:1111::9"), IPv6Address("2001:db8::1"))


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, port, packet = data[0], int.from_bytes(data[1:3], "big"), data[3:]
    buf = bytearray(packet)
    try:
        rewrite.merge_ecn(buf, mode & 3)
    except DecodeError:
        pass
    buf = bytearray(packet)
    try:
        rewrite.recompute_checksums(buf)
    except DecodeError:
        pass
    else:
        assert len(buf) == len(packet)
    try:
        version, proto, _, _, fragment = ip.locate_l4(packet)
        checks_before = not fragment and ip.l4_checksum_ok(packet)
    except DecodeError:
        return
    new_src, new_dst = NEW4 if version == 4 else NEW6
    echo = proto in (ip.PROTO_ICMP, ip.PROTO_ICMPV6)
    src = new_src if mode & 4 else None
    dst = new_dst if mode & 8 else None
    sport = port if mode & 16 else None
    dport = port if mode & 32 and (sport is None or not echo) else None
    buf = bytearray(packet)
    try:
        rewrite.nat_rewrite(buf, src=src, dst=dst, sport=sport, dport=dport)
    except DecodeError:
        return
    assert len(buf) == len(packet)
    got_src, got_dst = ip.src_dst(buf)
    assert got_src == (src or ip.src_dst(packet)[0]) and got_dst == (dst or ip.src_dst(packet)[1])
    if checks_before and not (proto == ip.PROTO_UDP and version == 4 and _udp_zero_checksum(packet)):
        assert ip.l4_checksum_ok(buf), "a rewrite broke a valid checksum"


def _udp_zero_checksum(packet: bytes) -> bool:
    _, _, off, _, _ = ip.locate_l4(packet)
    return len(packet) >= off + 8 and packet[off + 6 : off + 8] == b"\x00\x00"
