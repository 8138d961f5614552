"""One client's policy on real packets (as Firezone's
``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``)."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.clock import Instant
from gateway_core.errors import DropReason
from gateway_core.policy.client import DROP, FORWARD, REPLY, ClientPolicy
from gateway_core.policy.filters import Filter, FilterProtocol
from gateway_core.policy.nat import MAX_NAT_SESSIONS
from gateway_core.policy.p2p_control import NatStatus
from gateway_core.policy.resources import CidrResource, DnsResource, InternetResource
from gateway_core.wire.icmp import build_icmp_error, parse_icmp_error
from gateway_core.wire.ip import TCP_SYN, five_tuple, parse_ip
from gateway_core.wire.ipbuild import build_icmp_echo, build_ip, build_tcp_packet, build_udp_packet

CV4, CV6 = IPv4Address("100.64.0.1"), IPv6Address("fd00:2021:1111::1")
GV4, GV6 = IPv4Address("100.64.0.9"), IPv6Address("fd00:2021:1111::9")
R_CIDR, R_DNS, R_NET = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
TCP, UDP = FilterProtocol.TCP, FilterProtocol.UDP
NOW = Instant(0)


def policy() -> ClientPolicy:
    return ClientPolicy(uuid.UUID(int=77), CV4, CV6, GV4, GV6, None, MAX_NAT_SESSIONS)


def ip(s: str) -> IPv4Address | IPv6Address:
    return ip_address(s)


def test_spec_icmp_prohibited_vector() -> None:
    p = policy()
    offending = bytes.fromhex(
        "450000240000400040 11cc876440000 10a000001".replace(" ", "") + "0001025800108f330000000000000000"
    )
    verdict, reply, rid, _ = p.outbound(bytearray(offending), NOW)
    assert verdict == REPLY and rid is None
    assert isinstance(reply, bytes)
    assert reply == bytes.fromhex(
        "45000038000040001401f8830a00000164400001"
        "030d6b5600000000"
        "450000240000400040 11cc876440000 10a000001".replace(" ", "")
        + "000102580010 8f33".replace(" ", "")
    )
    assert p.stats.drops[DropReason.NOT_AUTHORIZED] == 1


def test_cidr_resource_with_filters() -> None:
    p = policy()
    p.allow(CidrResource(R_CIDR, "web", ip_network("10.0.0.0/24"), (Filter(TCP, 80, 80),)), None)
    ok = bytearray(build_tcp_packet(CV4, ip("10.0.0.5"), 5000, 80, flags=TCP_SYN))
    assert p.outbound(ok, NOW) == (FORWARD, ok, R_CIDR, None)
    denied = bytearray(build_tcp_packet(CV4, ip("10.0.0.5"), 5000, 22, flags=TCP_SYN))
    verdict, icmp, _, _ = p.outbound(denied, NOW)
    assert verdict == REPLY and isinstance(icmp, bytes)
    hdr = parse_ip(icmp)
    err = parse_icmp_error(icmp)
    assert (hdr.src, hdr.dst, hdr.ttl) == (ip("10.0.0.5"), CV4, 20)
    assert err is not None and (err.icmp_type, err.code) == (3, 13)
    assert p.stats.drops[DropReason.FILTERED] == 1
    # Inbound filtering is stateless on the source port (as in the reference).
    assert p.inbound(bytearray(build_tcp_packet(ip("10.0.0.5"), CV4, 80, 5000)), NOW)[0] == FORWARD
    verdict, _, _, reason = p.inbound(bytearray(build_tcp_packet(ip("10.0.0.5"), CV4, 81, 5000)), NOW)
    assert (verdict, reason) == (DROP, DropReason.FILTERED)
    verdict, _, _, reason = p.inbound(bytearray(build_udp_packet(ip("10.0.1.5"), CV4, 80, 5000, b"")), NOW)
    assert (verdict, reason) == (DROP, DropReason.NOT_AUTHORIZED)


def test_spoofed_source_and_gateway_address() -> None:
    p = policy()
    spoof = bytearray(build_udp_packet(ip("100.64.0.2"), GV4, 1, 53535, b""))
    verdict, icmp, _, _ = p.outbound(spoof, NOW)
    assert verdict == REPLY and parse_ip(icmp).dst == ip("100.64.0.2")  # type: ignore[arg-type]
    assert p.stats.drops[DropReason.SPOOFED_SOURCE] == 1
    to_gw = bytearray(build_udp_packet(CV6, GV6, 1, 53535, b"q"))
    assert p.outbound(to_gw, NOW) == (FORWARD, to_gw, None, None)  # unfiltered, no resource needed
    from_gw = bytearray(build_udp_packet(GV6, CV6, 53535, 1, b"a"))
    assert p.inbound(from_gw, NOW) == (FORWARD, from_gw, None, None)
    assert p.outbound(bytearray(b"\x45\x00"), NOW) == (DROP, b"", None, DropReason.MALFORMED_IP)
    assert p.inbound(bytearray(b""), NOW) == (DROP, b"", None, DropReason.MALFORMED_IP)


def test_internet_resource_but_not_proxy_ips() -> None:
    p = policy()
    p.allow(InternetResource(R_NET), None)
    anything = bytearray(build_ip(CV4, ip("8.8.8.8"), 47, b"gre!"))
    assert p.outbound(anything, NOW) == (FORWARD, anything, R_NET, None)
    back = bytearray(build_ip(ip("8.8.8.8"), CV4, 47, b"gre!"))
    assert p.inbound(back, NOW) == (FORWARD, back, R_NET, None)  # decision 0046
    proxy = bytearray(build_udp_packet(CV4, ip("100.96.0.1"), 1, 53, b""))
    assert p.outbound(proxy, NOW)[0] == REPLY


def test_dns_resource_end_to_end() -> None:
    p = policy()
    p.allow(
        DnsResource(R_DNS, "app", "*.example.com", (Filter(TCP, 443, 443), Filter(FilterProtocol.ICMP))), None
    )
    proxies = [ip("100.96.0.1"), ip("100.96.0.2"), ip("fd00:2021:1111:8000::"), ip("fd00:2021:1111:8000::1")]
    assert p.is_allowed(R_DNS) and not p.is_allowed(R_CIDR)
    assert p.handle_domain_resolved("app.example.com", R_DNS, [ip("10.1.1.1")], proxies) is NatStatus.ACTIVE
    syn = bytearray(build_tcp_packet(CV4, ip("100.96.0.2"), 6000, 443, flags=TCP_SYN))
    assert p.outbound(syn, NOW) == (FORWARD, syn, R_DNS, None)
    assert five_tuple(syn)[2] == ip("10.1.1.1")
    reply = bytearray(build_tcp_packet(ip("10.1.1.1"), CV4, 443, 6000))
    assert p.inbound(reply, NOW) == (FORWARD, reply, R_DNS, None)
    assert five_tuple(reply)[1] == ip("100.96.0.2")
    # The DNS resource's filters apply to proxy IPs.
    assert p.outbound(bytearray(build_tcp_packet(CV4, ip("100.96.0.2"), 6000, 80)), NOW)[0] == REPLY
    # No AAAA record: IPv6 proxy IPs are mapped to nothing, so ICMP unreachable (v6 code 3).
    v6 = bytearray(build_icmp_echo(CV6, ip("fd00:2021:1111:8000::1"), 1, 1, b""))
    verdict, icmp, _, _ = p.outbound(v6, NOW)
    err = parse_icmp_error(icmp)  # type: ignore[arg-type]
    assert verdict == REPLY and err is not None and (err.icmp_type, err.code) == (1, 3)
    # An ICMP error from the real IP about our session comes back from the proxy IP.
    probe = bytearray(build_udp_packet(CV4, ip("100.96.0.1"), 7000, 443, b""))
    assert p.outbound(probe, NOW)[0] == REPLY  # UDP not allowed by the filters
    router_err = bytearray(build_icmp_error(bytes(syn), 3, 1))
    verdict, translated, _, _ = p.inbound(router_err, NOW)
    assert verdict == FORWARD and parse_ip(translated).src == ip("100.96.0.2")  # type: ignore[arg-type]
    # A failed resolution is reported Inactive; an unauthorised resource too.
    assert p.handle_domain_resolved("app.example.com", R_DNS, None, proxies) is NatStatus.INACTIVE
    assert p.setup_nat("app.example.com", R_CIDR, [], proxies) is not None


def test_revocation_and_expiry_rebuild_the_filters() -> None:
    p = policy()
    p.allow(CidrResource(R_CIDR, "web", ip_network("10.0.0.0/24"), ()), 100)
    p.allow(CidrResource(R_DNS, "other", ip_network("10.9.0.0/24"), ()), None)
    pkt = build_udp_packet(CV4, ip("10.0.0.5"), 1, 2, b"")
    assert p.outbound(bytearray(pkt), NOW)[0] == FORWARD
    assert p.expire(99 * 10**9) == [] and p.outbound(bytearray(pkt), NOW)[0] == FORWARD
    assert p.expire(100 * 10**9) == [R_CIDR]
    assert p.outbound(bytearray(pkt), NOW)[0] == REPLY
    p.update_resource(CidrResource(R_DNS, "other", ip_network("10.9.0.0/24"), (Filter(UDP, 9, 9),)))
    assert p.outbound(bytearray(build_udp_packet(CV4, ip("10.9.0.1"), 1, 2, b"")), NOW)[0] == REPLY
    assert p.retain({R_DNS}) == [] and not p.is_empty()
    p.update_expiry(R_DNS, 5)
    a = p.authorizations.get(R_DNS)
    assert a is not None and a.expires_at == 5
    p.remove(R_CIDR)  # not held (expired): nothing happens
    p.remove(R_DNS)
    assert p.is_empty()
    assert p.poll_timeout() is None
    p.handle_timeout(NOW)


def _fuzz_policy() -> ClientPolicy:
    p = policy()
    p.allow(InternetResource(R_NET), None)
    p.allow(DnsResource(R_DNS, "app", "**.example.com", ()), None)
    p.handle_domain_resolved(
        "app.example.com",
        R_DNS,
        [ip("10.1.1.1"), ip("2001:db8::1")],
        [ip("100.96.0.1"), ip("fd00:2021:1111:8000::")],
    )
    return p


SEEDS = [
    build_tcp_packet(CV4, ip("100.96.0.1"), 6000, 443, flags=TCP_SYN),
    build_udp_packet(CV6, ip("fd00:2021:1111:8000::"), 1, 53, b"q"),
    build_icmp_echo(CV4, ip("100.96.0.1"), 9, 1, b"ping"),
    build_tcp_packet(ip("10.1.1.1"), CV4, 443, 6000),
    build_icmp_error(build_udp_packet(CV4, ip("10.1.1.1"), 1, 53, b"x"), 3, 3),
    build_icmp_error(build_icmp_echo(CV6, ip("2001:db8::1"), 9, 1, b""), 3, 4),
]


@settings(max_examples=300)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
    st.integers(0, 2000),
)
def test_mutated_packets_never_raise(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    p = _fuzz_policy()
    data = bytearray(seed)
    for at, v in flips:
        if data:
            data[at % len(data)] = v
    data = data[: max(cut, 0)] if cut < len(data) else data
    for direction in (p.outbound, p.inbound):
        verdict, payload, _, reason = direction(bytearray(data), NOW)
        assert verdict in (FORWARD, REPLY, DROP)
        assert isinstance(payload, bytes | bytearray)
        assert isinstance(reason, DropReason) if verdict is DROP else reason is None


@given(st.binary(max_size=80))
def test_random_bytes_never_raise(data: bytes) -> None:
    p = _fuzz_policy()
    for direction in (p.outbound, p.inbound):
        assert direction(bytearray(data), NOW)[0] in (FORWARD, REPLY, DROP)


def test_inbound_to_another_address_is_dropped() -> None:
    p = policy()
    p.allow(CidrResource(R_CIDR, "web", ip_network("10.0.0.0/24"), ()), None)
    other = IPv4Address("100.64.0.55")  # e.g. indexed for this client by a later authorisation
    verdict, _, _, reason = p.inbound(bytearray(build_udp_packet(ip("10.0.0.5"), other, 53, 1, b"")), NOW)
    assert (verdict, reason) == (DROP, DropReason.UNKNOWN_CLIENT)
    err = bytearray(build_icmp_error(build_udp_packet(other, ip("10.0.0.5"), 1, 53, b""), 3, 3))
    assert p.inbound(err, NOW) == (DROP, b"", None, DropReason.UNKNOWN_CLIENT)
    ok = bytearray(build_icmp_error(build_udp_packet(CV4, ip("10.9.9.9"), 1, 53, b""), 3, 3))
    assert p.inbound(ok, NOW) == (FORWARD, ok, None, None)  # an ICMP error passes without any filter
    redirect = bytearray(build_ip(ip("10.0.0.5"), CV4, 1, bytes([5, 0, 0, 0]) + bytes(4) + bytes(28)))
    assert p.inbound(redirect, NOW) == (DROP, b"", None, DropReason.NAT_UNSUPPORTED_PROTOCOL)


# --- outbound decisions against a naive model of the reference's translate_outbound and filters ----

NETS = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "192.168.0.0/16",
    "2001:db8::/32",
    "2001:db8:1::/48",
]
DSTS = [
    "10.0.0.1",
    "10.1.0.1",
    "10.1.2.3",
    "10.1.2.4",
    "192.168.1.1",
    "172.16.0.1",
    "2001:db8::1",
    "2001:db8:1::1",
    "2001:db9::1",
]

filter_st = st.lists(
    st.one_of(
        st.just(Filter(FilterProtocol.ICMP)),
        st.builds(
            Filter,
            st.sampled_from([TCP, UDP]),
            st.sampled_from([0, 53, 80, 443]),
            st.sampled_from([53, 80, 443, 65535]),
        ),
    ),
    max_size=2,
).map(tuple)


def model_outbound(
    resources: list[CidrResource | InternetResource], dst: str, proto: str, port: int
) -> uuid.UUID | None:
    d = ip_address(dst)
    ordered = sorted(resources, key=lambda r: r.id)
    inet = [r for r in ordered if isinstance(r, InternetResource)]
    if inet:
        return inet[0].id
    cidrs = [r for r in ordered if isinstance(r, CidrResource) and d in r.network]
    if not cidrs:
        return None
    best = max(r.network.prefixlen for r in cidrs)
    owner = [r for r in cidrs if r.network.prefixlen == best][-1]
    lists = [
        r.filters
        for r in ordered
        if isinstance(r, CidrResource)
        and r.network.version == owner.network.version
        and owner.network.subnet_of(r.network)  # type: ignore[arg-type]
    ]
    if any(not f for f in lists):
        return owner.id
    for f in (x for fs in lists for x in fs):
        if proto == "icmp" and f.protocol is FilterProtocol.ICMP:
            return owner.id
        if f.protocol.value == proto and f.port_range_start <= port <= f.port_range_end:
            return owner.id
    return None


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.sampled_from(NETS), filter_st), max_size=6),
    st.booleans(),
    st.sampled_from(DSTS),
    st.sampled_from(["tcp", "udp", "icmp"]),
    st.sampled_from([22, 53, 80, 443]),
)
def test_outbound_agrees_with_model(
    specs: list[tuple[int, str, tuple[Filter, ...]]], internet: bool, dst: str, proto: str, port: int
) -> None:
    resources: dict[uuid.UUID, CidrResource | InternetResource] = {}
    for n, net, filters in specs:
        resources[uuid.UUID(int=n)] = CidrResource(uuid.UUID(int=n), f"r{n}", ip_network(net), filters)
    if internet:
        resources[uuid.UUID(int=99)] = InternetResource(uuid.UUID(int=99))
    p = policy()
    for r in resources.values():
        p.allow(r, None)
    src = CV4 if ip_address(dst).version == 4 else CV6
    if proto == "tcp":
        pkt = build_tcp_packet(src, ip_address(dst), 1000, port)
    elif proto == "udp":
        pkt = build_udp_packet(src, ip_address(dst), 1000, port, b"")
    else:
        pkt = build_icmp_echo(src, ip_address(dst), 1, 1, b"")
    verdict, _, rid, _ = p.outbound(bytearray(pkt), NOW)
    want = model_outbound(list(resources.values()), dst, proto, port)
    assert (verdict, rid) == ((FORWARD, want) if want is not None else (REPLY, None))
