"""What an ICE agent of either role sends when a connectivity check arrives (decision 0175), as str0m
``44ab8e3`` does: a check that forms a new pair (from an address the agent knows no candidate for: a
peer-reflexive candidate) makes that pair due at once, its first check leaves on the next
``handle_timeout`` (``src/ice/agent.rs`` ``stun_server_handle_request``, ``src/ice/pair.rs``
``next_binding_attempt``: no attempt yet, due now); a check on a pair that is already being checked
changes nothing (str0m does not re-queue it as RFC 8445 §7.3.1.4 describes)."""

from __future__ import annotations

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis
from gateway_core.ice import candidate as c
from gateway_core.ice.agent import IceAgent
from gateway_core.ice.pair import DEFAULT_TIMING
from gateway_core.wire import stun
from gateway_core.wire.stun import Attr, Class, StunMessage
from tests.unit.test_ice_agent import CL, GW, agents

ROLES = ["controlled", "controlling"]


def receiver_and_sender(role: str) -> tuple[IceAgent, SocketAddr, IceAgent, SocketAddr]:
    """The agent under test (``role``) with its host candidate, and its peer with its own; the peer
    knows the receiver's candidate, the receiver knows none of the peer's."""
    gw, cl = agents()
    receiver, raddr, sender, saddr = (gw, GW, cl, CL) if role == "controlled" else (cl, CL, gw, GW)
    receiver.add_local_candidate(c.host(raddr))
    sender.add_local_candidate(c.host(saddr))
    sender.add_remote_candidate(c.host(raddr))
    return receiver, raddr, sender, saddr


def first_check(agent: IceAgent, now: Instant) -> StunMessage:
    agent.handle_timeout(now)
    t = agent.poll_transmit()
    assert t is not None
    return stun.decode(t.payload)


def drain(agent: IceAgent) -> list[tuple[SocketAddr, StunMessage]]:
    out = []
    while (t := agent.poll_transmit()) is not None:
        out.append((t.dst, stun.decode(t.payload)))
    return out


@pytest.mark.parametrize("role", ROLES)
def test_a_check_from_an_unknown_address_is_answered_and_checked_back_at_once(role: str) -> None:
    receiver, raddr, sender, saddr = receiver_and_sender(role)
    receiver.handle_timeout(Instant(0))
    assert drain(receiver) == []  # no remote candidate yet: nothing to check
    request = first_check(sender, Instant(0))
    at = Instant(millis(10))
    assert receiver.accepts(request)
    receiver.handle_stun(at, saddr, raddr, request)
    [(dst, answer)] = drain(receiver)
    assert (dst, answer.cls, answer.transaction_id) == (saddr, Class.SUCCESS, request.transaction_id)
    assert [(r.kind, r.addr) for r in receiver.remote_candidates()] == [(c.Kind.PRFLX, saddr)]
    deadline = receiver.poll_timeout()
    assert deadline is not None and deadline.at == at  # the new pair is due now
    receiver.handle_timeout(at)
    [(dst, check)] = drain(receiver)
    assert (dst, check.cls) == (saddr, Class.REQUEST)
    assert check.text(Attr.USERNAME) == f"{sender.local_ufrag}:{receiver.local_ufrag}"
    assert sender.accepts(check)


@pytest.mark.parametrize("role", ROLES)
def test_a_check_on_a_pair_being_checked_triggers_nothing(role: str) -> None:
    receiver, raddr, sender, saddr = receiver_and_sender(role)
    receiver.add_remote_candidate(c.host(saddr))
    own = first_check(receiver, Instant(0))  # in flight, unanswered
    assert own.cls == Class.REQUEST
    request = first_check(sender, Instant(0))
    assert not request.has(Attr.USE_CANDIDATE)
    at = Instant(millis(10))
    receiver.handle_stun(at, saddr, raddr, request)
    [(_, answer)] = drain(receiver)
    assert answer.cls == Class.SUCCESS
    deadline = receiver.poll_timeout()
    assert deadline is not None and deadline.at == DEFAULT_TIMING.initial_rto  # its retransmission
    receiver.handle_timeout(at)
    assert drain(receiver) == []
