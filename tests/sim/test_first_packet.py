"""Time to first packet (decisions 0130, 0175): from the portal's ``authorize_flow`` to the first packet at
the resource, in virtual time on links without jitter, so the figures are exact and the bounds can be
tight. The bench ``bench_first_packet`` prints the same measurements; ``python -m sim.first_packet_timeline``
prints the time lines the tests below take apart."""

from __future__ import annotations

import pytest

from sim.client_portal import SIGNAL_DELAY
from sim.first_packet import DIRECT_BOUND, LATENCIES_MS, RELAYED_BOUND, measure, rtt
from sim.first_packet_timeline import Step, timeline


@pytest.mark.parametrize("latency", LATENCIES_MS)
def test_direct_first_packet_within_the_bound(latency: int) -> None:
    m = measure(latency, relayed=False)
    assert m.rtts <= DIRECT_BOUND, f"{m.elapsed / 1e6} ms at {latency} ms links"
    # Nothing of the gateway's making on the way: exactly the floor for a client that initiates
    # WireGuard when it nominates (sim.first_packet): 4 round trips and the client's portal hop.
    assert m.elapsed == 4 * rtt(latency) + SIGNAL_DELAY


@pytest.mark.parametrize("latency", LATENCIES_MS)
def test_relayed_first_packet_within_the_bound(latency: int) -> None:
    m = measure(latency, relayed=True)
    assert m.rtts <= RELAYED_BOUND, f"{m.elapsed / 1e6} ms at {latency} ms links"
    # The floor for such a client through a relay (a quarter relayed RTT for authorize_flow, a quarter
    # for the gateway's candidates, the check, the handshake, half for the data and a quarter to the
    # resource): no connectivity check waited for its 250 ms retransmission.
    assert m.rtts == 3.25


def test_the_measurement_is_deterministic() -> None:
    assert measure(10, relayed=True) == measure(10, relayed=True)


def _first(steps: list[Step], src: str, dst: str, what: str) -> Step:
    return next(s for s in steps if (s.src, s.dst, s.what) == (src, dst, what))


@pytest.mark.parametrize("latency", LATENCIES_MS)
def test_the_gateways_candidates_gate_the_direct_first_packet(latency: int) -> None:
    """Decision 0175's time line, step by step: after the gateway's candidates reach the client, every
    step leaves the instant the one before it arrives, and each is one round trip."""
    m, steps = timeline(latency, relayed=False)
    r = rtt(latency)
    c, g = "client-0", "gateway"
    assert not [s for s in steps if s.dropped]
    # authorize_flow to the gateway, its candidates back to the portal, the client's hop.
    cands = _first(steps, "portal", c, "ice_candidates")
    assert cands.at == r + SIGNAL_DELAY
    check = _first(steps, c, g, "binding request")
    assert check.sent == cands.at
    # The gateway's own first check needs the client's candidates, which took a second hop of the
    # client's: it arrives (and is answered) after the client's check left, too late to start anything.
    gw_check = _first(steps, g, c, "binding request")
    assert gw_check.at == check.sent + SIGNAL_DELAY
    assert _first(steps, c, g, "binding success").sent == gw_check.at
    # str0m nominates the pair its own check made succeed; snownet initiates WireGuard on that.
    answer = _first(steps, g, c, "binding success")
    assert answer.at == check.sent + r
    assert _first(steps, c, g, "binding request use-candidate").sent == answer.at
    init = _first(steps, c, g, "wg initiation")
    assert init.sent == answer.at
    response = _first(steps, g, c, "wg response")
    assert response.sent == init.at
    assert _first(steps, c, g, "wg data").sent == response.at
    assert _first(steps, g, "web", "ip packet").at == response.at + r == m.elapsed


@pytest.mark.parametrize("latency", LATENCIES_MS)
@pytest.mark.parametrize("relayed", [False, True])
def test_firezone_portal_order_moves_no_first_packet(latency: int, relayed: bool) -> None:
    """Firezone's portal sends flow_created only when the gateway's flow_authorized is back, with the
    gateway's candidates right behind it: the first packet arrives at the same instant, 3 RTT after the
    client's grant on the direct path."""
    ours = measure(latency, relayed)
    firezone = measure(latency, relayed, firezone_order=True)
    assert firezone.elapsed == ours.elapsed
    assert ours.granted == SIGNAL_DELAY
    assert firezone.granted == rtt(latency) + SIGNAL_DELAY
    assert firezone.rtts_from_grant == (2.75 if relayed else 3.0)


@pytest.mark.parametrize("latency", LATENCIES_MS)
def test_firezone_order_the_gateway_checks_the_clients_peer_reflexive_address(latency: int) -> None:
    """In Firezone's order the gateway has no candidate of the client when the client's first check
    arrives: the check makes a peer-reflexive candidate and the gateway checks it at once (str0m's
    rule for a new pair), before the client's candidates reach it."""
    _, steps = timeline(latency, relayed=False, firezone_order=True)
    c, g = "client-0", "gateway"
    grant = _first(steps, "portal", c, "flow_created")
    assert grant.at == _first(steps, "portal", c, "ice_candidates").at
    check = _first(steps, c, g, "binding request")
    assert check.sent == grant.at
    gw_check = _first(steps, g, c, "binding request")
    assert gw_check.sent == check.at
    assert gw_check.sent < _first(steps, "portal", g, "ice_candidates").at
