"""The simulated network: routing, link statistics under a seed, partitions, header helpers."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.clock import millis
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import UsageError
from gateway_core.wire.ip import build_icmp_echo, build_udp_packet
from sim.net import PPM, LinkProfile, NetDrop, Network, ip_endpoints, udp_in_ip

N = 20_000


def _net(seed: int = 1) -> Network:
    net = Network(SeededEntropy(seed).fork("net"))
    net.attach("a", [IPv4Address("203.0.113.1"), IPv6Address("2001:db8::1")], LinkProfile(latency=millis(10)))
    net.attach("b", [IPv4Address("203.0.113.2")], LinkProfile(latency=millis(20)))
    return net


def test_exact_routes_prefix_routes_stale_and_unroutable() -> None:
    net = _net()
    assert net.route(IPv4Address("203.0.113.1")) == "a"
    assert net.route(IPv6Address("2001:db8::1")) == "a"
    assert net.route(IPv4Address("203.0.113.3")) is NetDrop.UNROUTABLE
    net.add_route(IPv4Network("100.64.0.0/11"), "a")
    net.add_route(IPv4Network("100.64.0.0/24"), "b")
    net.add_route(IPv6Network("fd00:2021:1111::/107"), "b")
    assert net.route(IPv4Address("100.64.0.7")) == "b"  # longest prefix
    assert net.route(IPv4Address("100.65.0.7")) == "a"
    assert net.route(IPv6Address("fd00:2021:1111::5")) == "b"
    assert net.owner(IPv4Address("100.64.0.7")) is None  # a route is not an own address
    net.detach("b")
    assert net.route(IPv4Address("203.0.113.2")) is NetDrop.STALE
    assert net.route(IPv4Address("100.64.0.7")) == "a"  # b's routes are gone
    with pytest.raises(UsageError):
        net.attach("c", [IPv4Address("203.0.113.2")], LinkProfile())  # stale addresses are never reused
    with pytest.raises(UsageError):
        net.attach("a", [IPv4Address("203.0.113.9")], LinkProfile())


def test_path_is_the_series_of_both_access_links_unless_set() -> None:
    net = _net()
    assert net.path("a", "b").latency == millis(30)
    assert net.path("b", "a") == net.path("a", "b")
    special = LinkProfile(latency=millis(1))
    net.set_path("b", "a", special)
    assert net.path("a", "b") is special
    net.set_path("a", "b", None)
    assert net.path("a", "b").latency == millis(30)


def test_series_combination_of_loss_and_duplication() -> None:
    p = LinkProfile(latency=1, jitter=2, loss_ppm=100_000, duplicate_ppm=0).then(
        LinkProfile(latency=10, jitter=20, loss_ppm=200_000, duplicate_ppm=500_000)
    )
    assert (p.latency, p.jitter) == (11, 22)
    assert p.loss_ppm == 280_000  # 1 - 0.9 * 0.8
    assert p.duplicate_ppm == 500_000
    with pytest.raises(UsageError):
        LinkProfile(loss_ppm=PPM + 1)
    with pytest.raises(UsageError):
        LinkProfile(latency=-1)


def test_loss_latency_and_jitter_statistics_under_a_seed() -> None:
    net = _net(seed=42)
    net.set_path("a", "b", LinkProfile(latency=millis(50), jitter=millis(20), loss_ppm=100_000))
    fates = [net.fate("a", "b") for _ in range(N)]
    lost = sum(1 for f in fates if not f)
    assert 0.09 * N < lost < 0.11 * N
    delays = [f[0] for f in fates if f]
    assert all(len(f) == 1 for f in fates if f)
    assert min(delays) >= millis(50) and max(delays) <= millis(70)
    assert min(delays) < millis(51) and max(delays) > millis(69)  # the whole jitter range is used
    mean = sum(delays) / len(delays)
    assert millis(59) < mean < millis(61)  # uniform jitter: mean latency + jitter / 2


def test_duplication_statistics_under_a_seed() -> None:
    net = _net(seed=43)
    net.set_path("a", "b", LinkProfile(latency=millis(5), jitter=millis(5), duplicate_ppm=50_000))
    fates = [net.fate("a", "b") for _ in range(N)]
    dups = sum(1 for f in fates if len(f) == 2)
    assert all(f for f in fates)
    assert 0.04 * N < dups < 0.06 * N


def test_same_seed_same_fates_other_seed_other_fates() -> None:
    profile = LinkProfile(latency=millis(10), jitter=millis(10), loss_ppm=200_000, duplicate_ppm=100_000)

    def run(seed: int) -> list[list[int]]:
        net = _net(seed)
        net.set_path("a", "b", profile)
        return [net.fate("a", "b") for _ in range(500)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_no_draws_for_a_perfect_link() -> None:
    net = _net()
    assert [net.fate("a", "b") for _ in range(3)] == [[millis(30)]] * 3


def test_partitions_are_symmetric_and_heal() -> None:
    net = _net()
    net.attach("c", [IPv4Address("203.0.113.3")], LinkProfile())
    net.partition(["a"], ["b", "c"])
    assert net.is_partitioned("a", "b") and net.is_partitioned("b", "a") and net.is_partitioned("c", "a")
    assert not net.is_partitioned("b", "c")
    assert net.partitions() == [("a", "b"), ("a", "c")]
    net.heal(["c"], ["a"])
    assert net.partitions() == [("a", "b")]
    net.heal()
    assert net.partitions() == []


V4_SRC, V4_DST = IPv4Address("192.0.2.1"), IPv4Address("198.51.100.2")
V6_SRC, V6_DST = IPv6Address("2001:db8::1"), IPv6Address("2001:db8::2")


@pytest.mark.parametrize(("src", "dst"), [(V4_SRC, V4_DST), (V6_SRC, V6_DST)])
def test_udp_in_ip_whole_truncated_and_trailing(
    src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address
) -> None:
    pkt = build_udp_packet(src, dst, 1234, 7, b"hello")
    assert ip_endpoints(pkt) == (src, dst, 17)
    assert udp_in_ip(pkt) == (1234, 7, b"hello")
    assert udp_in_ip(pkt + b"junk") == (1234, 7, b"hello")  # trailing bytes beyond the IP length are ignored
    for n in range(len(pkt)):
        assert udp_in_ip(pkt[:n]) is None, n
    icmp = build_icmp_echo(src, dst, 1, 2, b"x")
    assert udp_in_ip(icmp) is None
    assert ip_endpoints(icmp) == (src, dst, 1 if src.version == 4 else 58)


@given(st.binary(max_size=80))
def test_header_helpers_never_raise(data: bytes) -> None:
    ends = ip_endpoints(data)
    if ends is not None:
        assert ends[0].version == ends[1].version == data[0] >> 4
    udp_in_ip(data)


def test_ip_endpoints_rejects_other_versions() -> None:
    assert ip_endpoints(b"") is None
    assert ip_endpoints(bytes([0x50]) + bytes(40)) is None
    assert ip_address("0.0.0.0") == ip_endpoints(bytes([0x45]) + bytes(19))[0]  # type: ignore[index]
