"""Property tests: random schedules for the TURN allocation and the ICE agent keep the contract.

Invariants after every step: no exception, no phase/state change outside the transition tables,
``poll_timeout`` never in the past, nothing due left after ``handle_timeout`` (R5), and no burst of
requests (a spin would send many datagrams at one instant).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.ice import candidate as cand
from tests.unit.test_ice_agent import CL, GW, Link, agents
from tests.unit.test_turn_allocation import PEER, Harness

MAX_BURST = 20
"""More datagrams than this from one allocation at one instant would be a spin."""

turn_actions = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.integers(1, 400_000)),  # milliseconds
        st.tuples(st.just("drop"), st.booleans()),
        st.tuples(st.just("bind"), st.integers(0, 5)),
        st.tuples(st.just("refresh"), st.just(0)),
        st.tuples(st.just("stale"), st.just(0)),
        st.tuples(st.just("send"), st.integers(0, 5)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["firezone", "coturn"]), turn_actions)
def test_allocation_random_schedule(flavour: str, actions: list[tuple[str, object]]) -> None:
    h = Harness(flavour)
    h.pump()
    for what, arg in actions:
        if what == "wait":
            assert isinstance(arg, int)
            target = h.now + millis(arg)
            while (d := h.alloc.poll_timeout()) is not None and d.at <= target:
                assert d.at >= h.now
                h.now = d.at
                before = len(h.sent)
                h.alloc.handle_timeout(h.now)
                after = h.alloc.poll_timeout()
                assert after is None or after.at > h.now
                h.pump()
                assert len(h.sent) - before <= MAX_BURST
            h.now = Instant(max(h.now, target))
        elif what == "drop":
            h.server.drop_all = bool(arg)
        elif what == "bind":
            assert isinstance(arg, int)
            h.alloc.bind_channel(SocketAddr(PEER.ip, 40000 + arg), h.now)
            h.pump()
        elif what == "refresh":
            h.alloc.refresh(h.now)
            h.pump()
        elif what == "stale":
            h.server._nonces.clear()
        else:
            assert isinstance(arg, int)
            t = h.alloc.encapsulate(SocketAddr(PEER.ip, 40000 + arg), b"data", h.now)
            if t is not None:
                h.deliver(h.server.handle(h.now, t.dst, h.local_for(t.dst), t.payload))
            h.pump()
        d = h.alloc.poll_timeout()
        assert d is None or d.at >= h.now
    assert h.alloc.stats.counters["turn.unexpected_transition"] == 0


ice_actions = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.integers(1, 30_000)),
        st.tuples(st.just("block"), st.booleans()),
        st.tuples(st.just("add_remote"), st.integers(0, 3)),
        st.tuples(st.just("invalidate"), st.integers(0, 3)),
    ),
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(ice_actions)
def test_agent_random_schedule(actions: list[tuple[str, object]]) -> None:
    gw, cl = agents()
    gw.add_local_candidate(cand.host(GW))
    cl.add_local_candidate(cand.host(CL))
    cl.add_remote_candidate(cand.host(GW))
    link = Link(gw, cl)
    extra = [cand.server_reflexive(SocketAddr(IPv4Address("198.51.100.2"), 6000 + i), CL) for i in range(4)]
    for what, arg in actions:
        if what == "wait":
            assert isinstance(arg, int)
            link.run_until(link.now + millis(arg))
            for a in (gw, cl):
                d = a.poll_timeout()
                assert d is None or d.at >= link.now
        elif what == "block":
            link.blocked = bool(arg)
        elif what == "add_remote":
            assert isinstance(arg, int)
            gw.add_remote_candidate(cand.host(CL) if arg == 0 else extra[arg])
            link.step()
        else:
            assert isinstance(arg, int)
            gw.invalidate_candidate(cand.host(CL) if arg == 0 else extra[arg])
            gw.handle_timeout(link.now)
            link.step()
    link.run_until(link.now + secs(1))
    assert gw.stats.counters["ice.unexpected_transition"] == 0
    assert len(gw.pairs) <= 100
