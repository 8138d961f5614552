"""Flow records (Firezone's ``rust/connlib/tunnel/src/gateway/flow_tracker.rs``)."""

from __future__ import annotations

import uuid
from ipaddress import ip_address
from typing import Any

import pytest

from gateway_core.clock import Instant, secs
from gateway_core.contract import Deadline
from gateway_core.errors import UsageError
from gateway_core.policy.filters import L4_ICMP, L4_TCP, L4_UDP
from gateway_core.policy.flows import FLOW_TIMEOUT, ClientProperties, FlowTracker, OuterContext

C, R = uuid.UUID(int=1), uuid.UUID(int=2)
CLIENT, REAL = ip_address("100.64.0.1"), ip_address("10.0.0.1")
OUTER = OuterContext(ip_address("198.51.100.7"), ip_address("203.0.113.1"), 40000, 52625)
PROPS = ClientProperties(version="1.5.0", actor_email="a@example.com")
UTC0 = 1_700_000_000 * 10**9


def out(ft: FlowTracker, t: int, proto: int = L4_TCP, **kw: Any) -> None:
    args: dict[str, Any] = dict(
        proto=proto,
        client_id=C,
        client=PROPS,
        resource_id=R,
        resource_name="res",
        resource_address="*.example.com",
        domain="a.example.com",
        src_ip=CLIENT,
        dst_ip=REAL,
        src_port=5401,
        dst_port=80,
        payload_len=10,
        outer=OUTER,
    )
    args.update(kw)
    ft.record_outbound(Instant(t), **args)


def inn(ft: FlowTracker, t: int, proto: int = L4_TCP, **kw: Any) -> None:
    args: dict[str, Any] = dict(
        proto=proto,
        client_id=C,
        resource_id=R,
        src_ip=REAL,
        dst_ip=CLIENT,
        src_port=80,
        dst_port=5401,
        payload_len=100,
    )
    args.update(kw)
    ft.record_inbound(Instant(t), **args)


def test_tcp_flow_counts_and_completes_on_fin_both_ways() -> None:
    ft = FlowTracker(Instant(0), UTC0)
    out(ft, secs(1), syn=True, payload_len=0)
    inn(ft, secs(2))
    out(ft, secs(3), payload_len=20)
    out(ft, secs(4), fin=True, payload_len=0)
    inn(ft, secs(5), fin=True, payload_len=0)
    assert ft.poll_completed() is None
    assert ft.poll_timeout() == Deadline(Instant(secs(5)), "flow timeout")
    ft.handle_timeout(Instant(secs(5)))
    f = ft.poll_completed()
    assert f is not None and ft.poll_completed() is None
    assert (f.protocol, f.client_id, f.resource_id, f.inner_domain) == ("tcp", C, R, "a.example.com")
    assert (f.tx_packets, f.tx_bytes, f.rx_packets, f.rx_bytes) == (3, 20, 2, 100)
    assert (f.start, f.end, f.last_packet) == (UTC0 + secs(1), UTC0 + secs(5), UTC0 + secs(5))
    assert (f.inner_src_ip, f.inner_dst_ip, f.inner_src_port, f.inner_dst_port) == (CLIENT, REAL, 5401, 80)
    assert f.outer == OUTER and f.client == PROPS and f.resource_address == "*.example.com"


def test_fin_or_rst_never_creates_and_inbound_never_creates() -> None:
    ft = FlowTracker(Instant(0), UTC0)
    out(ft, 1, fin=True)
    out(ft, 2, rst=True)
    inn(ft, 3)
    inn(ft, 4, proto=L4_UDP)
    out(ft, 5, proto=L4_ICMP)
    assert not ft.tcp and not ft.udp and ft.poll_timeout() is None


def test_rst_either_way_completes_immediately() -> None:
    ft = FlowTracker(Instant(0), UTC0)
    out(ft, 1)
    inn(ft, 2, rst=True)
    f = ft.poll_completed()
    assert f is not None and f.end == UTC0 + 2 and not ft.tcp
    out(ft, 3)
    out(ft, 4, rst=True)
    f = ft.poll_completed()
    assert f is not None and f.tx_packets == 2


def test_split_on_new_syn_and_on_context_change() -> None:
    ft = FlowTracker(Instant(0), UTC0)
    out(ft, 1, syn=True)
    out(ft, 2, syn=True)
    first = ft.poll_completed()
    assert first is not None and first.tx_packets == 1 and len(ft.tcp) == 1
    moved = OuterContext(ip_address("198.51.100.8"), OUTER.dst_ip, 40001, 52625)
    out(ft, 3, proto=L4_UDP, dst_port=53)
    out(ft, 4, proto=L4_UDP, dst_port=53, outer=moved)
    split = ft.poll_completed()
    assert split is not None and split.protocol == "udp" and split.outer == OUTER
    assert next(iter(ft.udp.values())).context == moved


def test_udp_idle_timeout_is_strictly_more_than_two_minutes() -> None:
    ft = FlowTracker(Instant(0), UTC0)
    out(ft, 0, proto=L4_UDP)
    inn(ft, secs(60), proto=L4_UDP)
    ft.handle_timeout(Instant(secs(60) + FLOW_TIMEOUT))
    assert ft.poll_completed() is None
    d = ft.poll_timeout()
    due = None if d is None else d.at
    assert due == secs(60) + FLOW_TIMEOUT + 1
    ft.handle_timeout(Instant(due or 0))
    f = ft.poll_completed()
    assert f is not None and f.rx_packets == 1 and f.end == UTC0 + due and f.last_packet == UTC0 + secs(60)
    assert ft.poll_timeout() is None


def test_disabled_bounded_and_remove_client() -> None:
    off = FlowTracker(Instant(0), UTC0, enabled=False)
    out(off, 1)
    assert not off.tcp
    ft = FlowTracker(Instant(0), UTC0, max_active=2)
    for port in (1, 2, 3):
        out(ft, port, src_port=port)
    assert len(ft.tcp) == 2 and ft.not_tracked == 1
    out(ft, 5, src_port=1, client_id=uuid.UUID(int=9))
    ft.remove_client(C, Instant(6))
    assert len(ft.completed) == 2 and not ft.tcp
    with pytest.raises(UsageError):
        out(ft, 1)
