"""The echo server and the pinger, alone and in a world."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Transmit, WriteTun
from gateway_core.errors import DropReason, UsageError
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REPLY,
    ICMPV6_ECHO_REPLY,
    build_icmp_echo,
    build_udp_packet,
    l4_checksum_ok,
    parse_icmp,
    parse_ip,
    parse_udp,
)
from sim.host import Host
from sim.hosts.echo import EchoServer, Pinger, PingTarget
from sim.net import LinkProfile
from sim.world import World

S4, C4 = IPv4Address("203.0.113.10"), IPv4Address("203.0.113.20")
S6, C6 = IPv6Address("2001:db8::10"), IPv6Address("2001:db8::20")


def test_udp_echo_on_a_socket() -> None:
    srv = EchoServer([S4])
    srv.handle_datagram(Instant(5), SocketAddr(S4, 7), SocketAddr(C4, 999), b"abc")
    assert srv.poll_command() == Transmit(SocketAddr(S4, 7), SocketAddr(C4, 999), b"abc")
    assert srv.poll_command() is None
    assert srv.poll_timeout() is None


@pytest.mark.parametrize(
    ("src", "dst", "reply_type"), [(C4, S4, ICMPV4_ECHO_REPLY), (C6, S6, ICMPV6_ECHO_REPLY)]
)
def test_icmp_echo_request_is_answered(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, reply_type: int
) -> None:
    srv = EchoServer([S4, S6])
    srv.handle_tun_packet(Instant(0), build_icmp_echo(src, dst, 0x1234, 77, b"payload"))
    cmd = srv.poll_command()
    assert isinstance(cmd, WriteTun)
    ip = parse_ip(cmd.packet)
    icmp = parse_icmp(ip.payload)
    assert (ip.src, ip.dst, icmp.icmp_type, icmp.ident, icmp.seq, icmp.payload) == (
        dst,
        src,
        reply_type,
        0x1234,
        77,
        b"payload",
    )
    assert l4_checksum_ok(cmd.packet)


def test_raw_udp_is_mirrored() -> None:
    srv = EchoServer([S6])
    srv.handle_tun_packet(Instant(0), build_udp_packet(C6, S6, 5000, 7, b"x"))
    cmd = srv.poll_command()
    assert isinstance(cmd, WriteTun)
    ip = parse_ip(cmd.packet)
    udp = parse_udp(ip.payload)
    assert (ip.src, ip.dst, udp.sport, udp.dport, udp.payload) == (S6, C6, 7, 5000, b"x")


def test_bad_packets_are_counted_not_raised() -> None:
    srv = EchoServer([S4])
    good = build_icmp_echo(C4, S4, 1, 1, b"zz")
    corrupt = good[:-1] + bytes([good[-1] ^ 1])
    srv.handle_tun_packet(Instant(0), corrupt)
    srv.handle_tun_packet(Instant(0), build_icmp_echo(C4, C4, 1, 1, b""))  # not for us
    for n in range(len(good)):
        srv.handle_tun_packet(Instant(0), good[:n])
    assert srv.poll_command() is None
    assert srv.stats.drops[DropReason.BAD_CHECKSUM] == 1
    assert srv.stats.drops[DropReason.UNROUTABLE] == 1
    assert srv.stats.drops[DropReason.MALFORMED_IP] == len(good)


@given(st.binary(max_size=120))
def test_echo_server_never_raises_on_random_bytes(data: bytes) -> None:
    srv = EchoServer([S4, S6])
    srv.handle_tun_packet(Instant(0), data)
    srv.handle_tun_packet(Instant(0), bytes([0x45]) + data)
    srv.handle_tun_packet(Instant(0), bytes([0x60]) + data)


@given(st.binary(max_size=120))
def test_pinger_never_raises_on_random_bytes(data: bytes) -> None:
    p = Pinger(
        targets=[PingTarget("udp", S4)], interval=millis(10), count=1, start=Instant(0), ident=1, ipv4=C4
    )
    p.handle_tun_packet(Instant(0), data)
    p.handle_datagram(Instant(0), SocketAddr(C4, 1), SocketAddr(S4, 7), data)
    assert p.results[0].received == 0


def test_time_going_backwards_is_a_usage_error() -> None:
    srv = EchoServer([S4])
    srv.handle_timeout(Instant(10))
    with pytest.raises(UsageError):
        srv.handle_timeout(Instant(9))


def test_pinger_rounds_duplicates_and_rtts_in_a_world() -> None:
    world = World(11)
    world.add_host(
        Host("srv", EchoServer([S4, S6]), ipv4=S4, ipv6=S6, udp_ports=(7,), link=LinkProfile(millis(10)))
    )
    pinger = Pinger(
        targets=[PingTarget("udp", S4), PingTarget("icmp", S6), PingTarget("icmp", S4)],
        interval=millis(100),
        count=5,
        start=Instant(millis(50)),
        ident=7,
        ipv4=C4,
        ipv6=C6,
    )
    host = world.add_host(
        Host(
            "pinger",
            pinger,
            ipv4=C4,
            ipv6=C6,
            udp_ports=(4000,),
            link=LinkProfile(millis(20), duplicate_ppm=500_000),
        )
    )
    world.run_until(Instant(secs(2)))
    assert [r.sent for r in pinger.results] == [5, 5, 5]
    assert [r.received for r in pinger.results] == [5, 5, 5]
    assert sum(r.duplicates for r in pinger.results) > 0  # 50% duplication on the pinger's link
    assert all(rtt == millis(60) for r in pinger.results for rtt in r.rtts)  # 2 x (20 + 10) ms, no jitter
    assert pinger.poll_timeout() is None
    assert host.deadline is None


def test_pinger_without_an_address_of_the_family_counts_it() -> None:
    p = Pinger(
        targets=[PingTarget("icmp", S6)], interval=millis(10), count=2, start=Instant(0), ident=1, ipv4=C4
    )
    p.handle_timeout(Instant(millis(20)))
    assert p.poll_command() is None
    assert p.stats.counters["no_source_address"] == 2
    assert p.poll_timeout() is None
