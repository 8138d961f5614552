"""The filter engine, the per-client filter table and classification (Firezone's
``rust/connlib/tunnel/src/gateway/filter_engine.rs``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from hypothesis import given
from hypothesis import strategies as st

from gateway_core.addr import IPNetwork
from gateway_core.errors import DropReason
from gateway_core.policy.filters import (
    L4_ICMP,
    L4_OTHER,
    L4_TCP,
    L4_UDP,
    PERMIT_ALL,
    Filter,
    FilterEngine,
    FilterProtocol,
    Filters,
    FilterTable,
    build_filter_table,
    is_proxy_ip,
    network_contains,
)

TCP, UDP, ICMP = FilterProtocol.TCP, FilterProtocol.UDP, FilterProtocol.ICMP


def rid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def a(s: str) -> bytes:
    return ip_address(s).packed


@dataclass
class Res:
    """A minimal :class:`FilterSource`."""

    resource_id: uuid.UUID
    kind: str
    nets: list[IPNetwork] = field(default_factory=list)
    filters: Filters = ()

    @property
    def is_cidr(self) -> bool:
        return self.kind == "cidr"

    @property
    def is_internet(self) -> bool:
        return self.kind == "internet"

    def networks(self) -> Sequence[IPNetwork]:
        if self.is_internet:
            return [IPv4Network("0.0.0.0/0"), IPv6Network("::/0")]
        return self.nets


def cidr(n: int, net: str, *filters: Filter) -> Res:
    return Res(rid(n), "cidr", [ip_network(net)], tuple(filters))


# --- engine --------------------------------------------------------------------------------------


def test_empty_list_anywhere_means_permit_all() -> None:
    e = FilterEngine.from_filter_lists([(Filter(TCP, 80, 80),), ()])
    assert e is PERMIT_ALL
    assert e.allows(L4_OTHER, 0) and e.allows(L4_UDP, 9) and e.allows(L4_ICMP, 0)


def test_permit_some_union_of_ranges() -> None:
    e = FilterEngine.from_filter_lists(
        [(Filter(TCP, 80, 80), Filter(UDP, 53, 53)), (Filter(TCP, 8000, 8080), Filter(TCP, 81, 90))]
    )
    assert e.allows(L4_TCP, 80) and e.allows(L4_TCP, 85) and e.allows(L4_TCP, 8080)
    assert not e.allows(L4_TCP, 79) and not e.allows(L4_TCP, 91) and not e.allows(L4_TCP, 8081)
    assert e.allows(L4_UDP, 53) and not e.allows(L4_UDP, 80)
    assert not e.allows(L4_ICMP, 0)
    assert not e.allows(L4_OTHER, 80)
    assert e.tcp_starts == (80, 8000) and e.tcp_ends == (90, 8080)  # 80-80 and 81-90 merged


def test_icmp_filter_allows_any_icmp_but_no_ports() -> None:
    e = FilterEngine.from_filter_lists([(Filter(ICMP),)])
    assert e.allows(L4_ICMP, 0)
    assert not e.allows(L4_TCP, 1) and not e.allows(L4_UDP, 1) and not e.allows(L4_OTHER, 0)


def test_default_range_is_every_port() -> None:
    e = FilterEngine.from_filter_lists([(Filter(TCP),)])
    assert e.allows(L4_TCP, 0) and e.allows(L4_TCP, 65535)
    assert not e.allows(L4_UDP, 0)


def test_range_start_after_end_is_rejected_and_never_widens() -> None:
    bad = Filter(TCP, 100, 50)
    assert not bad.is_valid and Filter(ICMP, 9, 1).is_valid
    e = FilterEngine.from_filter_lists([(bad,)])
    # The list is not empty, so it is not permit-all; the bad range allows nothing.
    assert e is not PERMIT_ALL
    assert not any(e.allows(L4_TCP, p) for p in (0, 50, 75, 100, 65535))
    e2 = FilterEngine.from_filter_lists([(bad, Filter(UDP, 5, 6))])
    assert e2.allows(L4_UDP, 5) and not e2.allows(L4_TCP, 75)


ranges = st.lists(
    st.tuples(st.sampled_from([TCP, UDP]), st.integers(0, 65535), st.integers(0, 65535)), max_size=8
)


@given(ranges, st.booleans(), st.sampled_from([L4_TCP, L4_UDP, L4_ICMP, L4_OTHER]), st.integers(0, 65535))
def test_engine_agrees_with_naive_model(
    rs: list[tuple[FilterProtocol, int, int]], icmp: bool, kind: int, port: int
) -> None:
    filters = [Filter(p, s, e) for p, s, e in rs] + ([Filter(ICMP)] if icmp else [])
    engine = FilterEngine.from_filter_lists([tuple(filters)])
    if not filters:
        expected = True
    elif kind == L4_ICMP:
        expected = icmp
    elif kind == L4_OTHER:
        expected = False
    else:
        proto = TCP if kind == L4_TCP else UDP
        expected = any(p is proto and s <= port <= e for p, s, e in rs)
    assert engine.allows(kind, port) == expected


# --- proxy ranges --------------------------------------------------------------------------------


def test_proxy_ranges() -> None:
    assert is_proxy_ip(ip_address("100.96.0.1")) and is_proxy_ip(ip_address("100.127.255.255"))
    assert not is_proxy_ip(ip_address("100.95.255.255")) and not is_proxy_ip(ip_address("100.128.0.0"))
    assert not is_proxy_ip(ip_address("100.64.0.1"))
    assert is_proxy_ip(ip_address("fd00:2021:1111:8000::")) and is_proxy_ip(
        ip_address("fd00:2021:1111:8000::1f:ffff")
    )
    assert not is_proxy_ip(ip_address("fd00:2021:1111:8000::20:0"))
    assert not is_proxy_ip(ip_address("fd00:2021:1111::1"))


# --- table and classification --------------------------------------------------------------------


def test_longest_prefix_match() -> None:
    t = FilterTable()
    t.insert(ip_network("10.0.0.0/8"), PERMIT_ALL, rid(1))
    t.insert(ip_network("10.1.0.0/16"), PERMIT_ALL, rid(2))
    t.insert(ip_network("10.1.2.3/32"), PERMIT_ALL, rid(3))
    t.insert(ip_network("2001:db8::/32"), PERMIT_ALL, rid(4))
    m = t.longest_match
    assert m(a("10.9.9.9")).resource_id == rid(1)  # type: ignore[union-attr]
    assert m(a("10.1.9.9")).resource_id == rid(2)  # type: ignore[union-attr]
    assert m(a("10.1.2.3")).resource_id == rid(3)  # type: ignore[union-attr]
    assert m(a("11.0.0.0")) is None
    assert m(a("2001:db8::1")).resource_id == rid(4)  # type: ignore[union-attr]
    assert m(a("2001:db9::1")) is None
    assert len(t) == 4


@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=12),
    st.integers(0, 2**32 - 1),
)
def test_longest_match_agrees_with_naive_scan(nets: list[tuple[int, int]], addr: int) -> None:
    t = FilterTable()
    inserted: dict[IPv4Network, uuid.UUID] = {}
    for i, (base, plen) in enumerate(nets):
        net = IPv4Network((base, plen), strict=False)
        t.insert(net, PERMIT_ALL, rid(i))
        inserted[net] = rid(i)
    ip = addr.to_bytes(4, "big")
    covering = [n for n in inserted if ip_address(addr) in n]
    got = t.longest_match(ip)
    if not covering:
        assert got is None
    else:
        best = max(covering, key=lambda n: n.prefixlen)
        assert got is not None and got.resource_id == inserted[best]  # the last inserted for the network


def test_more_specific_cidr_inherits_filters_of_containing_resources() -> None:
    outer = cidr(1, "10.0.0.0/8", Filter(TCP, 22, 22))
    inner = cidr(2, "10.1.0.0/16", Filter(TCP, 80, 80))
    t = build_filter_table([outer, inner], [])
    # Inside the /16: union of both. Outside it: the /8's own filters only.
    assert t.classify(a("10.1.0.5"), L4_TCP, 80) == rid(2)
    assert t.classify(a("10.1.0.5"), L4_TCP, 22) == rid(2)
    assert t.classify(a("10.2.0.5"), L4_TCP, 22) == rid(1)
    assert t.classify(a("10.2.0.5"), L4_TCP, 80) is None
    assert t.deny_reason(a("10.2.0.5")) is DropReason.FILTERED
    assert t.classify(a("11.0.0.1"), L4_TCP, 22) is None
    assert t.deny_reason(a("11.0.0.1")) is DropReason.NOT_AUTHORIZED


def test_containing_resource_without_filters_makes_inner_permit_all() -> None:
    outer = cidr(1, "10.0.0.0/8")
    inner = cidr(2, "10.1.0.0/16", Filter(TCP, 80, 80))
    t = build_filter_table([outer, inner], [])
    assert t.classify(a("10.1.0.5"), L4_UDP, 9) == rid(2)


def test_identical_networks_later_id_wins() -> None:
    r1 = cidr(1, "10.0.0.0/24", Filter(TCP, 80, 80))
    r2 = cidr(2, "10.0.0.0/24", Filter(UDP, 53, 53))
    t = build_filter_table([r2, r1], [])
    assert t.classify(a("10.0.0.1"), L4_TCP, 80) == rid(2)
    assert t.classify(a("10.0.0.1"), L4_UDP, 53) == rid(2)
    assert len(t) == 1


def test_internet_resource_allows_everything_but_proxy_ips() -> None:
    inet = Res(rid(9), "internet")
    c = cidr(1, "10.0.0.0/8", Filter(TCP, 22, 22))
    dns = Res(rid(5), "dns", [ip_network("10.5.5.5/32")], (Filter(TCP, 443, 443),))
    proxy = ip_address("100.96.0.1")
    t = build_filter_table([c, inet, dns], [(proxy, rid(5))])
    assert t.internet_resource == rid(9)
    # No port filtering even where a CIDR resource matches.
    assert t.classify(a("10.0.0.1"), L4_UDP, 9) == rid(9)
    assert t.classify(a("8.8.8.8"), L4_OTHER, 0) == rid(9)
    # Proxy IPs are judged by the DNS resource's own filters.
    assert t.classify(proxy.packed, L4_TCP, 443) == rid(5)
    assert t.classify(proxy.packed, L4_TCP, 80) is None
    assert t.classify(a("100.96.0.2"), L4_TCP, 443) is None


def test_cidr_inherits_from_internet_resource() -> None:
    # The Internet resource's empty list covers everything, so the CIDR engine is permit-all.
    t = build_filter_table([cidr(1, "10.0.0.0/8", Filter(TCP, 22, 22)), Res(rid(9), "internet")], [])
    entry = t.longest_match(a("10.0.0.1"))
    assert entry is not None and entry.engine is PERMIT_ALL


def test_dns_filters_apply_only_to_proxy_ips_and_cidr_host_contributors() -> None:
    dns = Res(rid(5), "dns", [ip_network("10.0.0.7/32")], (Filter(TCP, 443, 443),))
    host = cidr(1, "10.0.0.7/32", Filter(TCP, 22, 22))
    net = cidr(2, "10.0.0.0/24", Filter(TCP, 23, 23))
    t = build_filter_table([dns, host, net], [(ip_address("fd00:2021:1111:8000::1"), rid(5))])
    # The /32 CIDR resource equals a resolved real IP: the DNS resource contributes its filters.
    assert t.classify(a("10.0.0.7"), L4_TCP, 443) == rid(1)
    assert t.classify(a("10.0.0.7"), L4_TCP, 23) == rid(1)
    # The /24 does not inherit from the more specific DNS host.
    assert t.classify(a("10.0.0.8"), L4_TCP, 443) is None
    assert t.classify(a("fd00:2021:1111:8000::1"), L4_TCP, 443) == rid(5)
    assert t.classify(a("fd00:2021:1111:8000::1"), L4_UDP, 443) is None


def test_translations_of_unauthorised_or_non_dns_resources_are_skipped() -> None:
    c = cidr(1, "10.0.0.0/8")
    t = build_filter_table([c], [(ip_address("100.96.0.1"), rid(1)), (ip_address("100.96.0.2"), rid(7))])
    assert t.longest_match(a("100.96.0.1")) is None
    assert t.longest_match(a("100.96.0.2")) is None


def test_network_contains() -> None:
    n = ip_network
    assert network_contains(n("10.0.0.0/8"), n("10.1.0.0/16"))
    assert network_contains(n("10.0.0.0/8"), n("10.0.0.0/8"))
    assert not network_contains(n("10.1.0.0/16"), n("10.0.0.0/8"))
    assert not network_contains(n("0.0.0.0/0"), n("::/0"))
    assert network_contains(n("::/0"), n("2001:db8::1/128"))


def test_entries_are_sorted_and_repr_is_informative() -> None:
    t = build_filter_table([cidr(2, "2001:db8::/32"), cidr(1, "10.0.0.0/8", Filter(UDP, 1, 2))], [])
    assert [str(n) for n, _ in t.entries()] == ["10.0.0.0/8", "2001:db8::/32"]
    assert "udp=[(1, 2)]" in repr(t.entries()[0][1].engine)
    assert repr(PERMIT_ALL) == "FilterEngine(permit_all)"
    assert FilterEngine(tcp=[(1, 2)], icmp=False) == FilterEngine(tcp=[(1, 1), (2, 2)], icmp=False)


small_filters = st.lists(
    st.one_of(
        st.builds(Filter, st.just(ICMP)),
        st.builds(Filter, st.sampled_from([TCP, UDP]), st.integers(0, 3), st.integers(0, 3)),
    ),
    max_size=2,
).map(tuple)


@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.sampled_from([0, 4, 8, 16, 24, 32]), small_filters), max_size=10
    ),
    st.booleans(),
)
def test_table_build_agrees_with_the_quadratic_definition(
    specs: list[tuple[int, int, Filters]], with_internet: bool
) -> None:
    resources = [
        Res(rid(i + 1), "cidr", [IPv4Network((b << 24, plen), strict=False)], f)
        for i, (b, plen, f) in enumerate(specs)
    ]
    if with_internet:
        resources.append(Res(rid(1000), "internet"))
    table = build_filter_table(resources, [])
    expected: dict[IPv4Network, tuple[FilterEngine, uuid.UUID]] = {}
    for r in sorted(resources, key=lambda r: r.resource_id):
        if not r.is_cidr:
            continue
        for net in r.networks():
            lists = [o.filters for o in resources if any(network_contains(n, net) for n in o.networks())]
            expected[net] = (FilterEngine.from_filter_lists(lists), r.resource_id)  # type: ignore[index]
    assert {n: (e.engine, e.resource_id) for n, e in table.entries()} == expected
