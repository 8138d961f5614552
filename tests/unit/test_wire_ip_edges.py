"""The IP parsers at their exact edges: headers that end exactly where the packet ends or one byte short of
it, every bit of the IPv6 fragment field and the IPv4 flags, IHL and AH corner cases, the checksum rules'
corners (a UDP checksum with one zero byte, a UDP length shorter than the IP payload, ICMPv6 in IPv4).

Written against the surviving mutants of ``make mutation`` (``docs/testing.md``): each test pins a boundary
the round-trip and truncation tests of ``test_wire_ip.py`` did not reach.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from gateway_core.errors import DecodeError, DropReason
from gateway_core.wire.checksum import internet_checksum, pseudo_header_sum
from gateway_core.wire.ip import (
    PROTO_AH,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    build_icmp,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_udp,
    five_tuple,
    l4_checksum_ok,
    locate_l4,
    parse_icmp,
    parse_ipv4,
    parse_ipv6,
    parse_tcp,
    validate,
)

V4A, V4B = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
V6A, V6B = IPv6Address("fd00:2021:1111::1"), IPv6Address("2001:db8::1")
NO_NEXT = 59
"""IPv6 "no next header": nothing follows."""
HOPOPT, FRAG = 0, 44


def v6(next_header: int, payload: bytes, *, plen: int | None = None) -> bytes:
    """An IPv6 packet whose payload length field may differ from the bytes that follow (``plen``)."""
    pkt = bytearray(build_ipv6(V6A, V6B, next_header, payload))
    if plen is not None:
        pkt[4:6] = struct.pack("!H", plen)
    return bytes(pkt)


def v4_raw(proto: int, payload: bytes, *, ihl: int = 5, total: int | None = None, ff: int = 0) -> bytes:
    """An IPv4 header written field by field (``ff``: flags and fragment offset), without checksum."""
    length = ihl * 4 + len(payload) if total is None else total
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 0, ff, 64, proto, 0, V4A.packed, V4B.packed)
    return head + bytes(max(0, ihl * 4 - 20)) + payload


# --- IPv4 -------------------------------------------------------------------------------------------------


def test_ipv4_header_length_below_five_words_or_beyond_the_buffer_is_refused() -> None:
    short_ihl = v4_raw(PROTO_UDP, bytes(20), ihl=4, total=40)  # IHL 4: 16 bytes, total fits
    too_long = v4_raw(PROTO_UDP, b"", ihl=5, total=40)[:20] + bytes(20)
    too_long = bytes([0x4F]) + too_long[1:]  # IHL 15: 60 bytes in a 40-byte buffer
    for pkt in (short_ihl, too_long):
        for lax in (False, True):
            with pytest.raises(DecodeError):
                locate_l4(pkt, lax)
        assert validate(pkt) == DropReason.MALFORMED_IP


def test_ipv4_auth_header_ending_the_packet_and_one_byte_of_one() -> None:
    ah = bytes([NO_NEXT, 0]) + bytes(6)  # (0 + 2) * 4 = 8 bytes, nothing after it
    assert locate_l4(build_ipv4(V4A, V4B, PROTO_AH, ah)) == (4, NO_NEXT, 28, 28, False)
    for cut in (1, 2, 7):  # an AH that does not fit: a DecodeError, never an IndexError
        with pytest.raises(DecodeError):
            locate_l4(build_ipv4(V4A, V4B, PROTO_AH, ah[:cut]))


def test_ipv4_auth_header_of_a_later_fragment_is_not_parsed() -> None:
    """Only the first fragment (offset 0) carries the AH; a later fragment's bytes are fragment data."""
    data = bytes([PROTO_UDP, 4]) + bytes(30)
    later = v4_raw(PROTO_AH, data, ff=0x0003)  # offset 3, MF clear
    assert locate_l4(later) == (4, PROTO_AH, 20, 52, True)
    first = v4_raw(PROTO_AH, data, ff=0x2000)  # MF set, offset 0: the AH is parsed
    assert locate_l4(first) == (4, PROTO_UDP, 44, 52, True)


@pytest.mark.parametrize(
    ("ff", "df", "mf", "offset"),
    [(0x0000, False, False, 0), (0x4000, True, False, 0), (0x2000, False, True, 0), (0x0001, False, False, 1),
     (0x2005, False, True, 5), (0x1FFF, False, False, 0x1FFF), (0x6000, True, True, 0)],
)  # fmt: skip
def test_ipv4_flags_and_fragment_offset(ff: int, df: bool, mf: bool, offset: int) -> None:
    h = parse_ipv4(v4_raw(PROTO_UDP, bytes(8), ff=ff))
    assert (h.dont_fragment, h.more_fragments, h.frag_offset) == (df, mf, offset)


