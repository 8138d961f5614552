"""The gateway-wide policy: peer store, authorisation lifecycle, expiry sweep, control packets (Firezone:
``rust/connlib/tunnel/src/gateway.rs``, ``rust/connlib/tunnel/src/peer_store.rs``)."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.clock import Instant, secs
from gateway_core.errors import DropReason
from gateway_core.policy.authorizations import InitAuthorization
from gateway_core.policy.client import FORWARD, REPLY
from gateway_core.policy.filters import Filter, FilterProtocol
from gateway_core.policy.p2p_control import (
    GOODBYE_PACKET,
    NatStatus,
    build_assigned_ips,
    build_control_packet,
    build_domain_status,
    decode_domain_status,
    parse_control_packet,
)
from gateway_core.policy.peers import ClientGone, ControlReply, Peers, ResolveRequest
from gateway_core.policy.resources import CidrResource, DnsResource, InternetResource
from gateway_core.wire.ipbuild import build_tcp_packet, build_udp_packet

GV4, GV6 = IPv4Address("100.64.0.9"), IPv6Address("fd00:2021:1111::9")
NS = 10**9


def cid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def v4(n: int) -> IPv4Address:
    return IPv4Address(0x64400000 + n)


def v6(n: int) -> IPv6Address:
    return IPv6Address(int(IPv6Address("fd00:2021:1111::")) + n)


CIDR = CidrResource(cid(100), "net", ip_network("10.0.0.0/8"), ())
DNS = DnsResource(cid(101), "app", "*.example.com", (Filter(FilterProtocol.TCP, 443, 443),))
PROXIES = [ip_address(f"100.96.0.{i}") for i in range(1, 5)]


def peers(utc_at_zero: int = 0) -> Peers:
    p = Peers(wall_clock=lambda now: utc_at_zero + now)
    p.set_tunnel_ips(GV4, GV6)
    assert p.gateway_ips == (GV4, GV6)
    return p


def test_no_authorisation_before_init() -> None:
    p = Peers()
    assert not p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    assert len(p) == 0


def test_allow_route_and_reject() -> None:
    p = peers()
    assert p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    assert p.allow_access(cid(1), v4(1), v6(1), DNS, None)
    assert p.allow_access(cid(2), v4(2), v6(2), CIDR, 50)
    c1 = p.route_tun(build_udp_packet(ip_address("10.0.0.1"), v4(1), 1, 2, b""))
    assert c1 is p.clients[cid(1)]
    assert p.route_tun(build_udp_packet(ip_address("2001:db8::1"), v6(2), 1, 2, b"")) is p.clients[cid(2)]
    assert (
        p.route_tun(build_udp_packet(ip_address("10.0.0.1"), v4(3), 1, 2, b"")) is DropReason.UNKNOWN_CLIENT
    )
    assert (
        p.route_tun(build_udp_packet(ip_address("10.0.0.1"), ip_address("224.0.0.1"), 1, 2, b""))
        is DropReason.UNROUTABLE
    )
    assert (
        p.route_tun(build_udp_packet(ip_address("fe80::1"), ip_address("ff02::16"), 1, 2, b""))
        is DropReason.UNROUTABLE
    )
    assert p.route_tun(b"\x45") is DropReason.MALFORMED_IP
    assert p.route_tun(bytes([0x60]) + bytes(30)) is DropReason.MALFORMED_IP
    assert not p.remove_access(cid(1), CIDR.id) and cid(1) in p.clients
    assert p.remove_access(cid(1), DNS.id) and cid(1) not in p.clients  # empty: goodbye
    assert (
        p.route_tun(build_udp_packet(ip_address("10.0.0.1"), v4(1), 1, 2, b"")) is DropReason.UNKNOWN_CLIENT
    )
    assert not p.remove_access(cid(9), CIDR.id)
    p.check()


def test_address_takeover_and_stale_index() -> None:
    p = peers()
    p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    p.allow_access(cid(2), v4(1), v6(2), CIDR, None)  # the portal re-used the address
    assert p.client_by_ip(v4(1)) is p.clients[cid(2)]
    assert p.client_by_ip(v6(1)) is p.clients[cid(1)]
    p.remove_client(cid(1))
    assert p.client_by_ip(v6(1)) is None and p.client_by_ip(v4(1)) is p.clients[cid(2)]
    p.remove_client(cid(1))  # unknown now: nothing happens
    p.check()


def test_sweep_expires_and_removes_empty_clients() -> None:
    p = peers(utc_at_zero=200 * NS)
    p.allow_access(cid(1), v4(1), v6(1), CIDR, 100)
    p.allow_access(cid(2), v4(2), v6(2), CIDR, None)
    assert p.poll_timeout() is None
    p.handle_timeout(Instant(0))  # the first call only starts the grid
    assert p.poll_removed() is None
    assert p.poll_timeout() is not None and p.poll_timeout().at == secs(1)  # type: ignore[union-attr]
    p.handle_timeout(Instant(secs(1) - 1))
    assert p.poll_removed() is None
    p.handle_timeout(Instant(secs(1)))
    assert p.poll_removed() == cid(1) and p.poll_removed() is None
    assert list(p.clients) == [cid(2)]
    assert p.poll_timeout() is None  # client 2 never expires: the sweep has nothing to wake for


def test_expiry_is_swept_at_the_first_tick_at_or_after_it_not_between_ticks() -> None:
    """Found by the stateful ``expiry_edge`` step: the sweep skips the ticks at which nothing is due
    (decision 0140), and a call between ticks (for another timer of the gateway) used to sweep at once, with
    the wall clock of that call: an authorisation that expired since the last tick went up to 1 s before the
    tick at which the reference removes it (it sweeps at every tick, ``GatewayState::handle_timeout``)."""
    p = peers(utc_at_zero=200 * NS)
    p.allow_access(cid(1), v4(1), v6(1), CIDR, 203)  # expires 3 s after the start
    p.allow_access(cid(1), v4(1), v6(1), DNS, 205)  # and 5 s after it
    half = secs(1) // 2
    p.handle_timeout(Instant(half))  # the grid: ticks at 1.5 s, 2.5 s, 3.5 s, ...
    d = p.poll_timeout()
    assert d is not None and d.at == secs(3) + half  # the first tick at or after the expiry
    p.handle_timeout(Instant(secs(3) + half // 2))  # another timer at 3.25 s: the tick of 2.5 s passed
    assert p.clients[cid(1)].authorizations.ids() == sorted([CIDR.id, DNS.id])  # its sweep: nothing due
    p.handle_timeout(Instant(secs(3) + half))  # the tick the gateway asked for
    assert p.clients[cid(1)].authorizations.ids() == [DNS.id]
    p.handle_timeout(Instant(secs(5) + half // 2))  # 5.25 s: the tick of 4.5 s, skipped, is reached late
    assert p.clients[cid(1)].authorizations.ids() == [DNS.id]
    assert p.poll_removed() is None
    p.handle_timeout(Instant(secs(5) + half))
    assert p.poll_removed() == cid(1) and cid(1) not in p.clients


def test_resource_updated_and_expiry_updates() -> None:
    p = peers()
    p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    p.allow_access(cid(2), v4(2), v6(2), InternetResource(cid(7)), None)
    narrowed = CidrResource(CIDR.id, "net", ip_network("10.0.0.0/8"), (Filter(FilterProtocol.UDP, 53, 53),))
    p.update_resource(narrowed)
    assert p.clients[cid(2)].authorizations.get(CIDR.id) is None
    pkt = bytearray(build_udp_packet(v4(1), ip_address("10.1.1.1"), 1, 80, b""))
    assert p.clients[cid(1)].outbound(pkt, Instant(0))[0] == REPLY
    p.update_expiry(cid(1), CIDR.id, 5)
    p.update_expiry(cid(3), CIDR.id, 6)  # unknown client: nothing happens
    p.update_expiry(cid(1), cid(55), 7)  # unknown resource: nothing happens
    a = p.clients[cid(1)].authorizations.get(CIDR.id)
    assert a is not None and a.expires_at == 5 and cid(3) not in p.clients
    assert p.clients[cid(1)].authorizations.ids() == [CIDR.id]


def test_init_retention_and_expiry() -> None:
    p = peers()
    p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    p.allow_access(cid(1), v4(1), v6(1), DNS, None)
    p.allow_access(cid(2), v4(2), v6(2), CIDR, None)
    p.apply_init([InitAuthorization(cid(1), DNS.id, 500), InitAuthorization(cid(4), CIDR.id, 1)])
    # Client 2 is not listed: the portal no longer authorises anything of it (decision 0123; the
    # reference leaves it untouched, keeping the access of a client revoked while the gateway was away).
    assert p.clients[cid(1)].authorizations.ids() == [DNS.id] and cid(4) not in p.clients
    a = p.clients[cid(1)].authorizations.get(DNS.id)
    assert a is not None and a.expires_at == 500
    assert p.clients[cid(2)].authorizations.ids() == []
    pkt = bytearray(build_udp_packet(v4(2), ip_address("10.1.1.1"), 1, 80, b""))
    assert p.clients[cid(2)].outbound(pkt, Instant(0))[0] == REPLY  # ICMP prohibited from now on
    # Emptied clients go at the sweep (a goodbye each).
    p.handle_timeout(Instant(0))
    p.handle_timeout(Instant(secs(1)))
    assert p.poll_removed() == cid(2) and p.poll_removed() is None
    # A listed client whose every listed resource is unknown ends up empty too.
    p.allow_access(cid(3), v4(3), v6(3), CIDR, None)
    p.apply_init([InitAuthorization(cid(3), cid(999), 1), InitAuthorization(cid(1), DNS.id, 500)])
    p.handle_timeout(Instant(secs(2)))
    assert p.poll_removed() == cid(3) and p.poll_removed() is None


def test_assigned_ips_flow() -> None:
    p = peers()
    p.allow_access(cid(1), v4(1), v6(1), DNS, None)
    req = p.handle_control(cid(1), build_assigned_ips(DNS.id, "app.example.com", PROXIES))
    assert req == ResolveRequest(cid(1), DNS.id, "app.example.com", tuple(PROXIES))
    assert isinstance(req, ResolveRequest)
    status = p.domain_resolved(req, [ip_address("10.0.0.7")])
    assert decode_domain_status(parse_control_packet(status).payload).status is NatStatus.ACTIVE
    c = p.clients[cid(1)]
    pkt = bytearray(build_udp_packet(v4(1), PROXIES[0], 1, 443, b""))
    assert c.outbound(pkt, Instant(0))[0] == REPLY  # UDP is filtered
    tcp = bytearray(build_tcp_packet(v4(1), PROXIES[2], 1, 443))
    assert c.outbound(tcp, Instant(0))[0] == FORWARD
    # Failed resolution, unauthorised resource, unknown client: Inactive.
    assert status != p.domain_resolved(req, None)
    other = p.handle_control(cid(1), build_assigned_ips(CIDR.id, "x.example.com", PROXIES))
    assert other == ControlReply(build_domain_status(CIDR.id, "x.example.com", NatStatus.INACTIVE))
    stranger = p.handle_control(cid(5), build_assigned_ips(DNS.id, "app.example.com", PROXIES))
    assert isinstance(stranger, ControlReply)
    gone = ResolveRequest(cid(5), DNS.id, "app.example.com", tuple(PROXIES))
    assert (
        decode_domain_status(parse_control_packet(p.domain_resolved(gone, [])).payload).status
        is NatStatus.INACTIVE
    )


def test_other_control_events() -> None:
    p = peers()
    p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    assert p.handle_control(cid(1), build_control_packet(1, b"{}")) is None
    assert p.handle_control(cid(1), build_control_packet(0, b"{")) is DropReason.P2P_CONTROL_MALFORMED
    assert p.handle_control(cid(1), b"\x60") is DropReason.P2P_CONTROL_MALFORMED
    assert p.handle_control(cid(1), GOODBYE_PACKET) == ClientGone(cid(1))
    assert len(p) == 0


def test_may_query_and_shutdown() -> None:
    p = peers()
    p.allow_access(cid(2), v4(2), v6(2), DNS, None)
    p.allow_access(cid(1), v4(1), v6(1), CIDR, None)
    assert p.may_query(v6(2), "_sip._tcp.example.com") is False  # `*.` is one label
    assert p.may_query(v4(2), "a.example.com") and not p.may_query(v4(1), "a.example.com")
    assert not p.may_query(v4(7), "a.example.com")
    assert p.shutdown() == [cid(1), cid(2)] and len(p) == 0 and p.client_by_ip(v4(1)) is None


@settings(max_examples=100)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["allow", "reject", "goodbye", "tick"]),
            st.integers(1, 4),
            st.sampled_from([CIDR, DNS]),
        ),
        max_size=30,
    )
)
def test_index_stays_consistent(ops: list[tuple[str, int, CidrResource | DnsResource]]) -> None:
    p = peers()
    t = 0
    for op, n, r in ops:
        if op == "allow":
            p.allow_access(cid(n), v4(n % 3), v6(n), r, t + 2)
        elif op == "reject":
            p.remove_access(cid(n), r.id)
        elif op == "goodbye":
            p.handle_control(cid(n), GOODBYE_PACKET)
        else:
            t += 1
            p.handle_timeout(Instant(t * secs(1)))
            assert p.poll_timeout() == p.poll_timeout_recomputed()
        p.check()
        assert all(p.client_by_ip(v6(c.client_id.int)) is c for c in p.clients.values())
