"""``wire.rewrite.ecn_of``: the ECN bits of an IP packet, as the node copies them onto the datagram."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from gateway_core.wire.ip import build_udp_packet
from gateway_core.wire.rewrite import ecn_of


def test_ecn_of_reads_the_tos_byte_and_the_traffic_class() -> None:
    v4 = bytearray(build_udp_packet(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), 1, 2, b"x"))
    v6 = bytearray(build_udp_packet(IPv6Address("fd00::1"), IPv6Address("fd00::2"), 1, 2, b"x"))
    for ecn in range(4):
        v4[1] = 0xB8 | ecn  # DSCP EF beside the ECN bits
        v6[0], v6[1] = 0x6B, 0x80 | (ecn << 4)  # traffic class 0xB8 | ecn spread over bytes 0-1
        assert (ecn_of(bytes(v4)), ecn_of(bytes(v6))) == (ecn, ecn)
    assert ecn_of(b"") == ecn_of(b"\x45") == 0