# --- IPv6 -------------------------------------------------------------------------------------------------


def test_bare_ipv6_header_is_a_whole_packet() -> None:
    bare = build_ipv6(V6A, V6B, NO_NEXT, b"")
    assert len(bare) == 40
    assert locate_l4(bare) == (6, NO_NEXT, 40, 40, False)
    assert locate_l4(bare, lax=True) == (6, NO_NEXT, 40, 40, False)
    assert parse_ipv6(bare).payload_len == 0


def test_lax_ipv6_keeps_a_payload_length_that_fits() -> None:
    """Lax (a quoted packet): only a length of 0 or one beyond the buffer means "to the end"."""
    pkt = build_ipv6(V6A, V6B, PROTO_UDP, build_udp(V6A, V6B, 1, 2, b"abc")) + b"trailer"
    assert locate_l4(pkt, lax=True) == (6, PROTO_UDP, 40, 51, False)
    zero = v6(PROTO_UDP, build_udp(V6A, V6B, 1, 2, b"abc"), plen=0)
    assert locate_l4(zero, lax=True) == (6, PROTO_UDP, 40, 51, False)


def test_traffic_class_and_flow_label() -> None:
    h = parse_ipv6(build_ipv6(V6A, V6B, NO_NEXT, b"", traffic_class=0xAB, flow_label=0x12345))
    assert (h.traffic_class, h.flow_label) == (0xAB, 0x12345)
    h = parse_ipv6(build_ipv6(V6A, V6B, NO_NEXT, b"", traffic_class=0x01, flow_label=0xFFFFF))
    assert (h.traffic_class, h.flow_label) == (0x01, 0xFFFFF)


@pytest.mark.parametrize("kind", [HOPOPT, FRAG, PROTO_AH])
def test_extension_header_ending_the_packet(kind: int) -> None:
    ext = bytes([NO_NEXT, 0]) + bytes(6)  # 8 bytes for each kind (AH: (0 + 2) * 4)
    assert locate_l4(v6(kind, ext)) == (6, NO_NEXT, 48, 48, False)


@pytest.mark.parametrize("kind", [HOPOPT, FRAG, PROTO_AH])
@pytest.mark.parametrize("cut", [1, 2, 7])
def test_extension_header_cut_short_is_a_decode_error(kind: int, cut: int) -> None:
    """Cut inside the header (the payload length says so too): a DecodeError, never an IndexError."""
    ext = bytes([NO_NEXT, 0]) + bytes(6)
    with pytest.raises(DecodeError):
        locate_l4(v6(kind, ext[:cut]))
    assert validate(v6(kind, ext[:cut])) == DropReason.MALFORMED_IP


@pytest.mark.parametrize(
    ("hi", "lo", "fragment"),
    [(0x00, 0x00, False), (0x00, 0x01, True), (0x00, 0x06, False), (0x00, 0x08, True), (0x00, 0xF8, True),
     (0x01, 0x00, True), (0x80, 0x00, True), (0xFF, 0xF9, True)],
)  # fmt: skip
def test_every_bit_of_the_fragment_field(hi: int, lo: int, fragment: bool) -> None:
    """Offset (13 bits) and M flag make a fragment; the two reserved bits (0x0006) do not."""
    udp = build_udp(V6A, V6B, 5, 6, b"x")
    pkt = v6(FRAG, bytes([PROTO_UDP, 0, hi, lo]) + bytes(4) + udp)
    assert locate_l4(pkt) == (6, PROTO_UDP, 48, 57, fragment)
    if fragment:
        assert validate(pkt) == DropReason.FRAGMENT
        with pytest.raises(DecodeError):
            five_tuple(pkt)
    else:
        assert five_tuple(pkt) == (PROTO_UDP, V6A, V6B, 5, 6)


def test_fragment_after_other_extension_headers() -> None:
    frag = bytes([PROTO_UDP, 0, 0, 1]) + bytes(4)  # M flag
    pkt = v6(HOPOPT, bytes([FRAG, 0]) + bytes(6) + frag + b"data")
    assert locate_l4(pkt) == (6, PROTO_UDP, 56, 60, True)


# --- transport headers ------------------------------------------------------------------------------------


def test_transport_header_shorter_than_its_minimum() -> None:
    """The IP header is consistent but the UDP / TCP / ICMP header in it is short by one byte."""
    for proto, short in ((PROTO_UDP, 7), (PROTO_TCP, 19), (1, 7)):
        pkt = build_ipv4(V4A, V4B, proto, bytes(short))
        with pytest.raises(DecodeError):
            five_tuple(pkt)
        assert validate(pkt) == DropReason.MALFORMED_L4
    assert five_tuple(build_ipv4(V4A, V4B, PROTO_TCP, bytes(20))) == (PROTO_TCP, V4A, V4B, 0, 0)


