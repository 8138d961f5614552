"""Changing a host in place: replacing the component it drives (a restarted process) and moving it to new
addresses (a roaming machine)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.errors import UsageError
from sim.contract import ContractViolation, Rule
from sim.host import Host
from sim.net import LinkProfile
from sim.trace import Trace
from sim.world import World
from tests.sim.toys import BusyLoop, ImpurePoll, NeverConsumed, RaisesOnInput, Sender, Sink, Ticker

A4, B4, C4 = IPv4Address("203.0.113.1"), IPv4Address("203.0.113.2"), IPv4Address("203.0.113.3")


def test_the_new_component_is_driven_and_the_old_one_no_more() -> None:
    world = World(1, trace=Trace(keep=True))
    old = Ticker(millis(10), millis(10), 100)
    host = world.add_host(Host("t", old, ipv4=A4))
    world.run_until(Instant(millis(35)))
    new = Ticker(millis(50), millis(5), 3)
    world.replace_component(host, new)
    world.run_until(Instant(secs(1)))
    assert old.fired == [millis(10), millis(20), millis(30)]  # its wake at 40 ms was cancelled
    assert new.fired == [millis(50), millis(55), millis(60)]  # the new one's deadlines are honoured
    assert host.component is new and host.checker.component is new
    timeouts = [(r["t"], r["host"]) for r in world.trace.records if r["ev"] == "timeout"]
    assert timeouts == [(t, "t") for t in old.fired + new.fired]  # traced under the host's name


def test_a_new_component_is_woken_only_for_its_own_deadlines() -> None:
    world = World(1)
    old = Ticker(millis(10), millis(10), 100)
    host = world.add_host(Host("t", old, ipv4=A4))
    world.run_until(Instant(millis(15)))
    world.replace_component("t", Sink())  # no deadline: the old wake at 20 ms is skipped
    world.run_until(Instant(secs(1)))
    assert old.fired == [millis(10)] and world.next_event_at() is None
    due_now = Ticker(secs(1), millis(1), 1)
    world.replace_component(host, due_now)
    world.run_until(Instant(secs(1)))
    assert due_now.fired == [secs(1)]  # a first deadline at the replacement instant is served then
    with pytest.raises(ContractViolation) as info:
        world.replace_component(host, Ticker(millis(15), millis(1), 1))
    assert info.value.rule is Rule.R4 and "in the past" in info.value.detail


def test_datagrams_reach_the_component_the_host_drives_when_they_arrive() -> None:
    world = World(1)
    old, new = Sink(), Sink()
    sink = world.add_host(Host("sink", old, ipv4=B4, udp_ports=(7,), link=LinkProfile(latency=0)))
    sender = Sender(SocketAddr(B4, 7), millis(1), millis(1), 5)
    world.add_host(Host("sender", sender, ipv4=A4, udp_ports=(9,), link=LinkProfile(latency=millis(1))))
    world.run_until(Instant(millis(4)))
    world.replace_component(sink, new)
    world.run_until(Instant(secs(1)))
    assert [(t, p) for t, _, _, p in old.datagrams] == [
        (millis(2), b"msg0"),
        (millis(3), b"msg1"),
        (millis(4), b"msg2"),
    ]
    # Packets in flight at the replacement reach the new component (same machine, same port).
    assert [(t, p) for t, _, _, p in new.datagrams] == [(millis(5), b"msg3"), (millis(6), b"msg4")]


def test_the_new_component_gets_a_fresh_contract_checker() -> None:
    world = World(1, purity_every=3)
    host = world.add_host(Host("t", Ticker(millis(10), millis(10), 100), ipv4=A4, udp_ports=(9,)))
    world.run_until(Instant(millis(35)))
    before = host.checker
    world.replace_component(host, Ticker(millis(50), millis(5), 3))
    assert host.checker is not before and host.checker.purity_every == 3
    assert host.checker.last_now == millis(35)  # R2 counts from the replacement
    with pytest.raises(ContractViolation) as info:
        host.checker.check_now(Instant(millis(34)))
    assert info.value.rule is Rule.R2 and info.value.component == "t"


def test_r4_is_checked_on_the_new_component_at_once() -> None:
    world = World(1, purity_every=1)
    host = world.add_host(Host("t", Ticker(0, 1, 0), ipv4=A4))
    with pytest.raises(ContractViolation) as info:
        world.replace_component(host, ImpurePoll())
    assert info.value.rule is Rule.R4 and "not pure" in info.value.detail


@pytest.mark.parametrize(
    ("comp", "detail"),
    [(NeverConsumed(millis(20), millis(10), 3), "still pending"), (BusyLoop(), "busy loop")],
)
def test_r5_is_checked_on_the_new_component(comp: Ticker, detail: str) -> None:
    world = World(1)
    host = world.add_host(Host("t", Ticker(millis(1), millis(1), 1000), ipv4=A4))
    world.run_until(Instant(millis(3)))
    world.replace_component(host, comp)
    with pytest.raises(ContractViolation) as info:
        world.run_until(Instant(secs(1)))
    assert info.value.rule is Rule.R5 and detail in info.value.detail


def test_r6_is_checked_on_the_new_component() -> None:
    world = World(1)
    host = world.add_host(Host("t", Sink(), ipv4=B4, udp_ports=(7,)))
    src = world.add_host(Host("src", Sink(), ipv4=A4, udp_ports=(9,)))
    world.replace_component(host, RaisesOnInput())
    world.send_udp(src, None, SocketAddr(B4, 7), b"\xff")
    with pytest.raises(ContractViolation) as info:
        world.run_until(Instant(secs(1)))
    assert info.value.rule is Rule.R6


def test_an_exited_host_runs_again_with_a_new_component() -> None:
    world = World(1)
    host = world.add_host(
        Host("s", Sender(SocketAddr(B4, 7), millis(1), millis(1), 1, exit_after=True), ipv4=A4)
    )
    world.run_until(Instant(millis(5)))
    assert host.exited is not None
    again = Ticker(millis(10), millis(10), 2)
    world.replace_component(host, again)
    world.run_until(Instant(secs(1)))
    assert host.exited is None and again.fired == [millis(10), millis(20)]


def test_only_hosts_of_the_world_can_have_their_component_replaced() -> None:
    world = World(1)
    host = world.add_host(Host("t", Ticker(0, 1, 0), ipv4=A4))
    with pytest.raises(UsageError):
        world.replace_component("nobody", Ticker(0, 1, 0))
    with pytest.raises(UsageError):
        world.replace_component(Host("t", Ticker(0, 1, 0), ipv4=B4), Ticker(0, 1, 0))  # a namesake
    world.remove_host("t")
    with pytest.raises(UsageError):
        world.replace_component(host, Ticker(0, 1, 0))


# --- moving a host --------------------------------------------------------------------------------------


def test_a_moved_host_is_reached_at_its_new_address_and_its_old_one_is_stale() -> None:
    world = World(1, trace=Trace(keep=True))
    sink = Sink()
    moving = world.add_host(Host("m", sink, ipv4=B4, udp_ports=(7,), link=LinkProfile(latency=millis(3))))
    src = world.add_host(Host("src", Sink(), ipv4=A4, udp_ports=(9,), link=LinkProfile(latency=millis(1))))
    world.partition(["m"], ["elsewhere"])
    world.readdress(moving, ipv4=C4)
    assert moving.ipv4 == C4 and moving.addresses() == [C4]
    world.send_udp(src, None, SocketAddr(B4, 7), b"old")
    world.send_udp(src, None, SocketAddr(C4, 7), b"new")
    world.run_until(Instant(secs(1)))
    assert [(t, p) for t, _, _, p in sink.datagrams] == [(millis(4), b"new")]  # the link stayed
    assert [r["reason"] for r in world.trace.records if r["ev"] == "drop"] == ["stale"]
    assert world.network.partitions() == [("elsewhere", "m")]


def test_a_host_cannot_move_to_an_address_in_use_or_stale() -> None:
    world = World(1)
    moving = world.add_host(Host("m", Sink(), ipv4=B4))
    world.add_host(Host("other", Sink(), ipv4=A4))
    with pytest.raises(UsageError):
        world.readdress(moving, ipv4=A4)
    assert moving.ipv4 == B4  # nothing changed
    world.readdress("m", ipv4=C4)
    with pytest.raises(UsageError):
        world.readdress(moving, ipv4=B4)  # its own old address is stale now
