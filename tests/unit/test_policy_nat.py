"""The DNS-resource NAT (Firezone's ``rust/connlib/tunnel/src/gateway/nat_table.rs``): keys, timeouts in
both directions, bounds, a worked example on real packets, proxy-IP pairing and setup_nat."""

from __future__ import annotations

import uuid
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.contract import Deadline
from gateway_core.errors import DropReason, UsageError
from gateway_core.policy.authorizations import Authorization
from gateway_core.policy.dns_nat import DnsResourceNat, NatVerdict, SetupNatError, pair_proxy_ips
from gateway_core.policy.filters import L4_ICMP, L4_TCP, L4_UDP
from gateway_core.policy.nat import (
    MAX_NAT_SESSIONS,
    OUTSIDE_VALUES,
    TCP_TTL,
    TOMBSTONE_TTL,
    UDP_TTL,
    NatSession,
    NatTable,
)
from gateway_core.policy.p2p_control import NatStatus
from gateway_core.policy.resources import CidrResource, DnsResource
from gateway_core.wire.icmp import build_icmp_error, parse_icmp_error
from gateway_core.wire.ip import TCP_RST, TCP_SYN, five_tuple, l4_checksum_ok, parse_ip
from gateway_core.wire.ipbuild import build_icmp_echo, build_ip, build_tcp_packet, build_udp_packet


def _ended(t: NatTable | DnsResourceNat, now: Instant) -> int:
    """``handle_timeout(now)``; the number of sessions it ended (it only ends sessions)."""
    table = t if isinstance(t, NatTable) else t.table
    before = len(table)
    t.handle_timeout(now)
    return before - len(table)


def _at(d: Deadline | None) -> int | None:
    return None if d is None else d.at


def ip(s: str) -> IPAddress:
    return ip_address(s)


def T(s: float) -> Instant:
    return Instant(int(s * 1_000_000_000))


CLIENT4, CLIENT6 = ip("100.64.0.1"), ip("fd00:2021:1111::1")
P1, P5 = ip("100.96.0.1"), ip("100.96.0.5")
REAL = ip("10.0.0.1")
RID = uuid.UUID(int=0x65)


def dns_auth(pattern: str = "*.example.com") -> Authorization:
    return Authorization(DnsResource(RID, "res", pattern, ()))


# --- NatTable on keys ----------------------------------------------------------------------------


def test_worked_example_on_keys() -> None:
    t = NatTable()
    s1 = t.translate_outgoing(L4_TCP, 5401, P1, REAL, T(0))
    assert isinstance(s1, NatSession) and s1.outside_value == 5401
    assert t.translate_incoming(L4_TCP, 5401, REAL, T(1)) is s1
    s2 = t.translate_outgoing(L4_TCP, 5401, P5, REAL, T(2))
    assert isinstance(s2, NatSession) and s2.outside_value == 5402  # 5401 taken for this real IP
    back = t.translate_incoming(L4_TCP, 5402, REAL, T(3))
    assert back is s2 and back.proxy_ip == P5 and back.inside_value == 5401
    s1b = t.translate_outgoing(L4_TCP, 5401, P1, REAL, T(4), rst=True)  # RST still translated ...
    assert s1b is s1
    assert t.translate_incoming(L4_TCP, 5401, REAL, T(5)) is None  # ... but ends the session
    assert t.is_expired(L4_TCP, 5401, REAL)
    assert len(t) == 1 and t.has_inside_ip(P5) and not t.has_inside_ip(P1)


def test_protocols_are_separate_and_allocation_wraps() -> None:
    t = NatTable()
    a = t.translate_outgoing(L4_UDP, 65535, P1, REAL, T(0))
    b = t.translate_outgoing(L4_UDP, 65535, P5, REAL, T(0))
    c = t.translate_outgoing(L4_TCP, 65535, P5, REAL, T(0))
    d = t.translate_outgoing(L4_ICMP, 0, P1, REAL, T(0))
    assert isinstance(a, NatSession) and isinstance(b, NatSession)
    assert isinstance(c, NatSession) and isinstance(d, NatSession)
    assert (a.outside_value, b.outside_value, c.outside_value, d.outside_value) == (65535, 1, 65535, 0)


