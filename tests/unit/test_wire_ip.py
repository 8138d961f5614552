"""IP/UDP/TCP/ICMP codecs: layouts, round-trips, truncation, trailing bytes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from gateway_core.wire.ip import (
    PROTO_UDP,
    build_udp_packet,
    five_tuple,
    l4_checksum_ok,
    parse_ip,
)

V4A, V4B = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
V6A, V6B = IPv6Address("fd00:2021:1111::1"), IPv6Address("2001:db8::1")

# gateway-datapath.md §6.1 worked example: the offending packet.
OFFENDING = bytes.fromhex(
    "45000024000040004011cc8764400001 0a000001".replace(" ", "")
    + "0001025800108f33 0000000000000000".replace(" ", "")
)


def test_udp_packet_matches_spec_vector() -> None:
    assert build_udp_packet(V4A, V4B, 1, 600, bytes(8)) == OFFENDING


def test_parse_udp_packet() -> None:
    p = parse_ip(OFFENDING)
    assert (p.version, p.src, p.dst, p.proto, p.ttl, p.l4_offset, p.total_len) == (
        4,
        V4A,
        V4B,
        17,
        64,
        20,
        36,
    )
    assert five_tuple(OFFENDING) == (PROTO_UDP, V4A, V4B, 1, 600)
    assert l4_checksum_ok(OFFENDING)
