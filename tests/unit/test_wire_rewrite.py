"""In-place NAT rewriting: incremental checksum fix-up equals a full recomputation; errors leave the buffer
untouched; ECN merge."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import IPAddress
from gateway_core.errors import DecodeError, UsageError
from gateway_core.wire.checksum import internet_checksum
from gateway_core.wire.ip import (
    TCP_RST,
    TCP_SYN,
    build_icmp_echo,
    build_ipv4,
    build_ipv6,
    build_tcp_packet,
    build_udp_packet,
    five_tuple,
    l4_checksum_ok,
    parse_ip,
)
from gateway_core.wire.rewrite import (
    merge_ecn,
    nat_rewrite,
    recompute_checksums,
    set_dport,
    set_dst,
    set_sport,
    set_src,
)
from tests.unit.wire_strategies import Spec, packets, ports, v4, v6

CLIENT = IPv4Address("100.64.0.1")
PROXY_A, PROXY_B = IPv4Address("100.96.0.1"), IPv4Address("100.96.0.5")
REAL = IPv4Address("10.0.0.1")


def _expected(
    spec: Spec, src: IPAddress | None, dst: IPAddress | None, sp: int | None, dp: int | None
) -> bytes:
    """The same rewrite done by setting the fields and recomputing every checksum from scratch."""
    buf = bytearray(spec.packet)
    off = parse_ip(spec.packet).l4_offset
    a_len, s_at = (4, 12) if spec.src.version == 4 else (16, 8)
    if src is not None:
        buf[s_at : s_at + a_len] = src.packed
    if dst is not None:
        buf[s_at + a_len : s_at + 2 * a_len] = dst.packed
    if spec.kind == "echo":
        ident = sp if sp is not None else dp
        if ident is not None:
            buf[off + 4 : off + 6] = ident.to_bytes(2, "big")
    else:
        if sp is not None:
            buf[off : off + 2] = sp.to_bytes(2, "big")
        if dp is not None:
            buf[off + 2 : off + 4] = dp.to_bytes(2, "big")
    recompute_checksums(buf)
    if spec.kind == "udp0":
        buf[off + 6 : off + 8] = b"\0\0"  # "no checksum" stays "no checksum"
        recompute_checksums_ip_only(buf)
    return bytes(buf)


def recompute_checksums_ip_only(buf: bytearray) -> None:
    hl = (buf[0] & 0xF) * 4
    hdr = bytearray(buf[:hl])
    hdr[10:12] = b"\0\0"
    buf[10:12] = internet_checksum(hdr).to_bytes(2, "big")


@given(packets(kinds=("udp", "tcp", "echo", "udp0")), st.data())
@settings(max_examples=400, deadline=None)
def test_incremental_rewrite_equals_full_recomputation(spec: Spec, data: st.DataObject) -> None:
    family = v4 if spec.src.version == 4 else v6
    src = data.draw(st.none() | family)
    dst = data.draw(st.none() | family)
    sp = data.draw(st.none() | ports)
    dp = data.draw(st.none() | ports)
    if spec.kind == "echo" and sp is not None and dp is not None:
        dp = sp
    buf = bytearray(spec.packet)
    nat_rewrite(buf, src=src, dst=dst, sport=sp, dport=dp)
    assert bytes(buf) == _expected(spec, src, dst, sp, dp)
    assert l4_checksum_ok(buf)


@given(packets(kinds=("udp", "tcp", "echo")))
@settings(max_examples=100, deadline=None)
def test_recompute_is_identity_on_correct_packets(spec: Spec) -> None:
    buf = bytearray(spec.packet)
    recompute_checksums(buf)
    assert bytes(buf) == spec.packet


def test_icmp_v4_address_change_touches_only_ip_header() -> None:
    pkt = build_icmp_echo(CLIENT, PROXY_A, 7, 1, b"x")
    buf = bytearray(pkt)
    set_dst(buf, REAL)
    assert buf[22:24] == pkt[22:24]  # ICMPv4 checksum unchanged: no pseudo-header
    assert buf[10:12] != pkt[10:12] and l4_checksum_ok(buf)


def test_udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() -> None:
    pkt = bytearray(build_udp_packet(CLIENT, PROXY_A, 1, 2, b"abc"))
    pkt[26:28] = b"\0\0"
    set_dst(pkt, REAL)
    set_sport(pkt, 999)
    assert pkt[26:28] == b"\0\0"
    # Search a source port that makes the incremental result 0: it must be sent as 0xFFFF.
    base = build_udp_packet(CLIENT, REAL, 0, 2, b"")
    csum0 = int.from_bytes(base[26:28], "big")
    # Changing sport from 0 to p subtracts p from the checksum (ones' complement); p = csum0 gives 0.
    buf = bytearray(base)
    set_sport(buf, csum0)
    assert buf[26:28] == b"\xff\xff"
    assert l4_checksum_ok(buf)


def test_spec_9_6_worked_example_rewrites() -> None:
    # Step 1: 100.64.0.1:5401 -> 100.96.0.1:80 SYN becomes 100.64.0.1:5401 -> 10.0.0.1:80.
    syn = bytearray(build_tcp_packet(CLIENT, PROXY_A, 5401, 80, flags=TCP_SYN))
    nat_rewrite(syn, dst=REAL, sport=5401)
    assert five_tuple(syn) == (6, CLIENT, REAL, 5401, 80) and l4_checksum_ok(syn)
    # Step 3: the second proxy IP to the same real IP gets outside port 5402.
    p3 = bytearray(build_tcp_packet(CLIENT, PROXY_B, 5401, 443))
    nat_rewrite(p3, dst=REAL, sport=5402)
    assert five_tuple(p3) == (6, CLIENT, REAL, 5402, 443) and l4_checksum_ok(p3)
    # Step 4: the reply 10.0.0.1:443 -> 100.64.0.1:5402 becomes 100.96.0.5:443 -> 100.64.0.1:5401.
    p4 = bytearray(build_tcp_packet(REAL, CLIENT, 443, 5402, b"data", flags=TCP_RST))
    nat_rewrite(p4, src=PROXY_B, dport=5401)
    assert five_tuple(p4) == (6, PROXY_B, CLIENT, 443, 5401) and l4_checksum_ok(p4)


def test_wrappers() -> None:
    buf = bytearray(build_udp_packet(CLIENT, REAL, 1, 2, b""))
    set_src(buf, PROXY_A)
    set_dport(buf, 3)
    assert five_tuple(buf) == (17, PROXY_A, REAL, 1, 3) and l4_checksum_ok(buf)


@pytest.mark.parametrize(
    ("packet", "kwargs", "exc"),
    [
        (build_udp_packet(CLIENT, REAL, 1, 2, b""), {"dst": IPv6Address("::1")}, UsageError),
        (build_udp_packet(CLIENT, REAL, 1, 2, b""), {"sport": 70000}, UsageError),
        (build_icmp_echo(CLIENT, REAL, 1, 2, b""), {"sport": 3, "dport": 4}, UsageError),
        (build_ipv4(CLIENT, REAL, 1, bytes([3, 1]) + bytes(6)), {"sport": 3}, DecodeError),  # not an echo
        (build_ipv4(CLIENT, REAL, 47, bytes(8)), {"dport": 3}, DecodeError),  # GRE has no ports
        (
            build_ipv4(CLIENT, REAL, 17, bytes(8), dont_fragment=False, more_fragments=True),
            {"dst": REAL},
            DecodeError,
        ),
        (build_ipv4(CLIENT, REAL, 17, bytes(4)), {"dst": PROXY_A}, DecodeError),  # UDP header truncated
        (build_ipv6(IPv6Address("::1"), IPv6Address("::2"), 1, bytes(8)), {"sport": 1}, DecodeError),
    ],
)
def test_errors_leave_the_buffer_unchanged(
    packet: bytes, kwargs: dict[str, object], exc: type[Exception]
) -> None:
    buf = bytearray(packet)
    with pytest.raises(exc):
        nat_rewrite(buf, **kwargs)  # type: ignore[arg-type]
    assert bytes(buf) == packet


def test_other_protocols_get_their_ip_checksum_fixed() -> None:
    buf = bytearray(build_ipv4(CLIENT, PROXY_A, 47, bytes(8)))
    set_dst(buf, REAL)
    assert parse_ip(buf).dst == REAL and l4_checksum_ok(buf)


def test_malformed_input_to_rewrite_is_decode_error() -> None:
    for bad in (b"", b"\x45" + bytes(5), b"\x90" + bytes(50)):
        buf = bytearray(bad)
        with pytest.raises(DecodeError):
            nat_rewrite(buf, dst=REAL)
        with pytest.raises(DecodeError):
            recompute_checksums(buf)


@pytest.mark.parametrize("inner", [0, 1, 2, 3])
@pytest.mark.parametrize("outer", [0, 1, 2, 3])
def test_merge_ecn(inner: int, outer: int) -> None:
    expected = 3 if outer == 3 and inner in (1, 2) else inner
    p4 = bytearray(build_ipv4(CLIENT, REAL, 17, bytes(8), tos=0xB8 | inner))
    merge_ecn(p4, outer)
    assert p4[1] == 0xB8 | expected and internet_checksum(p4[:20]) == 0
    p6 = bytearray(build_ipv6(IPv6Address("::1"), IPv6Address("::2"), 59, b"", traffic_class=0xB8 | inner))
    merge_ecn(p6, outer)
    assert ((p6[0] & 0xF) << 4 | p6[1] >> 4) == 0xB8 | expected
    assert p6[0] >> 4 == 6 and p6[1] & 0xF == 0


def test_merge_ecn_needs_only_the_fixed_header_and_refuses_non_ip() -> None:
    """A bare 20-byte IPv4 header and a bare 40-byte IPv6 header are enough; a buffer of another IP
    version is refused whatever its length, and shorter ones too."""
    p4 = bytearray(build_ipv4(CLIENT, REAL, 17, b"", tos=0xB8 | 2))
    assert len(p4) == 20
    merge_ecn(p4, 3)
    assert p4[1] == 0xB8 | 3 and internet_checksum(p4) == 0
    p6 = bytearray(build_ipv6(IPv6Address("::1"), IPv6Address("::2"), 59, b"", traffic_class=1))
    assert len(p6) == 40
    merge_ecn(p6, 3)
    assert p6[1] >> 4 == 3
    for bad in (b"\x55" + bytes(59), b"\x45" + bytes(18), b"\x60" + bytes(38)):
        with pytest.raises(DecodeError):
            merge_ecn(bytearray(bad), 3)


@given(packets(), st.data())
@settings(max_examples=300, deadline=None)
def test_corrupted_packets_rewrite_or_decode_error_and_stay_unchanged(
    spec: Spec, data: st.DataObject
) -> None:
    buf = bytearray(spec.packet[: data.draw(st.integers(0, len(spec.packet)))])
    for _ in range(data.draw(st.integers(0, 3))):
        if buf:
            buf[data.draw(st.integers(0, min(len(buf) - 1, 50)))] = data.draw(st.integers(0, 255))
    before = bytes(buf)
    new_dst = IPv4Address("10.9.9.9") if buf and buf[0] >> 4 == 4 else IPv6Address("2001:db8::9")
    try:
        nat_rewrite(buf, dst=new_dst, sport=data.draw(ports))
    except DecodeError:
        assert bytes(buf) == before
    else:
        assert parse_ip(buf).dst == new_dst


def test_an_all_zero_icmp_echo_reply_gets_checksum_ffff() -> None:
    # Identifier 1 -> 0, sequence 0, no payload: the ICMPv4 message is all zeros but its checksum, which
    # must then be 0xFFFF (a sum of +0), not the 0 that RFC 1624's update yields on its own.
    for ident in (1, 0x100, 0xFFFF):
        pkt = bytearray(build_icmp_echo(REAL, CLIENT, ident, 0, b"", reply=True))
        nat_rewrite(pkt, dport=0)
        assert pkt[20:24] == b"\0\0\xff\xff" and l4_checksum_ok(pkt)
    # A message whose data sums to -0 keeps the checksum 0.
    pkt = bytearray(build_icmp_echo(REAL, CLIENT, 1, 0xFFFF, b"", reply=True))
    nat_rewrite(pkt, dport=0)
    assert pkt[22:24] == b"\0\0" and l4_checksum_ok(pkt)
