"""Cross-checks of the IP codecs against scapy, an independent implementation: packets we build are
decoded by scapy with the same fields and the same checksums scapy computes itself; packets scapy builds
are byte-identical to ours for the same fields, and our parsers read them back."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import NoPayload, Packet, Raw

from gateway_core.addr import IPAddress
from gateway_core.wire.icmp import build_icmp_prohibited, build_icmp_unreachable, parse_icmp_error
from gateway_core.wire.ip import (
    PROTO_UDP,
    build_icmp_echo,
    build_ipv4,
    build_tcp,
    build_tcp_packet,
    build_udp,
    build_udp_packet,
    five_tuple,
    l4_checksum_ok,
    parse_ip,
    parse_tcp,
)
from tests.unit.wire_strategies import Spec, addr_pairs, packets, payloads, ports, ttls, v4

V4A, V4B = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
V6A, V6B = IPv6Address("fd00:2021:1111::1"), IPv6Address("2001:db8::1")


def scapy_parse(raw: bytes) -> Packet:
    return IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)


def scapy_recompute(raw: bytes, keep_zero_udp: bool = False, layers: int = 99) -> bytes:
    """Decode with scapy, clear the checksum fields of the first ``layers`` layers, and let scapy
    serialise (and so recompute) them."""
    pkt = scapy_parse(raw)
    layer: Any = pkt
    for _ in range(layers):
        if isinstance(layer, (NoPayload, Raw)):
            break
        for name in ("chksum", "cksum"):
            if name in layer.fields and not (keep_zero_udp and isinstance(layer, UDP)):
                setattr(layer, name, None)
        layer = layer.payload
    return bytes(pkt)


# --- ours -> scapy ----------------------------------------------------------------------------------------


@given(packets(kinds=("udp", "tcp", "echo", "udp0")))
@settings(max_examples=200, deadline=None)
def test_scapy_reads_our_packets_and_agrees_on_checksums(spec: Spec) -> None:
    raw = spec.packet
    pkt = scapy_parse(raw)
    assert ip_address(pkt.src) == spec.src and ip_address(pkt.dst) == spec.dst
    assert (pkt.ttl if spec.src.version == 4 else pkt.hlim) == spec.ttl
    if spec.kind in ("udp", "udp0"):
        assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len) == (
            spec.sport,
            spec.dport,
            8 + len(spec.payload),
        )
        assert (pkt[UDP].chksum == 0) == (spec.kind == "udp0")
    elif spec.kind == "tcp":
        assert (pkt[TCP].sport, pkt[TCP].dport) == (spec.sport, spec.dport)
    elif spec.src.version == 4:
        assert pkt[ICMP].type in (0, 8) and pkt[ICMP].id == spec.sport
    else:
        echo = pkt[ICMPv6EchoRequest] if ICMPv6EchoRequest in pkt else pkt[ICMPv6EchoReply]
        assert echo.id == spec.sport and echo.data == spec.payload
    assert scapy_recompute(raw, keep_zero_udp=spec.kind == "udp0") == raw


@given(addr_pairs)
@settings(max_examples=40, deadline=None)
def test_scapy_reads_our_icmp_errors(pair: tuple[IPAddress, IPAddress]) -> None:
    src, dst = pair
    orig = build_udp_packet(src, dst, 1234, 53, b"x" * 40)
    for build, code4, code6 in ((build_icmp_prohibited, 13, 1), (build_icmp_unreachable, 0, 3)):
        raw = build(orig)
        pkt = scapy_parse(raw)
        assert ip_address(pkt.src) == dst and ip_address(pkt.dst) == src
        if src.version == 4:
            assert (pkt.ttl, pkt.flags.DF, pkt[ICMP].type, pkt[ICMP].code) == (20, True, 3, code4)
            assert bytes(pkt[ICMP].payload) == orig[:28]
        else:
            assert (pkt.hlim, pkt[ICMPv6DestUnreach].code) == (20, code6)
            assert bytes(pkt[ICMPv6DestUnreach].payload) == orig
        assert scapy_recompute(raw, layers=2) == raw  # the quoted packet keeps its own checksums


# --- scapy -> ours ----------------------------------------------------------------------------------------


@given(addr_pairs, ports, ports, payloads, ttls, ports)
@settings(max_examples=150, deadline=None)
def test_udp_layout_equals_scapy(
    pair: tuple[IPAddress, IPAddress], sport: int, dport: int, payload: bytes, ttl: int, ident: int
) -> None:
    src, dst = pair
    if src.version == 4:
        theirs = bytes(
            IP(src=str(src), dst=str(dst), ttl=ttl, id=ident, flags="DF")
            / UDP(sport=sport, dport=dport)
            / payload
        )
        ours = build_ipv4(src, dst, PROTO_UDP, build_udp(src, dst, sport, dport, payload), ttl, ident)  # type: ignore[arg-type]
    else:
        theirs = bytes(IPv6(src=str(src), dst=str(dst), hlim=ttl) / UDP(sport=sport, dport=dport) / payload)
        ours = build_udp_packet(src, dst, sport, dport, payload, ttl)
    assert ours == theirs
    assert five_tuple(theirs) == (PROTO_UDP, src, dst, sport, dport)


@given(
    addr_pairs,
    ports,
    ports,
    payloads,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFF),
    ports,
)
@settings(max_examples=150, deadline=None)
def test_tcp_layout_equals_scapy(
    pair: tuple[IPAddress, IPAddress],
    sport: int,
    dport: int,
    payload: bytes,
    seq: int,
    ack: int,
    flags: int,
    window: int,
) -> None:
    src, dst = pair
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window)
    if src.version == 4:
        net = IP(src=str(src), dst=str(dst), flags="DF", id=0)
    else:
        net = IPv6(src=str(src), dst=str(dst))
    theirs = bytes(net / tcp / payload)
    ours = build_tcp_packet(src, dst, sport, dport, payload, seq=seq, ack=ack, flags=flags, window=window)
    assert ours == theirs


@given(addr_pairs, ports, ports, payloads, st.booleans())
@settings(max_examples=150, deadline=None)
def test_echo_layout_equals_scapy(
    pair: tuple[IPAddress, IPAddress], ident: int, seq: int, payload: bytes, reply: bool
) -> None:
    src, dst = pair
    if src.version == 4:
        icmp = ICMP(type=0 if reply else 8, id=ident, seq=seq) / payload
        theirs = bytes(IP(src=str(src), dst=str(dst), flags="DF", id=0) / icmp)
    else:
        echo = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident, seq=seq, data=payload)
        theirs = bytes(IPv6(src=str(src), dst=str(dst)) / echo)
    assert build_icmp_echo(src, dst, ident, seq, payload, reply) == theirs


def test_tcp_options_layout_equals_scapy() -> None:
    opts = TCP(options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])
    theirs = bytes(IP(src=str(V4A), dst=str(V4B), flags="DF", id=0) / opts / b"hi")
    raw_opts = bytes(theirs)[40 : 20 + (theirs[32] >> 4) * 4]
    ours = build_ipv4(
        V4A, V4B, 6, build_tcp(V4A, V4B, 20, 80, b"hi", flags=0x02, window=8192, options=raw_opts)
    )
    assert ours == theirs
    assert parse_tcp(parse_ip(theirs).payload).options == raw_opts


@given(v4, v4, ports, ports, payloads)
@settings(max_examples=60, deadline=None)
def test_we_parse_scapy_packets_with_options_and_extension_headers(
    src: IPv4Address, dst: IPv4Address, sport: int, dport: int, payload: bytes
) -> None:
    p4 = bytes(
        IP(src=str(src), dst=str(dst), options=[IPOption_RR(routers=["1.2.3.4"])])
        / UDP(sport=sport, dport=dport)
        / payload
    )
    p = parse_ip(p4)
    assert p.l4_offset == (p4[0] & 0xF) * 4 > 20
    assert five_tuple(p4) == (PROTO_UDP, src, dst, sport, dport) and l4_checksum_ok(p4)
    s6, d6 = IPv6Address(int(src) << 96 | 1), IPv6Address(int(dst) << 96 | 2)
    p6 = bytes(
        IPv6(src=str(s6), dst=str(d6))
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=sport, dport=dport)
        / payload
    )
    assert parse_ip(p6).l4_offset == 56
    assert five_tuple(p6) == (PROTO_UDP, s6, d6, sport, dport) and l4_checksum_ok(p6)


def test_we_parse_scapy_icmp_errors() -> None:
    inner4 = IP(src=str(V4A), dst=str(V4B)) / UDP(sport=5402, dport=53) / b"q"
    frag = bytes(IP(src="192.0.2.1", dst=str(V4A)) / ICMP(type=3, code=4, nexthopmtu=1400) / inner4)
    err = parse_icmp_error(frag)
    assert err is not None
    assert (err.icmp_type, err.code, err.mtu, err.inner_dst, err.inner_sport) == (3, 4, 1400, V4B, 5402)
    inner6 = IPv6(src=str(V6A), dst=str(V6B)) / TCP(sport=5402, dport=443)
    ptb = bytes(IPv6(src="2001:db8::ff", dst=str(V6A)) / ICMPv6PacketTooBig(mtu=1280) / inner6)
    err6 = parse_icmp_error(ptb)
    assert err6 is not None and (err6.icmp_type, err6.mtu, err6.inner_dst, err6.inner_sport) == (
        2,
        1280,
        V6B,
        5402,
    )
    te = bytes(IPv6(src="2001:db8::ff", dst=str(V6A)) / ICMPv6TimeExceeded(code=1) / inner6)
    err_te = parse_icmp_error(te)
    assert err_te is not None and (err_te.icmp_type, err_te.code) == (3, 1)
    for raw in (frag, ptb, te):
        assert l4_checksum_ok(raw)
