"""ICMP errors: the gateway's own (with a worked byte example), parsing of errors from the TUN and their
re-addressing for DNS-resource NAT sessions."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.errors import DecodeError, UsageError
from gateway_core.wire.icmp import (
    ICMPV6_ERROR_MAX_PAYLOAD,
    IcmpError,
    UnsupportedIcmpError,
    build_icmp_error_like,
    build_icmp_prohibited,
    build_icmp_unreachable,
    is_prohibited,
    parse_icmp_error,
    rewrite_embedded,
    translate_icmp_error,
)
from gateway_core.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    build_icmp,
    build_icmp_echo,
    build_ip,
    build_ipv4,
    build_tcp_packet,
    build_udp_packet,
    l4_checksum_ok,
    parse_icmp,
    parse_ip,
    validate,
)
from tests.unit.wire_strategies import Spec, packets

V4A, V4B = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
V6A, V6B = IPv6Address("fd00:2021:1111::1"), IPv6Address("2001:db8::1")
PROXY4, PROXY6 = IPv4Address("100.96.0.1"), IPv6Address("fd00:2021:1111:8000::1")
ROUTER4, ROUTER6 = IPv4Address("192.0.2.1"), IPv6Address("2001:db8:ffff::1")

# A worked example of the prohibited error (ICMPv4 3/13), byte for byte.
OFFENDING = bytes.fromhex("45000024000040004011cc87644000010a000001" + "0001025800108f33" + "00" * 8)
EXPECTED_REPLY = bytes.fromhex(
    "45000038000040001401f8830a00000164400001"
    "030d6b5600000000"
    "45000024000040004011cc87644000010a000001"
    "0001025800108f33"
)


def test_spec_worked_example_prohibited_v4() -> None:
    reply = build_icmp_prohibited(OFFENDING)
    assert len(reply) == 56
    assert reply == EXPECTED_REPLY


def test_unreachable_v4_code_0() -> None:
    reply = build_icmp_unreachable(OFFENDING)
    p = parse_ip(reply)
    assert (p.src, p.dst, p.ttl, p.proto) == (V4B, V4A, 20, PROTO_ICMP)
    i = parse_icmp(p.payload)
    assert (i.icmp_type, i.code, i.rest, i.payload) == (3, 0, 0, OFFENDING[:28])
    assert l4_checksum_ok(reply)
    assert reply[6] & 0x40  # DF


def test_v4_quote_keeps_options_and_short_packets_whole() -> None:
    opts = bytes([1, 1, 1, 0, 1, 1, 1, 0])
    orig = build_ipv4(V4A, V4B, PROTO_UDP, bytes(30), options=opts)
    assert parse_icmp(parse_ip(build_icmp_prohibited(orig)).payload).payload == orig[: 28 + 8 + 0]
    short = build_ipv4(V4A, V4B, 47, b"\x01\x02")  # 22 bytes: shorter than header + 8
    assert parse_icmp(parse_ip(build_icmp_prohibited(short)).payload).payload == short
    # Bytes after the declared length are not quoted.
    assert parse_icmp(parse_ip(build_icmp_prohibited(short + b"junk")).payload).payload == short


@pytest.mark.parametrize(("builder", "code"), [(build_icmp_prohibited, 1), (build_icmp_unreachable, 3)])
def test_v6_layout(builder: object, code: int) -> None:
    orig = build_udp_packet(V6A, V6B, 1, 600, bytes(100))
    reply = builder(orig)  # type: ignore[operator]
    assert reply[:8] == bytes.fromhex("60000000") + (8 + len(orig)).to_bytes(2, "big") + bytes([58, 20])
    assert reply[8:40] == V6B.packed + V6A.packed
    assert reply[40] == 1 and reply[41] == code and reply[44:48] == bytes(4)
    assert reply[48:] == orig
    assert l4_checksum_ok(reply)


def test_v6_quote_is_limited_to_1200_bytes() -> None:
    orig = build_udp_packet(V6A, V6B, 1, 2, bytes(1280 - 48))
    assert len(orig) == 1280
    reply = build_icmp_prohibited(orig)
    assert len(reply) == 40 + 8 + ICMPV6_ERROR_MAX_PAYLOAD == 1248
    assert reply[48:] == orig[:1200]


def test_builders_reject_malformed_originals() -> None:
    for bad in (b"", b"\x45\x00", OFFENDING[:30], b"\x70" + bytes(40)):
        with pytest.raises(DecodeError):
            build_icmp_prohibited(bad)


@given(packets())
@settings(max_examples=150, deadline=None)
def test_own_errors_parse_back_to_the_original(spec: Spec) -> None:
    """What we send is an error we would accept from the TUN (for TCP/UDP/echo request originals)."""
    for build, prohibited in ((build_icmp_prohibited, True), (build_icmp_unreachable, False)):
        reply = build(spec.packet)
        assert validate(reply) is None and l4_checksum_ok(reply)
        assert parse_ip(reply)[1:3] == (spec.dst, spec.src)
        if spec.kind == "icmp" or (
            spec.kind == "echo" and spec.packet[len(spec.packet) - len(spec.payload) - 8] in (0, 129)
        ):
            continue
        err = parse_icmp_error(reply)
        assert err is not None
        assert is_prohibited(err) == prohibited
        assert (err.inner_src, err.inner_dst, err.inner_sport, err.inner_dport) == (
            spec.src,
            spec.dst,
            spec.sport,
            spec.dport,
        )


# --- parsing errors from the TUN -------------------------------------------------------------------------


def _icmp4(t: int, c: int, rest: int, quoted: bytes, src: IPv4Address = ROUTER4) -> bytes:
    return build_ip(src, V4A, PROTO_ICMP, build_icmp(src, V4A, t, c, rest, quoted))


def _icmp6(t: int, c: int, rest: int, quoted: bytes, src: IPv6Address = ROUTER6) -> bytes:
    return build_ip(src, V6A, PROTO_ICMPV6, build_icmp(src, V6A, t, c, rest, quoted))


UDP4 = build_udp_packet(V4A, V4B, 5401, 53, b"query")
UDP6 = build_udp_packet(V6A, V6B, 5401, 53, b"query")


def test_echo_and_non_icmp_are_not_errors() -> None:
    assert parse_icmp_error(build_icmp_echo(V4A, V4B, 1, 2, b"")) is None
    assert parse_icmp_error(build_icmp_echo(V6A, V6B, 1, 2, b"", reply=True)) is None
    assert parse_icmp_error(UDP4) is None


@pytest.mark.parametrize("code", range(16))
def test_v4_destination_unreachable_codes(code: int) -> None:
    err = parse_icmp_error(_icmp4(3, code, 1400 if code == 4 else 0, UDP4[:28]))
    assert err is not None
    assert (err.version, err.icmp_type, err.code, err.mtu) == (4, 3, code, 1400 if code == 4 else 0)
    assert (err.inner_proto, err.inner_src, err.inner_dst, err.inner_sport, err.inner_dport) == (
        PROTO_UDP,
        V4A,
        V4B,
        5401,
        53,
    )
    assert err.embedded == UDP4[:28] and err.inner_l4_offset == 20


@pytest.mark.parametrize(
    ("t", "c", "rest", "mtu"), [(1, 0, 0, 0), (1, 6, 0, 0), (2, 0, 1280, 1280), (3, 0, 0, 0), (3, 1, 0, 0)]
)
def test_v6_supported_errors(t: int, c: int, rest: int, mtu: int) -> None:
    err = parse_icmp_error(_icmp6(t, c, rest, UDP6))
    assert err is not None
    assert (err.version, err.icmp_type, err.code, err.mtu) == (6, t, c, mtu)
    assert (err.inner_src, err.inner_dst, err.inner_sport, err.inner_dport) == (V6A, V6B, 5401, 53)


@pytest.mark.parametrize(
    ("v", "t", "c"),
    [
        *[(4, 3, 16), (4, 11, 2), (4, 5, 0), (4, 12, 0), (4, 13, 0), (4, 4, 0)],
        *[(6, 1, 7), (6, 2, 1), (6, 3, 2), (6, 4, 0), (6, 133, 0), (6, 135, 0), (6, 143, 0)],
    ],
)
def test_unsupported_icmp(v: int, t: int, c: int) -> None:
    pkt = _icmp4(t, c, 0, UDP4[:28]) if v == 4 else _icmp6(t, c, 0, UDP6)
    with pytest.raises(UnsupportedIcmpError):
        parse_icmp_error(pkt)


def test_embedded_transport_requirements() -> None:
    tcp = build_tcp_packet(V4A, V4B, 40000, 443)
    err = parse_icmp_error(_icmp4(11, 0, 0, tcp[:24]))  # 4 bytes of TCP suffice
    assert err is not None and (err.inner_proto, err.inner_sport, err.inner_dport) == (PROTO_TCP, 40000, 443)
    with pytest.raises(DecodeError):
        parse_icmp_error(_icmp4(11, 0, 0, tcp[:23]))
    echo = build_icmp_echo(V4A, V4B, 99, 1, b"abc")
    err = parse_icmp_error(_icmp4(3, 1, 0, echo[:28]))
    assert err is not None and (err.inner_proto, err.inner_sport, err.inner_dport) == (PROTO_ICMP, 99, 99)
    with pytest.raises(DecodeError):  # 8 bytes of an embedded ICMP header are needed
        parse_icmp_error(_icmp4(3, 1, 0, echo[:27]))
    with pytest.raises(DecodeError):  # an embedded echo reply is not accepted
        parse_icmp_error(_icmp4(3, 1, 0, build_icmp_echo(V4A, V4B, 99, 1, b"", reply=True)))
    echo6 = build_icmp_echo(V6A, V6B, 98, 1, b"")
    err = parse_icmp_error(_icmp6(1, 3, 0, echo6))
    assert err is not None and (err.inner_proto, err.inner_sport) == (PROTO_ICMPV6, 98)
    with pytest.raises(DecodeError):  # other embedded protocols
        parse_icmp_error(_icmp4(3, 1, 0, build_ipv4(V4A, V4B, 47, bytes(8))))
    with pytest.raises(DecodeError):  # family mismatch between error and quoted packet
        parse_icmp_error(_icmp4(3, 1, 0, UDP6[:48]))


def test_embedded_packet_may_claim_more_than_is_quoted() -> None:
    long_udp = build_udp_packet(V4A, V4B, 7, 8, bytes(500))
    err = parse_icmp_error(_icmp4(3, 3, 0, long_udp[:28]))
    assert err is not None and err.inner_sport == 7


def test_icmp_error_truncated_byte_by_byte() -> None:
    pkt = _icmp4(3, 3, 0, UDP4[:28])
    for i in range(len(pkt)):
        with pytest.raises(DecodeError):
            parse_icmp_error(pkt[:i])
    pkt6 = _icmp6(1, 4, 0, UDP6[:44])
    for i in range(len(pkt6)):
        with pytest.raises(DecodeError):
            parse_icmp_error(pkt6[:i])
    assert parse_icmp_error(pkt + b"trailing") == parse_icmp_error(pkt)


@given(st.binary(max_size=80), st.sampled_from([(4, 3, 1), (4, 11, 0), (6, 1, 0), (6, 2, 0)]))
@settings(max_examples=300, deadline=None)
def test_random_quotes_parse_or_decode_error(quoted: bytes, kind: tuple[int, int, int]) -> None:
    v, t, c = kind
    pkt = _icmp4(t, c, 0, quoted) if v == 4 else _icmp6(t, c, 0, quoted)
    try:
        parse_icmp_error(pkt)
    except DecodeError:
        pass


# --- re-addressing for NAT sessions ----------------------------------------------------------------------


def test_translate_v4_port_unreachable() -> None:
    # The resource 10.0.0.1 is the real IP of proxy 100.96.0.1; the NAT chose outside port 5402.
    outside = build_udp_packet(V4A, V4B, 5402, 53, b"query")
    err = parse_icmp_error(_icmp4(3, 3, 0, outside, src=V4B))
    assert err is not None
    out = translate_icmp_error(err, PROXY4, 5401, V4A)
    p = parse_ip(out)
    assert (p.src, p.dst, p.ttl, p.proto) == (PROXY4, V4A, 20, PROTO_ICMP)
    i = parse_icmp(p.payload)
    assert (i.icmp_type, i.code, i.rest) == (3, 3, 0)
    expected = bytearray(outside)
    expected[16:20] = PROXY4.packed
    expected[20:22] = (5401).to_bytes(2, "big")
    assert i.payload == bytes(expected)  # embedded checksums deliberately untouched
    assert l4_checksum_ok(out)


def test_translate_keeps_mtu_fields() -> None:
    err = parse_icmp_error(_icmp4(3, 4, 0xABCD0578, UDP4[:28]))
    assert err is not None and err.mtu == 1400
    out = translate_icmp_error(err, PROXY4, 1, V4A)
    assert out[24:28] == bytes.fromhex("00000578")  # unused bytes dropped, MTU kept
    err6 = parse_icmp_error(_icmp6(2, 0, 1280, UDP6))
    assert err6 is not None
    out6 = translate_icmp_error(err6, PROXY6, 1, V6A)
    assert out6[44:48] == (1280).to_bytes(4, "big")
    assert out6[40:42] == bytes([2, 0]) and l4_checksum_ok(out6)
    assert out6[48 + 24 : 48 + 40] == PROXY6.packed
    err_t = parse_icmp_error(_icmp6(3, 1, 0xFFFFFFFF, UDP6))
    assert err_t is not None
    assert translate_icmp_error(err_t, PROXY6, 1, V6A)[44:48] == bytes(4)


def test_rewrite_embedded_echo_identifier() -> None:
    echo = build_icmp_echo(V4A, V4B, 2000, 5, b"x")
    err = parse_icmp_error(_icmp4(11, 0, 0, echo))
    assert err is not None
    emb = rewrite_embedded(err, PROXY4, 1000)
    assert emb[16:20] == PROXY4.packed and emb[24:26] == (1000).to_bytes(2, "big")
    assert emb[:16] == echo[:16] and emb[26:] == echo[26:] and emb[20:24] == echo[20:24]


def test_family_mismatch_is_a_usage_error() -> None:
    err = parse_icmp_error(_icmp4(3, 3, 0, UDP4))
    assert isinstance(err, IcmpError)
    with pytest.raises(UsageError):
        rewrite_embedded(err, PROXY6, 1)
    with pytest.raises(UsageError):
        build_icmp_error_like(err, PROXY6, V6A, b"")
    with pytest.raises(UsageError):
        rewrite_embedded(err, PROXY4, 70000)


def test_v6_error_with_extension_headers_in_quote() -> None:
    hbh = bytes([PROTO_UDP, 0]) + bytes(6)
    udp = build_udp_packet(V6A, V6B, 5402, 53, b"q")
    quoted = bytearray(udp[:40] + hbh + udp[40:])
    quoted[6] = 0  # next header: hop-by-hop
    quoted[4:6] = (len(quoted) - 40).to_bytes(2, "big")
    err = parse_icmp_error(_icmp6(1, 4, 0, bytes(quoted)))
    assert err is not None and err.inner_l4_offset == 48 and err.inner_sport == 5402
    emb = rewrite_embedded(err, PROXY6, 5401)
    assert emb[48:50] == (5401).to_bytes(2, "big") and emb[24:40] == PROXY6.packed
    assert emb[:24] == quoted[:24] and emb[40:48] == quoted[40:48] and emb[50:] == quoted[50:]


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_corrupted_icmp_errors_parse_or_decode_error(data: st.DataObject) -> None:
    base = data.draw(
        st.sampled_from([_icmp4(3, 3, 0, UDP4), _icmp6(1, 4, 0, UDP6), _icmp4(11, 0, 0, UDP4[:28])])
    )
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    try:
        err = parse_icmp_error(buf)
    except DecodeError:
        return
    if err is not None:
        # Whatever we accepted can be re-addressed without surprises.
        proxy = PROXY4 if err.version == 4 else PROXY6
        client = V4A if err.version == 4 else V6A
        assert l4_checksum_ok(translate_icmp_error(err, proxy, 1, client))
