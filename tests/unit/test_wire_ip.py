"""IP/UDP/TCP/ICMP codecs: checksums, layouts, parsers whole / truncated / with trailing bytes,
hypothesis round-trips, data-path accessors and the validity rules (Firezone's ``IpPacket::new``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.wire.checksum import checksum_adjust, internet_checksum, ones_sum, pseudo_header_sum
from gateway_core.wire.ip import (
    MAX_IP_SIZE,
    PROTO_AH,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    build_icmp,
    build_icmp_echo,
    build_ip,
    build_ipv4,
    build_ipv6,
    build_tcp,
    build_tcp_packet,
    build_udp,
    build_udp_packet,
    five_tuple,
    ip_version,
    l4_checksum_ok,
    l4_info,
    locate_l4,
    parse_icmp,
    parse_ip,
    parse_ipv4,
    parse_ipv6,
    parse_tcp,
    parse_udp,
    src_dst,
    validate,
)
from tests.unit.wire_strategies import Spec, addr_pairs, packets, payloads, ports, proto_of, ttls, v4

V4A, V4B = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
V6A, V6B = IPv6Address("fd00:2021:1111::1"), IPv6Address("2001:db8::1")

# The worked example of test_wire_icmp.py: the offending packet (TTL 64, ident 0, DF, 8 zero bytes).
OFFENDING = bytes.fromhex("45000024000040004011cc87644000010a000001" + "0001025800108f33" + "00" * 8)

SAMPLES = {
    "udp4": build_udp_packet(V4A, V4B, 1234, 53, b"hello"),
    "udp6": build_udp_packet(V6A, V6B, 1234, 53, b"hello"),
    "tcp4": build_tcp_packet(V4A, V4B, 40000, 443, b"GET", seq=7, ack=9, flags=TCP_ACK),
    "tcp6": build_tcp_packet(V6A, V6B, 40000, 443, b"GET", flags=TCP_SYN),
    "echo4": build_icmp_echo(V4A, V4B, 77, 3, b"ping"),
    "echo6": build_icmp_echo(V6A, V6B, 77, 3, b"ping", reply=True),
}


def naive_checksum(data: bytes) -> int:
    """RFC 1071 §4.1 reference loop (an independent implementation)."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# --- checksums --------------------------------------------------------------------------------------------


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_checksum_edge_values() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\0\0\0") == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0  # sum is "negative zero"
    assert internet_checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_checksum_equals_reference_loop(data: bytes) -> None:
    assert internet_checksum(data) == naive_checksum(data)
    # A buffer with its checksum appended (even length) verifies to 0.
    padded = data + b"\0" * (len(data) % 2)
    assert internet_checksum(padded + internet_checksum(padded).to_bytes(2, "big")) == 0


@given(addr_pairs, st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_pseudo_header_sum_equals_explicit_header(
    pair: tuple[IPv4Address | IPv6Address, IPv4Address | IPv6Address], proto: int, length: int, data: bytes
) -> None:
    src, dst = pair
    if src.version == 4:
        ph = src.packed + dst.packed + bytes([0, proto]) + length.to_bytes(2, "big")
    else:
        ph = src.packed + dst.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])
    assert internet_checksum(data, pseudo_header_sum(src, dst, proto, length)) == naive_checksum(ph + data)