def test_changed_real_ip_replaces_mapping_without_tombstone() -> None:
    t = NatTable()
    t.translate_outgoing(L4_UDP, 1000, P1, REAL, T(0))
    s = t.translate_outgoing(L4_UDP, 1000, P1, ip("10.0.0.2"), T(1))
    assert isinstance(s, NatSession) and s.real_ip == ip("10.0.0.2") and len(t) == 1
    assert t.translate_incoming(L4_UDP, 1000, REAL, T(2)) is None
    assert not t.is_expired(L4_UDP, 1000, REAL)


def test_udp_session_refreshed_by_inbound_traffic_too() -> None:
    t = NatTable()
    t.translate_outgoing(L4_UDP, 53, P1, REAL, T(0))
    for k in range(1, 10):  # replies every 100 s, never an outbound packet again
        assert _ended(t, T(100 * k)) == 0
        assert t.translate_incoming(L4_UDP, 53, REAL, T(100 * k)) is not None
    due = _at(t.poll_timeout())  # a lower bound: sweeping then finds nothing due yet and moves it on
    assert due is not None and T(900) < due <= T(900) + UDP_TTL
    assert _ended(t, Instant(due)) == 0 and _at(t.poll_timeout()) == T(900) + UDP_TTL
    assert _ended(t, Instant(T(900) + UDP_TTL - 1)) == 0
    assert _ended(t, Instant(T(900) + UDP_TTL)) == 1
    assert t.translate_incoming(L4_UDP, 53, REAL, Instant(T(900) + UDP_TTL)) is None
    assert t.is_expired(L4_UDP, 53, REAL)
    # The tombstone goes after TOMBSTONE_TTL; then the table is empty and has no deadline.
    end = Instant(T(900) + UDP_TTL + TOMBSTONE_TTL)
    t.handle_timeout(end)
    assert not t.is_expired(L4_UDP, 53, REAL) and t.poll_timeout() is None


def test_tcp_ttl_and_inbound_rst() -> None:
    t = NatTable()
    t.translate_outgoing(L4_TCP, 40000, P1, REAL, T(0))
    assert _ended(t, Instant(TCP_TTL - 1)) == 0 and len(t) == 1
    assert t.translate_incoming(L4_TCP, 40000, REAL, Instant(TCP_TTL - 1), rst=True) is not None
    assert len(t) == 0 and t.is_expired(L4_TCP, 40000, REAL)
    # A new session on the same outside key removes the tombstone.
    t.translate_outgoing(L4_TCP, 40000, P1, REAL, Instant(TCP_TTL))
    assert not t.is_expired(L4_TCP, 40000, REAL)


def test_bounded_table_refuses_new_sessions_when_full() -> None:
    t = NatTable(max_sessions=3)
    for port in (1, 2, 3):
        assert isinstance(t.translate_outgoing(L4_UDP, port, P1, REAL, T(0)), NatSession)
    assert t.translate_outgoing(L4_UDP, 4, P1, REAL, T(1)) is DropReason.NAT_TABLE_FULL
    # Existing sessions keep working while full.
    assert isinstance(t.translate_outgoing(L4_UDP, 2, P1, REAL, T(60)), NatSession)
    # Once the idle ones time out, there is room again (without waiting for the periodic sweep).
    s = t.translate_outgoing(L4_UDP, 4, P1, REAL, Instant(T(0) + UDP_TTL))
    assert isinstance(s, NatSession) and len(t) == 2
    assert MAX_NAT_SESSIONS >= 1024
    with pytest.raises(UsageError):
        NatTable(0)
    # A bound below the 65,535 outside values towards one address always leaves one free.
    assert MAX_NAT_SESSIONS < OUTSIDE_VALUES
    NatTable(OUTSIDE_VALUES - 1)
    with pytest.raises(UsageError):
        NatTable(OUTSIDE_VALUES)


def test_outside_values_never_run_out_below_the_bound() -> None:
    # A table at its largest bound (65,534): ports 2-65533 each keep their value, two more flows from port
    # 2 take 65534 and 65535; the table is full (the bound refuses the next one) with value 1 still free.
    t = NatTable(max_sessions=OUTSIDE_VALUES - 1)
    for port in range(2, 65534):
        s = t.translate_outgoing(L4_UDP, port, P1, REAL, T(0))
        assert isinstance(s, NatSession) and s.outside_value == port
    for p, out in ((P5, 65534), (ip("100.96.0.6"), 65535)):
        s = t.translate_outgoing(L4_UDP, 2, p, REAL, T(0))
        assert isinstance(s, NatSession) and s.outside_value == out
    assert len(t) == OUTSIDE_VALUES - 1
    assert t.translate_outgoing(L4_UDP, 2, ip("100.96.0.7"), REAL, T(1)) is DropReason.NAT_TABLE_FULL


