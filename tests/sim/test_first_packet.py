"""Time to first packet (decision 0130): from the portal's ``authorize_flow`` to the first packet at the
resource, in virtual time on links without jitter, so the figures are exact and the bounds can be tight.
The bench ``bench_first_packet`` prints the same measurements."""

from __future__ import annotations

import pytest

from sim.client_portal import SIGNAL_DELAY
from sim.first_packet import DIRECT_BOUND, LATENCIES_MS, RELAYED_BOUND, measure, rtt


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