@given(st.binary(min_size=2, max_size=100), st.data())
@settings(max_examples=300, deadline=None)
def test_incremental_update_equals_recomputation(data: bytes, draw: st.DataObject) -> None:
    data = data + b"\0" * (len(data) % 2)
    words = len(data) // 2
    start = draw.draw(st.integers(0, words - 1)) * 2
    n = draw.draw(st.integers(1, words - start // 2)) * 2
    new = draw.draw(st.binary(min_size=n, max_size=n))
    changed = data[:start] + new + data[start + n :]
    # The one documented exception: an all-zero result (checksum 0xFFFF vs 0, both "zero"). Never for
    # packets: an IP header or pseudo-header is never all zero.
    assume(any(changed))
    assert checksum_adjust(internet_checksum(data), data[start : start + n], new) == internet_checksum(
        changed
    )


# --- layouts ----------------------------------------------------------------------------------------------


def test_udp_packet_matches_spec_vector() -> None:
    assert build_udp_packet(V4A, V4B, 1, 600, bytes(8)) == OFFENDING


def test_ipv4_header_layout() -> None:
    pkt = build_ipv4(V4A, V4B, 99, b"xy", ttl=7, ident=0x1234, tos=0xB8, options=b"\x01\x01\x01\x00")
    assert pkt[:12] == bytes.fromhex("46b8001a123440000763") + pkt[10:12]
    assert pkt[12:24] == V4A.packed + V4B.packed + b"\x01\x01\x01\x00"
    assert internet_checksum(pkt[:24]) == 0
    frag = build_ipv4(V4A, V4B, 17, b"", dont_fragment=False, more_fragments=True, frag_offset=0x123)
    assert frag[6:8] == bytes.fromhex("2123")


def test_ipv6_header_layout() -> None:
    pkt = build_ipv6(V6A, V6B, 17, b"abc", hop_limit=9, traffic_class=0xAB, flow_label=0x12345)
    assert pkt[:8] == bytes.fromhex("6ab12345") + bytes.fromhex("00031109")
    assert pkt[8:40] == V6A.packed + V6B.packed
    assert pkt[40:] == b"abc"


def test_tcp_layout() -> None:
    seg = build_tcp(
        V4A, V4B, 1, 2, b"d", seq=3, ack=4, flags=0x112, window=5, urgent=6, options=b"\x02\x04\x05\xb4"
    )
    assert seg[:4] == bytes.fromhex("00010002")
    assert seg[4:12] == bytes.fromhex("0000000300000004")
    assert seg[12:16] == bytes.fromhex("61120005")  # data offset 6, NS bit, flags 0x12, window 5
    assert seg[18:20] == bytes.fromhex("0006")
    assert parse_tcp(seg).flags == 0x112


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(UsageError):
        build_udp(V4A, V4B, 70000, 1, b"")
    with pytest.raises(UsageError):
        build_ip(V4A, V6B, 17, b"")
    with pytest.raises(UsageError):
        build_ipv4(V4A, V4B, 17, b"", options=b"\x01")
    with pytest.raises(UsageError):
        build_tcp(V4A, V4B, 1, 2, options=b"\x01\x02")
    with pytest.raises(UsageError):
        build_icmp_echo(V4A, V4B, -1, 0, b"")


# --- parsers: whole, truncated, trailing ------------------------------------------------------------------


def test_parse_ipv4_whole() -> None:
    h = parse_ipv4(OFFENDING)
    assert (h.tos, h.total_len, h.ident, h.dont_fragment, h.more_fragments, h.frag_offset) == (
        0,
        36,
        0,
        True,
        False,
        0,
    )
    assert (h.ttl, h.proto, h.checksum, h.src, h.dst, h.options, h.header_len) == (
        64,
        17,
        0xCC87,
        V4A,
        V4B,
        b"",
        20,
    )


def test_parse_ipv6_whole() -> None:
    h = parse_ipv6(SAMPLES["udp6"])
    assert (h.payload_len, h.next_header, h.hop_limit, h.src, h.dst) == (13, 17, 64, V6A, V6B)


def test_parse_l4_whole() -> None:
    u = parse_udp(OFFENDING[20:])
    assert (u.sport, u.dport, u.length, u.checksum, u.payload) == (1, 600, 16, 0x8F33, bytes(8))
    t = parse_tcp(parse_ip(SAMPLES["tcp4"]).payload)
    assert (t.sport, t.dport, t.seq, t.ack, t.header_len, t.flags, t.window, t.payload) == (
        40000,
        443,
        7,
        9,
        20,
        TCP_ACK,
        65535,
        b"GET",
    )
    i = parse_icmp(parse_ip(SAMPLES["echo4"]).payload)
    assert (i.icmp_type, i.code, i.ident, i.seq, i.payload) == (8, 0, 77, 3, b"ping")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_ip_parsers_truncated_byte_by_byte(name: str) -> None:
    pkt = SAMPLES[name]
    for i in range(len(pkt)):
        cut = pkt[:i]
        for fn in (parse_ip, five_tuple, l4_info, l4_checksum_ok, locate_l4):
            with pytest.raises(DecodeError):
                fn(cut)
        with pytest.raises(DecodeError):
            (parse_ipv4 if name.endswith("4") else parse_ipv6)(cut)
        assert validate(cut) is not None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_l4_parsers_truncated_byte_by_byte(name: str) -> None:
    seg = parse_ip(SAMPLES[name]).payload
    if name.startswith("udp"):
        fn, need = parse_udp, len(seg)  # the length field covers the whole datagram
    elif name.startswith("tcp"):
        fn, need = parse_tcp, 20  # TCP has no length field: only the header must be complete
    else:
        fn, need = parse_icmp, 8  # ICMP likewise
    for i in range(need):
        with pytest.raises(DecodeError):
            fn(seg[:i])
    assert fn(seg[:need]) is not None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_trailing_bytes_are_ignored(name: str) -> None:
    pkt = SAMPLES[name]
    junk = pkt + b"\xde\xad\xbe\xef"
    assert parse_ip(junk) == parse_ip(pkt)
    assert five_tuple(junk) == five_tuple(pkt)
    assert l4_info(junk) == l4_info(pkt)
    assert validate(junk) is None
    assert l4_checksum_ok(junk)
    seg = parse_ip(pkt).payload
    if name.startswith("udp"):
        assert parse_udp(seg + b"zz") == parse_udp(seg)


def test_version_and_addresses() -> None:
    assert ip_version(SAMPLES["udp4"]) == 4
    assert ip_version(SAMPLES["udp6"]) == 6
    assert src_dst(SAMPLES["tcp6"]) == (V6A, V6B)
    assert src_dst(bytearray(OFFENDING)) == (V4A, V4B)
    assert src_dst(memoryview(OFFENDING)) == (V4A, V4B)
    for bad in (b"", b"\x50" + bytes(40), b"\x45" + bytes(10), b"\x60" + bytes(30)):
        with pytest.raises(DecodeError):
            ip_version(bad)
        with pytest.raises(DecodeError):
            src_dst(bad)


def test_five_tuple_kinds() -> None:
    assert five_tuple(SAMPLES["tcp6"]) == (PROTO_TCP, V6A, V6B, 40000, 443)
    assert five_tuple(SAMPLES["echo4"]) == (PROTO_ICMP, V4A, V4B, 77, 77)
    assert five_tuple(SAMPLES["echo6"]) == (PROTO_ICMPV6, V6A, V6B, 77, 77)
    unreachable = build_ip(V4A, V4B, PROTO_ICMP, build_icmp(V4A, V4B, 3, 1, 0, OFFENDING[:28]))
    assert five_tuple(unreachable) == (PROTO_ICMP, V4A, V4B, 0, 0)
    gre = build_ipv4(V4A, V4B, 47, b"\0" * 4)
    assert five_tuple(gre) == (47, V4A, V4B, 0, 0)


def test_ipv6_extension_headers_are_skipped() -> None:
    udp = build_udp(V6A, V6B, 5, 6, b"x")
    hbh = bytes([60, 0]) + bytes(6)  # hop-by-hop, next: destination options
    dst_opts = bytes([43, 1]) + bytes(14)  # 16 bytes, next: routing
    routing = bytes([44, 0, 0, 0]) + bytes(4)  # next: fragment
    frag = bytes([PROTO_UDP, 0, 0, 0]) + bytes(4)  # atomic fragment: offset 0, M=0
    pkt = build_ipv6(V6A, V6B, 0, hbh + dst_opts + routing + frag + udp)
    p = parse_ip(pkt)
    assert (p.proto, p.l4_offset, p.fragment, p.payload) == (PROTO_UDP, 40 + 40, False, udp)
    assert five_tuple(pkt) == (PROTO_UDP, V6A, V6B, 5, 6)
    assert validate(pkt) is None
    assert l4_checksum_ok(pkt)


def test_ipv4_auth_header_is_skipped() -> None:
    udp = build_udp(V4A, V4B, 5, 6, b"x")
    ah = bytes([PROTO_UDP, 4]) + bytes(22)  # (4 + 2) * 4 = 24 bytes
    pkt = build_ipv4(V4A, V4B, PROTO_AH, ah + udp)
    assert l4_info(pkt) == (PROTO_UDP, 44, len(pkt))
    assert five_tuple(pkt) == (PROTO_UDP, V4A, V4B, 5, 6)


# --- validity ----------------------------------------------------------------------------------------------


def test_validate_rules() -> None:
    assert validate(OFFENDING) is None
    big = build_udp_packet(V4A, V4B, 1, 2, bytes(MAX_IP_SIZE - 28))
    assert validate(big) is None
    assert validate(build_udp_packet(V4A, V4B, 1, 2, bytes(MAX_IP_SIZE - 27))) == DropReason.IP_TOO_LARGE
    assert validate(b"\x50" + bytes(30)) == DropReason.UNSUPPORTED_IP_VERSION
    assert validate(b"") == DropReason.MALFORMED_IP
    mf = build_ipv4(V4A, V4B, 17, build_udp(V4A, V4B, 1, 2, b""), dont_fragment=False, more_fragments=True)
    assert validate(mf) == DropReason.FRAGMENT
    later = build_ipv4(V4A, V4B, 17, bytes(8), dont_fragment=False, frag_offset=1)
    assert validate(later) == DropReason.FRAGMENT
    frag6 = build_ipv6(V6A, V6B, 44, bytes([PROTO_UDP, 0, 0, 8]) + bytes(4) + bytes(8))
    assert validate(frag6) == DropReason.FRAGMENT
    with pytest.raises(DecodeError):
        five_tuple(frag6)
    icmp6_in_v4 = build_ipv4(V4A, V4B, PROTO_ICMPV6, bytes(8))
    icmp4_in_v6 = build_ipv6(V6A, V6B, PROTO_ICMP, bytes(8))
    assert validate(icmp6_in_v4) == DropReason.MALFORMED_L4
    assert validate(icmp4_in_v6) == DropReason.MALFORMED_L4
    bad_udp_len = bytearray(OFFENDING)
    bad_udp_len[25] = 40  # UDP length 40 > 16 available
    assert validate(bad_udp_len) == DropReason.MALFORMED_L4
    bad_tcp = bytearray(SAMPLES["tcp4"])
    bad_tcp[32] = 0x40  # data offset 4 words
    assert validate(bad_tcp) == DropReason.MALFORMED_L4
    assert validate(build_ipv4(V4A, V4B, 47, b"")) is None  # other protocols pass
    # ICMPv4 timestamp (reply) with code 0 must be exactly 20 bytes (etherparse Icmpv4Slice).
    for t in (13, 14):
        assert validate(build_ip(V4A, V4B, PROTO_ICMP, build_icmp(V4A, V4B, t, 0, 0, bytes(12)))) is None
        assert (
            validate(build_ip(V4A, V4B, PROTO_ICMP, build_icmp(V4A, V4B, t, 0, 0, bytes(13))))
            == "malformed_l4"
        )
        assert validate(build_ip(V4A, V4B, PROTO_ICMP, build_icmp(V4A, V4B, t, 1, 0, bytes(13)))) is None


# --- properties -------------------------------------------------------------------------------------------


@given(packets())
@settings(max_examples=300, deadline=None)
def test_round_trip(spec: Spec) -> None:
    pkt = spec.packet
    p = parse_ip(pkt)
    proto = proto_of(spec)
    assert (p.version, p.src, p.dst, p.proto, p.ttl, p.total_len, p.fragment) == (
        spec.src.version,
        spec.src,
        spec.dst,
        proto,
        spec.ttl,
        len(pkt),
        False,
    )
    assert validate(pkt) is None
    assert l4_checksum_ok(pkt)
    assert five_tuple(pkt) == (proto, spec.src, spec.dst, spec.sport, spec.dport)
    if spec.kind in ("udp", "udp0"):
        u = parse_udp(p.payload)
        assert (u.sport, u.dport, u.length, u.payload) == (
            spec.sport,
            spec.dport,
            8 + len(spec.payload),
            spec.payload,
        )
        assert (u.checksum == 0) == (spec.kind == "udp0")
    elif spec.kind == "tcp":
        t = parse_tcp(p.payload)
        assert (t.sport, t.dport, t.payload) == (spec.sport, spec.dport, spec.payload)
    else:
        i = parse_icmp(p.payload)
        assert i.payload == spec.payload


@given(
    v4,
    v4,
    st.integers(0, 255),
    payloads,
    ttls,
    ports,
    st.integers(0, 255),
    st.booleans(),
    st.integers(0, 10).map(lambda n: bytes(range(n * 4))),
)
@settings(max_examples=200, deadline=None)
def test_ipv4_header_round_trip(
    src: IPv4Address,
    dst: IPv4Address,
    proto: int,
    payload: bytes,
    ttl: int,
    ident: int,
    tos: int,
    df: bool,
    options: bytes,
) -> None:
    pkt = build_ipv4(src, dst, proto, payload, ttl, ident, tos=tos, dont_fragment=df, options=options)
    h = parse_ipv4(pkt)
    assert (h.src, h.dst, h.proto, h.ttl, h.ident, h.tos, h.dont_fragment, h.options) == (
        src,
        dst,
        proto,
        ttl,
        ident,
        tos,
        df,
        options,
    )
    assert h.header_len == 20 + len(options)
    assert pkt[h.header_len :] == payload
    assert internet_checksum(pkt[: h.header_len]) == 0


@given(st.binary(max_size=80))
@settings(max_examples=500, deadline=None)
def test_random_bytes_parse_or_decode_error(data: bytes) -> None:
    for fn in (
        parse_ip,
        parse_ipv4,
        parse_ipv6,
        parse_udp,
        parse_tcp,
        parse_icmp,
        five_tuple,
        l4_checksum_ok,
    ):
        try:
            fn(data)
        except DecodeError:
            pass
    validate(data)  # never raises


@given(packets(), st.data())
@settings(max_examples=300, deadline=None)
def test_corrupted_packets_parse_or_decode_error(spec: Spec, data: st.DataObject) -> None:
    buf = bytearray(spec.packet)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, min(len(buf) - 1, 60)))] = data.draw(st.integers(0, 255))
    for fn in (parse_ip, five_tuple, l4_info, l4_checksum_ok):
        try:
            fn(buf)
        except DecodeError:
            pass
    reason = validate(buf)
    if reason is None:
        # The data path may handle it: the accessors must then work.
        five_tuple(buf)
        l4_info(buf)


