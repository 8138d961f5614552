"""The driving contract (R2, R4, R5) on the policy's timed parts: the NAT table, the flow tracker, the
DNS forwarder and the peers' expiry sweep, under random sequences of inputs and time steps."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.dns.forwarding import DnsForwarder, DnsQueryReceived, DnsUpstreamResponse, ForwardDnsQuery
from gateway_core.dns.servers import DnsTransport
from gateway_core.errors import UsageError
from gateway_core.policy.filters import L4_ICMP, L4_TCP, L4_UDP
from gateway_core.policy.flows import FlowTracker, OuterContext
from gateway_core.policy.nat import NatTable
from gateway_core.policy.peers import Peers
from gateway_core.policy.resources import CidrResource

steps = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(0, 4), st.booleans()), max_size=40
)


@settings(max_examples=150)
@given(steps)
def test_nat_table_deadlines(seq: list[tuple[int, int, int, bool]]) -> None:
    t = NatTable(max_sessions=4)
    now = 0
    proxy, real = ip_address("100.96.0.1"), ip_address("10.0.0.1")
    for op, dt, value, rst in seq:
        now += dt * secs(1)
        kind = (L4_TCP, L4_UDP, L4_ICMP)[value % 3]
        if op == 0:
            t.translate_outgoing(kind, value, proxy, real, Instant(now), rst)
        elif op == 1:
            t.translate_incoming(kind, value, real, Instant(now), rst)
        else:
            t.handle_timeout(Instant(now))
            due = t.poll_timeout()
            assert due is None or due.at > now  # R5: nothing due is left pending
            assert all(now - s.last_seen < s.ttl for s in t.sessions())
        due = t.poll_timeout()
        assert due is None or due.at >= now  # R4


@settings(max_examples=150)
@given(steps)
def test_flow_tracker_deadlines(seq: list[tuple[int, int, int, bool]]) -> None:
    ft = FlowTracker(Instant(0), 0)
    outer = OuterContext(IPv4Address("198.51.100.1"), IPv4Address("203.0.113.1"), 1, 2)
    c, r = uuid.UUID(int=1), uuid.UUID(int=2)
    src, dst = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
    now = 0
    for op, dt, port, flag in seq:
        now += dt * secs(1)
        if op == 0:
            ft.record_outbound(
                Instant(now),
                proto=L4_TCP,
                client_id=c,
                client=None,
                resource_id=r,
                resource_name="n",  # type: ignore[arg-type]
                resource_address="a",
                domain=None,
                src_ip=src,
                dst_ip=dst,
                src_port=port,
                dst_port=80,
                payload_len=1,
                outer=outer,
                syn=flag,
                fin=not flag and port == 0,
            )
        elif op == 1:
            ft.record_inbound(
                Instant(now),
                proto=L4_TCP,
                client_id=c,
                resource_id=r,
                src_ip=dst,
                dst_ip=src,
                src_port=80,
                dst_port=port,
                payload_len=1,
                fin=flag,
            )
        else:
            ft.handle_timeout(Instant(now))
            due = ft.poll_timeout()
            assert due is None or due.at > now
            assert all(now - f.last <= secs(120) and not (f.fin_rx and f.fin_tx) for f in ft.tcp.values())
        due = ft.poll_timeout()
        assert due is None or due.at >= now


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3000)), max_size=30))
def test_dns_forwarder_deadlines(seq: list[tuple[int, int]]) -> None:
    f = DnsForwarder(lambda ip, name: True)
    local, remote = SocketAddr(IPv4Address("100.64.0.9"), 53535), SocketAddr(IPv4Address("100.64.0.1"), 5)
    q = dns.message.make_query("a.example.com", "TXT").to_wire()
    sent: list[int] = []
    now = 0
    for op, dt in seq:
        now += dt * 1_000_000
        if op == 0:
            f.handle_query(Instant(now), DnsQueryReceived(local, remote, DnsTransport.UDP, q))
        elif op == 1 and sent:
            resp = dns.message.make_response(dns.message.from_wire(q)).to_wire()
            f.handle_upstream_response(Instant(now), DnsUpstreamResponse(sent.pop(0), resp))
        else:
            f.handle_timeout(Instant(now))
            d = f.poll_timeout()
            assert d is None or d.at > now
        while (cmd := f.poll_command()) is not None:
            if isinstance(cmd, ForwardDnsQuery):
                sent.append(cmd.query_id)
        d = f.poll_timeout()
        assert d is None or d.at >= now


def test_peers_sweep_deadline_and_time_going_backwards() -> None:
    p = Peers()
    p.set_tunnel_ips(IPv4Address("100.64.0.9"), IPv6Address("fd00:2021:1111::9"))
    p.allow_access(
        uuid.UUID(int=1),
        IPv4Address("100.64.0.1"),
        IPv6Address("fd00:2021:1111::1"),
        CidrResource(uuid.UUID(int=2), "n", ip_network("10.0.0.0/8"), ()),
        4,  # expires at 4 s on the wall clock (here the same as ``now``)
    )
    p.handle_timeout(Instant(0))  # starts the grid: ticks at 1 s, 2 s, ...
    for k in range(1, 4):
        # nothing is due before 4 s: the ticks at 1-3 s are skipped, the deadline is the tick at 4 s
        d = p.poll_timeout()
        assert d is not None and d.at == secs(4) and d.reason == "resource expiry"
        assert d == p.poll_timeout_recomputed()
        p.handle_timeout(Instant(k * secs(1)))
        assert p.poll_removed() is None
    p.handle_timeout(Instant(secs(4)))
    assert p.poll_removed() == uuid.UUID(int=1) and p.poll_removed() is None
    assert p.poll_timeout() is None  # nothing left to expire: no more wake-ups
    with pytest.raises(UsageError):
        p.handle_timeout(Instant(secs(3)))
    t = NatTable()
    t.handle_timeout(Instant(10))
    with pytest.raises(UsageError):
        t.handle_timeout(Instant(9))
    ft = FlowTracker(Instant(10), 0)
    with pytest.raises(UsageError):
        ft.handle_timeout(Instant(9))
