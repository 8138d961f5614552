"""Each contract check of sim/contract.py, triggered by a deliberately broken toy component."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.contract import Deadline
from sim.clock import VirtualClock
from sim.contract import MAX_WAKEUPS_PER_INSTANT, ContractChecker, ContractViolation, Rule
from sim.host import Host
from sim.world import World
from tests.sim.toys import (
    BusyLoop,
    ImpurePoll,
    NeverConsumed,
    PastDeadline,
    PollQueuesCommand,
    RaisesOnInput,
    Sender,
    SlottedCache,
    SneakyPoll,
    Ticker,
)

A = IPv4Address("203.0.113.1")
B = IPv4Address("203.0.113.2")


def _world_with(comp: object, name: str = "toy") -> tuple[World, Host]:
    world = World(1, purity_every=1)
    host = Host(name, comp, ipv4=A, udp_ports=(9,))  # type: ignore[arg-type]
    world.add_host(host)
    return world, host


def test_well_behaved_component_passes_every_check() -> None:
    comp = Ticker(millis(10), millis(10), 50)
    world, _ = _world_with(comp)
    world.run_until(Instant(secs(1)))
    assert comp.fired == [millis(10) * k for k in range(1, 51)]


def test_r2_time_going_backwards_is_caught() -> None:
    checker = ContractChecker("toy", Ticker(0, 1, 0))
    checker.check_now(Instant(100))
    checker.check_now(Instant(100))  # the same instant again is fine
    with pytest.raises(ContractViolation) as info:
        checker.check_now(Instant(99))
    assert info.value.rule is Rule.R2
    assert info.value.component == "toy" and info.value.now == 99


def test_r2_a_world_whose_clock_was_rewound_is_caught() -> None:
    comp = Ticker(millis(10), millis(10), 3)
    world, host = _world_with(comp)
    world.run_until(Instant(secs(1)))
    world.clock = VirtualClock(start=millis(25))  # a driver bug: time jumps back before the last tick (30 ms)
    with pytest.raises(ContractViolation) as info:
        world.drive(host, lambda now: None)
    assert info.value.rule is Rule.R2


def test_r4_impure_poll_timeout() -> None:
    with pytest.raises(ContractViolation) as info:
        _world_with(ImpurePoll(), "impure")
    assert info.value.rule is Rule.R4
    assert "not pure" in info.value.detail
    assert "'impure'" in str(info.value) and "R4" in str(info.value)


@pytest.mark.parametrize("comp", [SneakyPoll(), SlottedCache()], ids=["dict", "slots"])
def test_r4_poll_timeout_that_changes_state_with_a_stable_answer(comp: object) -> None:
    with pytest.raises(ContractViolation) as info:
        _world_with(comp)
    assert info.value.rule is Rule.R4
    assert "changed the component's state" in info.value.detail
    assert ("polls" if isinstance(comp, SneakyPoll) else "seen") in info.value.detail


def test_r4_poll_timeout_that_queues_a_command() -> None:
    with pytest.raises(ContractViolation) as info:
        _world_with(PollQueuesCommand(millis(10), millis(10), 1))
    assert info.value.rule is Rule.R4
    assert "queued a command" in info.value.detail


def test_r4_deadline_in_the_past() -> None:
    world, _ = _world_with(PastDeadline(millis(10), millis(10), 3))
    with pytest.raises(ContractViolation) as info:
        world.run_until(Instant(secs(1)))
    assert info.value.rule is Rule.R4
    assert info.value.now == millis(10)
    assert "in the past" in info.value.detail


def test_r5_deadline_not_consumed() -> None:
    comp = NeverConsumed(millis(20), millis(10), 3)
    world, _ = _world_with(comp)
    with pytest.raises(ContractViolation) as info:
        world.run_until(Instant(secs(1)))
    assert info.value.rule is Rule.R5
    assert info.value.now == millis(20)
    assert "still pending" in info.value.detail
    assert comp.fired == [millis(20)]


def test_r5_busy_loop_of_zero_delay_wakeups() -> None:
    comp = BusyLoop()
    world, _ = _world_with(comp)
    with pytest.raises(ContractViolation) as info:
        world.run_until(Instant(secs(1)))
    assert info.value.rule is Rule.R5
    assert "busy loop" in info.value.detail
    assert comp.fired == [millis(5)] * MAX_WAKEUPS_PER_INSTANT


def test_a_few_wakeups_at_one_instant_are_allowed() -> None:
    comp = BusyLoop()
    checker = ContractChecker("chain", comp, max_wakeups=4)
    now = Instant(millis(5))
    for _ in range(3):
        served = comp.poll_timeout()
        comp.handle_timeout(now)
        checker.settle(now, served)
    with pytest.raises(ContractViolation):
        served = comp.poll_timeout()
        comp.handle_timeout(now)
        checker.settle(now, served)


def test_r6_exception_from_network_input() -> None:
    world = World(3, purity_every=1)
    world.add_host(Host("victim", RaisesOnInput(), ipv4=A, udp_ports=(9,)))
    attacker = Sender(SocketAddr(A, 9), millis(1), millis(1), 1)
    world.add_host(Host("attacker", attacker, ipv4=B, udp_ports=(10,)))
    world.run_until(Instant(secs(1)))  # b"msg0" is harmless
    bad = world.hosts["attacker"]
    world.drive(bad, lambda now: world.send_udp(bad, None, SocketAddr(A, 9), b"\xff"))
    with pytest.raises(ContractViolation) as info:
        world.run_until(Instant(secs(2)))
    assert info.value.rule is Rule.R6
    assert info.value.component == "victim"
    assert "IndexError" in info.value.detail
    assert isinstance(info.value.__cause__, IndexError)


def test_violation_message_names_component_time_and_rule() -> None:
    v = ContractViolation("gw", secs(2) + millis(5), Rule.R5, "details")
    assert str(v) == "R5 (deadlines are consumed) violated by 'gw' at 2.005s (2005000000 ns): details"


def test_settle_returns_the_next_deadline() -> None:
    comp = Ticker(millis(10), millis(10), 2)
    checker = ContractChecker("t", comp)
    assert checker.settle(Instant(0), None) == Deadline(Instant(millis(10)), "tick")


class _ImpureLater(Ticker):
    """Pure until ``armed``, then every ``poll_timeout`` call moves the deadline (R4)."""

    def __init__(self) -> None:
        super().__init__(millis(10), millis(10), 5)
        self.armed = False
        self.calls = 0

    def poll_timeout(self) -> Deadline | None:
        if self.armed:
            self.calls += 1
            return Deadline(Instant(millis(10) + self.calls), "tick")
        return super().poll_timeout()


def test_sampled_purity_check_runs_on_the_first_and_every_nth_settle() -> None:
    comp = _ImpureLater()
    checker = ContractChecker("late", comp, purity_every=4)
    checker.settle(Instant(0), None)  # settle 0: full check, pure so far
    comp.armed = True
    for _ in range(3):  # settles 1-3 poll once: the impurity goes unseen
        checker.settle(Instant(0), None)
    with pytest.raises(ContractViolation) as info:  # settle 4: full check again
        checker.settle(Instant(0), None)
    assert info.value.rule is Rule.R4
    assert "not pure" in info.value.detail


def test_sampled_settles_still_check_past_deadlines_and_leaked_commands() -> None:
    comp = PollQueuesCommand(millis(10), millis(10), 1)
    checker = ContractChecker("leak", comp, purity_every=1_000)
    with pytest.raises(ContractViolation) as info:
        checker.settle(Instant(0), None)
    assert "queued a command" in info.value.detail
    past = PastDeadline(millis(10), millis(10), 3)
    checker = ContractChecker("past", past, purity_every=1_000)
    checker.settle(Instant(0), None)  # the full check: the deadline is still ahead
    past.handle_timeout(Instant(millis(10)))
    with pytest.raises(ContractViolation) as info:
        checker.settle(Instant(millis(10)), None)  # a sampled settle
    assert "in the past" in info.value.detail


def test_world_hands_its_purity_period_to_every_host() -> None:
    world = World(1, purity_every=3)
    host = world.add_host(Host("toy", Ticker(0, 1, 0), ipv4=A, udp_ports=(9,)))
    assert host.checker.purity_every == 3
    with pytest.raises(ValueError):
        ContractChecker("bad", Ticker(0, 1, 0), purity_every=0)


# --- kept deadlines (decision 0140) ------------------------------------------------------------------


def _connected_gateway(seed: int = 3) -> tuple[World, object]:
    from sim.gateway_world import CIDR_RESOURCE, build_gateway_world

    world = World(seed, purity_every=1)
    gw = build_gateway_world(seed, world=world)
    assert gw.start()
    gw.grant(0, CIDR_RESOURCE)
    assert gw.run_until_connected(0)
    return world, gw


def test_kept_deadlines_equal_the_recomputed_ones_in_a_running_gateway_world() -> None:
    world, gw = _connected_gateway()
    gateway = gw.gateway  # type: ignore[attr-defined]
    world.run_until(Instant(world.now + secs(30)))  # every settle compared them (purity_every=1)
    assert gateway.poll_timeout() == gateway.poll_timeout_recomputed()
    assert gateway.node.connections  # the client is still connected: the check saw a live connection


@pytest.mark.parametrize("how", ["too late", "missing"])
def test_stale_kept_deadline_of_a_connection_is_an_r4_violation(how: str) -> None:
    """The node keeps each connection's deadline in a heap; make the client's kept entry stale on purpose
    (as a bug in the scheduling would: kept an hour late, or lost) and the checker fails the step instead
    of letting a timer drift. (A kept time that is too *early* is the allowed lazy kind: it is a lower
    bound, rechecked when it comes, and ``poll_timeout()`` still reports the exact deadline.)"""
    world, gw = _connected_gateway()
    gateway = gw.gateway  # type: ignore[attr-defined]
    checker = gw.gateway_host.checker  # type: ignore[attr-defined]
    node = gateway.node
    (cid,) = node.connections
    heap = node._timers.heap
    true = node.connections[cid].poll_timeout()
    assert true is not None and heap.kept(cid) is not None
    checker.settle(world.now, None)  # consistent so far
    heap.discard(cid)
    if how == "too late":
        heap.schedule(cid, true.at + secs(3600))  # the connection's timers would be missed for an hour
    with pytest.raises(ContractViolation) as info:
        checker.settle(world.now, None)
    assert info.value.rule is Rule.R4 and "stale kept deadline" in info.value.detail


def test_stale_kept_deadline_of_a_client_policy_is_an_r4_violation() -> None:
    """The same for the policy side: a client's NAT deadline moved earlier without the sweep's heap
    hearing of it (the table's watch is cut, as a forgotten notification would)."""
    world, gw = _connected_gateway()
    gateway = gw.gateway  # type: ignore[attr-defined]
    checker = gw.gateway_host.checker  # type: ignore[attr-defined]
    peers = gateway.peers
    (client,) = peers.clients
    table = peers.clients[client].nat.table
    checker.settle(world.now, None)
    table._watch = None
    table._due_at(Instant(world.now + secs(2)))  # as a new NAT session does, unseen by the heap
    with pytest.raises(ContractViolation) as info:
        checker.settle(world.now, None)
    assert info.value.rule is Rule.R4 and "stale kept deadline" in info.value.detail


def test_gateway_debug_mode_raises_on_a_stale_kept_deadline() -> None:
    """``GatewayConfig(check_deadlines=True)`` (the daemon's ``FIREZONE_CHECK_DEADLINES``): the gateway
    itself compares on every ``poll_timeout``."""
    import dataclasses

    _, gw = _connected_gateway()
    gateway = gw.gateway  # type: ignore[attr-defined]
    gateway._config = dataclasses.replace(gateway.config, check_deadlines=True)
    assert gateway.poll_timeout() == gateway.poll_timeout_recomputed()
    node = gateway.node
    (cid,) = node.connections
    node._timers.heap.discard(cid)
    with pytest.raises(AssertionError, match="stale"):
        gateway.poll_timeout()