@given(packets(), st.data())
@settings(max_examples=200, deadline=None)
def test_validate_agrees_with_five_tuple(spec: Spec, data: st.DataObject) -> None:
    cut = spec.packet[: data.draw(st.integers(0, len(spec.packet)))]
    if validate(cut) is None:
        assert five_tuple(cut)[0] == proto_of(spec)
    else:
        with pytest.raises(DecodeError):
            parse_ip(cut)


def test_address_cache_is_bounded_and_exact() -> None:
    from gateway_core.wire import ip as ip_mod

    for i in range(ip_mod._ADDR_CACHE_MAX + 10):
        a = IPv4Address(i)
        pkt = build_ipv4(a, V4B, 47, b"")
        assert src_dst(pkt) == (a, V4B)
        assert len(ip_mod._addr_cache) <= ip_mod._ADDR_CACHE_MAX
    # Same bytes as IPv4 and as part of IPv6 never collide (keys differ in length).
    assert src_dst(build_ipv6(V6A, V6B, 59, b"")) == (V6A, V6B)
    assert src_dst(bytearray(SAMPLES["udp6"])) == (V6A, V6B)
    assert src_dst(memoryview(bytearray(SAMPLES["udp4"]))) == (V4A, V4B)


def test_udp_checksum_covers_the_udp_length_only() -> None:
    udp = build_udp(V4A, V4B, 1, 2, b"abc")
    pkt = build_ipv4(V4A, V4B, PROTO_UDP, udp + b"pad!")  # IP payload longer than the UDP length
    assert validate(pkt) is None
    assert l4_checksum_ok(pkt)
    assert parse_udp(parse_ip(pkt).payload).payload == b"abc"
    broken = bytearray(pkt)
    broken[30] ^= 1  # flip a bit of the UDP payload
    assert not l4_checksum_ok(broken)
