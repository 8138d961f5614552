"""Hypothesis strategies shared by the IP codec tests: addresses, ports and whole valid packets."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from hypothesis import strategies as st

from gateway_core.addr import IPAddress
from gateway_core.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    build_icmp,
    build_icmp_echo,
    build_ip,
    build_tcp_packet,
    build_udp,
    build_udp_packet,
)

v4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))
addr_pairs: st.SearchStrategy[tuple[IPAddress, IPAddress]] = st.one_of(st.tuples(v4, v4), st.tuples(v6, v6))
ports = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=120)
ttls = st.integers(0, 255)


class Spec(NamedTuple):
    """What a generated packet was built from."""

    kind: str  # "udp", "tcp", "echo", "icmp", "udp0" (IPv4 UDP without checksum)
    src: IPAddress
    dst: IPAddress
    sport: int  # port, or the echo identifier
    dport: int
    payload: bytes
    ttl: int
    packet: bytes


@st.composite
def packets(draw: st.DrawFn, kinds: tuple[str, ...] = ("udp", "tcp", "echo", "icmp", "udp0")) -> Spec:
    """A whole, valid, unfragmented packet with correct checksums, of a random kind and family."""
    src, dst = draw(addr_pairs)
    kind = draw(st.sampled_from(kinds))
    if kind == "udp0" and src.version == 6:
        kind = "udp"
    sport, dport, payload, ttl = draw(ports), draw(ports), draw(payloads), draw(ttls)
    if kind == "udp":
        pkt = build_udp_packet(src, dst, sport, dport, payload, ttl)
    elif kind == "udp0":
        seg = bytearray(build_udp(src, dst, sport, dport, payload))
        seg[6:8] = b"\0\0"
        pkt = build_ip(src, dst, PROTO_UDP, bytes(seg), ttl)
    elif kind == "tcp":
        seq, ack = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        flags, window = draw(st.integers(0, 0x1FF)), draw(ports)
        pkt = build_tcp_packet(
            src, dst, sport, dport, payload, seq=seq, ack=ack, flags=flags, window=window, ttl=ttl
        )
    elif kind == "echo":
        dport = sport
        pkt = build_icmp_echo(src, dst, sport, draw(ports), payload, reply=draw(st.booleans()), ttl=ttl)
    else:  # an ICMP message that is not an echo (no ports)
        sport = dport = 0
        proto = PROTO_ICMP if src.version == 4 else PROTO_ICMPV6
        echo = (0, 8) if src.version == 4 else (128, 129)
        # Not the ICMPv4 timestamp types: their fixed 20-byte length is checked by validate().
        t = draw(st.integers(0, 255).filter(lambda x: x not in echo and x not in (13, 14)))
        msg = build_icmp(src, dst, t, draw(st.integers(0, 255)), draw(st.integers(0, 2**32 - 1)), payload)
        pkt = build_ip(src, dst, proto, msg, ttl)
    return Spec(kind, src, dst, sport, dport, payload, ttl, pkt)


def proto_of(spec: Spec) -> int:
    if spec.kind in ("udp", "udp0"):
        return PROTO_UDP
    if spec.kind == "tcp":
        return PROTO_TCP
    return PROTO_ICMP if spec.src.version == 4 else PROTO_ICMPV6