def test_tcp_data_offset_below_five_words() -> None:
    seg = bytearray(build_tcp(V4A, V4B, 1, 2, b"payload"))
    seg[12] = 4 << 4  # 16 bytes
    with pytest.raises(DecodeError):
        parse_tcp(bytes(seg))


def test_tcp_and_icmp_checksum_and_urgent_fields() -> None:
    seg = build_tcp(V4A, V4B, 1, 2, b"x", urgent=0x1234)
    t = parse_tcp(seg)
    assert (t.urgent, t.checksum) == (0x1234, struct.unpack_from("!H", seg, 16)[0])
    icmp = build_icmp(V4A, V4B, 8, 0, 0x00010002, b"ping")
    assert parse_icmp(icmp).checksum == struct.unpack_from("!H", icmp, 2)[0] != 0


def test_udp_length_field_of_several_hundred_bytes() -> None:
    """The high byte of the UDP length counts: 264 declared in a 100-byte payload is malformed."""
    seg = bytearray(build_udp(V4A, V4B, 1, 2, bytes(92)))
    seg[4:6] = struct.pack("!H", 264)
    assert validate(build_ipv4(V4A, V4B, PROTO_UDP, bytes(seg))) == DropReason.MALFORMED_L4


# --- checksums --------------------------------------------------------------------------------------------


def _with_udp_checksum(src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, csum: int) -> bytes:
    seg = bytearray(build_udp(src, dst, 1, 2, b"data"))
    seg[6:8] = struct.pack("!H", csum)
    return bytes(
        build_ipv4(src, dst, PROTO_UDP, bytes(seg)) if src.version == 4 else v6(PROTO_UDP, bytes(seg))
    )


def test_udp_checksum_with_one_zero_byte_is_checked() -> None:
    """Only 0x0000 means "no checksum" (IPv4); a wrong 0xAB00 or 0x00AB is wrong in both families."""
    good = struct.unpack_from("!H", build_udp(V4A, V4B, 1, 2, b"data"), 6)[0]
    for bad in (0xAB00, 0x00AB):
        assert bad != good
        assert not l4_checksum_ok(_with_udp_checksum(V4A, V4B, bad))
        assert not l4_checksum_ok(_with_udp_checksum(V6A, V6B, bad))
    assert l4_checksum_ok(_with_udp_checksum(V4A, V4B, 0))


def test_ipv4_header_checksum_is_checked_before_the_transport_one() -> None:
    pkt = bytearray(build_ipv4(V4A, V4B, PROTO_UDP, build_udp(V4A, V4B, 1, 2, b"data")))
    assert l4_checksum_ok(bytes(pkt))
    pkt[10] ^= 0xFF  # the header checksum only
    assert not l4_checksum_ok(bytes(pkt))


@pytest.mark.parametrize("udp_len", [8, 300])
def test_udp_checksum_covers_the_udp_length_not_the_ip_payload(udp_len: int) -> None:
    """Bytes after the UDP length (inside the IP payload) are not summed: an empty datagram and one of
    300 bytes (the length's high byte matters), each followed by 10 bytes."""
    seg = build_udp(V4A, V4B, 1, 2, bytes(udp_len - 8))
    assert l4_checksum_ok(build_ipv4(V4A, V4B, PROTO_UDP, seg + b"0123456789"))
    assert l4_checksum_ok(v6(PROTO_UDP, build_udp(V6A, V6B, 1, 2, bytes(udp_len - 8)) + b"0123456789"))


def test_checksum_rules_by_protocol_and_family() -> None:
    # ICMPv6 inside IPv4 is another protocol to the checksum check: only the IPv4 header counts.
    assert l4_checksum_ok(build_ipv4(V4A, V4B, PROTO_ICMPV6, b"\x80\x00\x12\x34garbage"))
    # Another protocol in IPv6: nothing to check.
    assert l4_checksum_ok(v6(47, b"\x00\x00\x08\x00garbage"))
    # ICMPv6 in IPv6: its checksum over the pseudo-header is checked.
    icmp = bytearray(build_icmp(V6A, V6B, 128, 0, 1, b"ping"))
    assert l4_checksum_ok(v6(PROTO_ICMPV6, bytes(icmp)))
    icmp[2] ^= 0x01
    assert not l4_checksum_ok(v6(PROTO_ICMPV6, bytes(icmp)))
    assert internet_checksum(bytes(icmp), pseudo_header_sum(V6A, V6B, PROTO_ICMPV6, len(icmp))) != 0
