"""The stateful harness's path check (``sim.stateful.access.on_nominated_pair``): a connection counts as
working only while it sends on a pair its ICE agent holds nominated (nightly `3b2df61` regression
``relay_only_partition_left_a_stale_path``)."""

from __future__ import annotations

from gateway_core.clock import secs
from gateway_core.ice import candidate as c
from gateway_core.node.connection import PathKind, PeerSocket
from sim.stateful.access import on_nominated_pair
from tests.unit.test_ice_agent import CL, GW, host_to_host


def test_the_nominated_path_counts_until_its_candidate_is_invalidated() -> None:
    gw, cl, link = host_to_host()
    link.run_until(secs(2))
    gw_path = PeerSocket(PathKind.PEER_TO_PEER, GW, CL)
    cl_path = PeerSocket(PathKind.PEER_TO_PEER, CL, GW)
    assert on_nominated_pair(gw_path, gw) and on_nominated_pair(cl_path, cl)
    # A path that is no pair of the agent, or none at all, does not count.
    assert not on_nominated_pair(PeerSocket(PathKind.PEER_TO_PEER, GW, GW), gw)
    assert not on_nominated_pair(None, gw)
    # The client gave its candidate up (its allocation was freed) and told the gateway: both agents drop
    # the pair, while a connection would keep the path until the next nomination.
    assert cl.invalidate_candidate(c.host(CL)) and gw.invalidate_candidate(c.host(CL))
    assert not on_nominated_pair(gw_path, gw) and not on_nominated_pair(cl_path, cl)