def test_tombstones_are_bounded() -> None:
    t = NatTable(max_sessions=2)
    for port in range(1, 6):
        t.translate_outgoing(L4_TCP, port, P1, REAL, T(port), rst=False)
        t.translate_outgoing(L4_TCP, port, P1, REAL, T(port), rst=True)
    assert [t.is_expired(L4_TCP, p, REAL) for p in range(1, 6)] == [False, False, False, True, True]


def test_time_must_not_go_backwards() -> None:
    t = NatTable()
    t.translate_outgoing(L4_UDP, 1, P1, REAL, T(5))
    with pytest.raises(UsageError):
        t.translate_outgoing(L4_UDP, 1, P1, REAL, T(4))
    assert _at(t.poll_timeout()) == T(5) + UDP_TTL


ops = st.lists(
    st.tuples(
        st.sampled_from(["out", "in", "tick"]),
        st.sampled_from([L4_TCP, L4_UDP, L4_ICMP]),
        st.integers(0, 5),
        st.sampled_from([P1, P5, ip("100.96.0.9")]),
        st.sampled_from([REAL, ip("10.0.0.2")]),
        st.booleans(),
        st.integers(0, 200),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(ops)
def test_table_stays_a_bijection(seq: list[tuple[str, int, int, IPAddress, IPAddress, bool, int]]) -> None:
    t = NatTable(max_sessions=6)
    now = 0
    for op, proto, value, proxy, real, rst, dt in seq:
        now += dt * 1_000_000_000
        if op == "out":
            r = t.translate_outgoing(proto, value, proxy, real, Instant(now), rst)
            assert r is DropReason.NAT_TABLE_FULL or (isinstance(r, NatSession) and r.real_ip == real)
        elif op == "in":
            t.translate_incoming(proto, value, real, Instant(now), rst)
        else:
            t.handle_timeout(Instant(now))
        sessions = t.sessions()
        assert len(sessions) == len(t) <= 6
        assert (
            len({s.inside_key for s in sessions}) == len({s.outside_key for s in sessions}) == len(sessions)
        )
        for s in sessions:
            assert t.lookup_icmp_error(s.proto, s.outside_value, s.real_ip) is s
            assert now - s.last_seen < s.ttl or t.poll_timeout() is not None
            assert t.has_inside_ip(s.proxy_ip)
        pt = t.poll_timeout()
        assert pt is None or pt.at >= now


# --- pairing (decision 0044) ---------------------------------------------------------------------

V4P = [ip(f"100.96.0.{i}") for i in (4, 1, 3, 2)]
V6P = [ip(f"fd00:2021:1111:8000::{i}") for i in (3, 0, 1, 2)]


def test_pairing_round_robin_per_family() -> None:
    reals = [ip("10.0.0.2"), ip("10.0.0.1"), ip("2001:db8::1")]
    pairs = dict(pair_proxy_ips(V4P + V6P, reals))
    assert [str(pairs[ip(f"100.96.0.{i}")]) for i in (1, 2, 3, 4)] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert {str(pairs[p]) for p in V6P} == {"2001:db8::1"}  # the reference maps none of these


def test_ipv6_only_resource_with_a_records_is_mapped() -> None:
    pairs = pair_proxy_ips(V6P, [ip("10.0.0.1"), ip("2001:db8::9")])
    assert [str(r) for _, r in pairs] == ["2001:db8::9"] * 4


def test_missing_family_and_more_reals_than_proxies() -> None:
    pairs = pair_proxy_ips(V4P + V6P, [ip("10.0.0.1")])
    assert [r for p, r in pairs if p.version == 6] == [None] * 4
    many = [ip(f"10.0.1.{i}") for i in range(10)]
    assert [str(r) for _, r in pair_proxy_ips(V4P, many)] == ["10.0.1.0", "10.0.1.1", "10.0.1.2", "10.0.1.3"]
    assert pair_proxy_ips([], many) == []


# --- setup_nat -----------------------------------------------------------------------------------


def test_setup_nat_validates_before_touching_state() -> None:
    nat = DnsResourceNat()
    auth = dns_auth()
    assert nat.setup_nat("a.example.com", auth, [REAL], V4P) is None
    assert auth.domains == {"a.example.com": frozenset({REAL})}
    before = dict(nat.translations)
    # A request that re-uses the proxy IPs for another domain but fails validation changes nothing.
    assert nat.setup_nat("b.other.com", auth, [REAL], V4P) is SetupNatError.DOMAIN_MISMATCH
    assert nat.setup_nat("b.example.com", None, [REAL], V4P) is SetupNatError.UNKNOWN_RESOURCE
    cidr = Authorization(CidrResource(RID, "c", ip_network("10.0.0.0/8"), ()))
    assert nat.setup_nat("b.example.com", cidr, [REAL], V4P) is SetupNatError.NOT_DNS_RESOURCE
    assert nat.translations == before


def test_reassignment_forgets_only_the_reassigned_proxy_ips() -> None:
    nat = DnsResourceNat()
    auth = dns_auth()
    nat.setup_nat("a.example.com", auth, [REAL], V4P)
    nat.setup_nat("c.example.com", auth, [ip("10.0.0.3")], V6P)
    nat.table.translate_outgoing(L4_UDP, 5, V4P[1], REAL, T(0))  # to 100.96.0.1, re-assigned below
    nat.table.translate_outgoing(L4_UDP, 6, V4P[0], REAL, T(0))  # to 100.96.0.4, not re-assigned
    nat.setup_nat("b.example.com", auth, [ip("10.0.0.2")], V4P[1:2])  # re-numbered: 100.96.0.1 only
    assert nat.translations[V4P[1]].domain == "b.example.com"
    assert nat.translations[V4P[1]].resolved_ip == ip("10.0.0.2")  # its open session did not keep it
    assert {p for p, st in nat.translations.items() if st.domain == "a.example.com"} == set(V4P) - {V4P[1]}
    assert {p for p, st in nat.translations.items() if st.domain == "c.example.com"} == set(V6P)
    assert [(s.inside_value, s.proxy_ip) for s in nat.table.sessions()] == [(6, V4P[0])]
    # The forgotten session leaves no tombstone: its outside port is free for the new translation.
    assert not nat.table.is_expired(L4_UDP, 5, REAL)


def test_restart_renumbering_keeps_what_the_new_incarnation_set_up() -> None:
    """A client restarts and numbers its names anew: ``app`` gets its old proxy IPs back, ``v4only`` those
    the old incarnation gave ``v6only``. Setting up ``v4only`` must not undo ``app``'s set-up (the
    reference resets the whole NAT here; nightly finding ``restart_renumbering_wiped_a_confirmed_nat``)."""
    nat = DnsResourceNat()
    auth = dns_auth()
    first, second = [ip(f"100.96.0.{i}") for i in (1, 2, 3, 4)], [ip(f"100.96.0.{i}") for i in (5, 6, 7, 8)]
    nat.setup_nat("app.example.com", auth, [REAL], first)
    nat.setup_nat("v6only.example.com", auth, [], second)
    # The new incarnation: app first (the same proxy IPs), a session through it, then v4only.
    nat.setup_nat("app.example.com", auth, [REAL], first)
    nat.table.translate_outgoing(L4_UDP, 20004, first[0], REAL, T(1))
    nat.setup_nat("v4only.example.com", auth, [REAL], second)
    assert {p: st.domain for p, st in nat.translations.items()} == {
        **dict.fromkeys(first, "app.example.com"),
        **dict.fromkeys(second, "v4only.example.com"),
    }
    assert all(st.resolved_ip == REAL for st in nat.translations.values())
    assert [s.proxy_ip for s in nat.table.sessions()] == [first[0]]


def test_forget_inside_ip_unlinks_its_sessions_only() -> None:
    t = NatTable()
    t.translate_outgoing(L4_UDP, 5, P1, REAL, T(0))
    t.translate_outgoing(L4_TCP, 5, P1, REAL, T(0))
    t.translate_outgoing(L4_UDP, 5, P5, REAL, T(0))  # collides: takes outside port 6
    t.forget_inside_ip(ip("100.96.0.9"))
    assert len(t) == 3
    t.forget_inside_ip(P1)
    assert not t.has_inside_ip(P1) and t.has_inside_ip(P5) and len(t) == 1
    assert t.translate_incoming(L4_UDP, 5, REAL, T(1)) is None and not t.is_expired(L4_UDP, 5, REAL)
    s = t.translate_incoming(L4_UDP, 6, REAL, T(1))
    assert s is not None and s.proxy_ip == P5


def test_open_sessions_keep_their_translation() -> None:
    nat = DnsResourceNat()
    auth = dns_auth()
    nat.setup_nat("a.example.com", auth, [REAL], [P1])
    nat.table.translate_outgoing(L4_TCP, 9, P1, REAL, T(0))
    nat.setup_nat("A.Example.com", auth, [ip("10.0.0.7")], [P1])  # same domain, other case: no wipe
    assert nat.translations[P1].resolved_ip == REAL
    nat.table.clear()
    nat.setup_nat("a.example.com", auth, [ip("10.0.0.7")], [P1])
    assert nat.translations[P1].resolved_ip == ip("10.0.0.7")


def test_proxy_ips_outside_the_proxy_ranges_are_ignored() -> None:
    nat = DnsResourceNat()
    assert nat.setup_nat("a.example.com", dns_auth(), [REAL], [ip("10.9.9.9"), P1, ip("100.64.0.2")]) is None
    assert list(nat.translations) == [P1]
    assert nat.proxy_translations() == [(P1, RID)]


def test_handle_domain_resolved_statuses() -> None:
    nat = DnsResourceNat()
    auth = dns_auth()
    assert nat.handle_domain_resolved("a.example.com", auth, None, V4P) is NatStatus.INACTIVE
    assert nat.handle_domain_resolved("a.example.com", None, [REAL], V4P) is NatStatus.INACTIVE
    assert nat.handle_domain_resolved("x.other", auth, [REAL], V4P) is NatStatus.INACTIVE
    assert nat.handle_domain_resolved("a.example.com", auth, [], V4P) is NatStatus.ACTIVE
    assert all(s.resolved_ip is None for s in nat.translations.values())


# --- on packets ----------------------------------------------------------------------------------


def setup(real: IPAddress = REAL) -> DnsResourceNat:
    nat = DnsResourceNat()
    nat.setup_nat(
        "a.example.com", dns_auth(), [real, ip("2001:db8::1")], [P1, P5, ip("fd00:2021:1111:8000::1")]
    )
    return nat


def test_worked_example_on_packets() -> None:
    nat = setup()
    syn = bytearray(build_tcp_packet(CLIENT4, P1, 5401, 80, flags=TCP_SYN))
    assert nat.translate_outbound_packet(syn, T(0)) is NatVerdict.SEND
    assert five_tuple(syn)[1:] == (CLIENT4, REAL, 5401, 80) and l4_checksum_ok(syn)
    reply = bytearray(build_tcp_packet(REAL, CLIENT4, 80, 5401, b"hello"))
    out = nat.translate_inbound_packet(reply, T(1), CLIENT4, CLIENT6)
    assert out is reply and five_tuple(reply)[1:] == (P1, CLIENT4, 80, 5401) and l4_checksum_ok(reply)
    second = bytearray(build_tcp_packet(CLIENT4, P5, 5401, 443, flags=TCP_SYN))
    assert nat.translate_outbound_packet(second, T(2)) is NatVerdict.SEND
    assert five_tuple(second)[1:] == (CLIENT4, REAL, 5402, 443)
    back = bytearray(build_tcp_packet(REAL, CLIENT4, 443, 5402))
    nat.translate_inbound_packet(back, T(3), CLIENT4, CLIENT6)
    assert five_tuple(back)[1:] == (P5, CLIENT4, 443, 5401)
    rst = bytearray(build_tcp_packet(CLIENT4, P1, 5401, 80, flags=TCP_RST))
    assert nat.translate_outbound_packet(rst, T(4)) is NatVerdict.SEND and five_tuple(rst)[2] == REAL
    late = bytearray(build_tcp_packet(REAL, CLIENT4, 80, 5401))
    assert nat.translate_inbound_packet(late, T(5), CLIENT4, CLIENT6) is DropReason.NAT_SESSION_EXPIRED


def test_icmp_echo_and_ipv6() -> None:
    nat = setup()
    ping = bytearray(build_icmp_echo(CLIENT6, ip("fd00:2021:1111:8000::1"), 77, 1, b"x"))
    assert nat.translate_outbound_packet(ping, T(0)) is NatVerdict.SEND
    assert five_tuple(ping)[1:] == (CLIENT6, ip("2001:db8::1"), 77, 77) and l4_checksum_ok(ping)
    pong = bytearray(build_icmp_echo(ip("2001:db8::1"), CLIENT6, 77, 1, b"x", reply=True))
    nat.translate_inbound_packet(pong, T(1), CLIENT4, CLIENT6)
    assert five_tuple(pong)[1:3] == (ip("fd00:2021:1111:8000::1"), CLIENT6) and l4_checksum_ok(pong)


def test_unreachable_and_unsupported_outbound() -> None:
    nat = setup()
    nat.setup_nat("b.example.com", dns_auth(), [ip("2001:db8::5")], [ip("100.96.0.9")])  # no A record
    for dst in ("100.96.0.9", "100.96.0.77"):
        pkt = bytearray(build_udp_packet(CLIENT4, ip(dst), 1, 53, b""))
        assert nat.translate_outbound_packet(pkt, T(0)) is NatVerdict.UNREACHABLE
    gre = bytearray(build_ip(CLIENT4, P1, 47, b"\x00" * 8))
    assert nat.translate_outbound_packet(gre, T(0)) is DropReason.NAT_UNSUPPORTED_PROTOCOL
    assert nat.translate_outbound_packet(bytearray(b"\x45"), T(0)) is DropReason.MALFORMED_L4


def test_nat_table_full_on_packets() -> None:
    nat = DnsResourceNat(max_sessions=1)
    nat.setup_nat("a.example.com", dns_auth(), [REAL], [P1])
    assert (
        nat.translate_outbound_packet(bytearray(build_udp_packet(CLIENT4, P1, 1, 53, b"")), T(0))
        is NatVerdict.SEND
    )
    pkt = bytearray(build_udp_packet(CLIENT4, P1, 2, 53, b""))
    assert nat.translate_outbound_packet(pkt, T(1)) is DropReason.NAT_TABLE_FULL
    assert _at(nat.poll_timeout()) == T(0) + UDP_TTL and _ended(nat, Instant(T(0) + UDP_TTL)) == 1


def test_inbound_without_session_passes_and_other_protocols_pass() -> None:
    nat = setup()
    cidr_reply = bytearray(build_udp_packet(ip("192.168.1.1"), CLIENT4, 53, 999, b"x"))
    assert nat.translate_inbound_packet(cidr_reply, T(0), CLIENT4, CLIENT6) is cidr_reply
    assert five_tuple(cidr_reply)[1] == ip("192.168.1.1")
    gre = bytearray(build_ip(REAL, CLIENT4, 47, b"\x00" * 8))
    assert nat.translate_inbound_packet(gre, T(0), CLIENT4, CLIENT6) is gre
    redirect = bytearray(build_ip(REAL, CLIENT4, 1, bytes([5, 0, 0, 0]) + bytes(4) + bytes(28)))
    assert (
        nat.translate_inbound_packet(redirect, T(0), CLIENT4, CLIENT6) is DropReason.NAT_UNSUPPORTED_PROTOCOL
    )
    assert nat.translate_inbound_packet(bytearray(b"\x60"), T(0), CLIENT4, CLIENT6) is DropReason.MALFORMED_L4


def test_icmp_error_from_resource_is_readdressed_to_the_client() -> None:
    nat = setup()
    out = bytearray(build_udp_packet(CLIENT4, P1, 4000, 53, b"query"))
    nat.translate_outbound_packet(out, T(0))
    err_pkt = bytearray(build_icmp_error(bytes(out), 3, 4))  # port unreachable "from" the real IP
    got = nat.translate_inbound_packet(err_pkt, T(1), CLIENT4, CLIENT6)
    assert isinstance(got, bytes)
    hdr = parse_ip(got)
    assert (hdr.src, hdr.dst) == (P1, CLIENT4)
    err = parse_icmp_error(got)
    assert err is not None and (err.icmp_type, err.code) == (3, 3)
    assert (err.inner_src, err.inner_dst, err.inner_sport, err.inner_dport) == (CLIENT4, P1, 4000, 53)
    # Once the session ended, such errors are dropped.
    nat.table.translate_incoming(L4_UDP, 4000, REAL, T(2))
    nat.handle_timeout(Instant(T(2) + UDP_TTL))
    assert (
        nat.translate_inbound_packet(err_pkt, Instant(T(2) + UDP_TTL), CLIENT4, CLIENT6)
        is DropReason.NAT_SESSION_EXPIRED
    )
    other = bytearray(build_icmp_error(build_udp_packet(CLIENT4, ip("192.0.2.1"), 1, 2, b""), 3, 4))
    assert nat.translate_inbound_packet(other, T(400), CLIENT4, CLIENT6) is other
