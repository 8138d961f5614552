"""The simulated world with coturn-flavoured relays (``relay_kind="coturn"``, decision 0171).

The dev relay's coturn flavour reads ADDITIONAL-ADDRESS-FAMILY as coturn 4.6.1 does (only at the draft
codepoint 0x8032), and the portal hands out TURN REST credentials for it. An IPv6-only client that may
only use the relays gets the gateway's resource, and every allocation, the gateway's and the client's,
holds an IPv4 and an IPv6 relayed address from one ALLOCATE (with RFC 8656's codepoint alone, coturn 4.6
grants IPv4 only). Deterministic: the same seed gives the same trace.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from devpeers.client_types import EchoReply
from gateway_core.clock import millis
from gateway_core.node.connection import PathKind
from gateway_core.node.node import Node
from sim.gateway_world import CIDR_RESOURCE, WEB_V4, GatewayWorld, build_gateway_world
from sim.trace import Trace
from sim.world import World

SEEDS = [1, 2, 3]


def _world(seed: int, world: World | None = None) -> GatewayWorld:
    gw = build_gateway_world(
        seed, world=world, relay_only=True, client_stack="v6", relay_v6=True, relay_kind="coturn", relays=2
    )
    assert gw.start()
    gw.grant(0, CIDR_RESOURCE)
    assert gw.run_until_connected(0)
    return gw


def _relayed_families(node: Node) -> dict[str, list[int]]:
    return {
        rid: [v for v in (4, 6) if a.relayed_address(v) is not None]
        for rid, a in sorted(node.allocations.items())
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_an_ipv6_only_client_over_coturn_relays_gets_relays_of_both_families(seed: int) -> None:
    gw = _world(seed)
    for node in (gw.gateway.node, gw.clients[0].node):
        got = _relayed_families(node)
        assert len(got) == 2 and all(fams == [4, 6] for fams in got.values()), got
        # coturn showed itself standard (the unsigned 400) and the dual request was granted, not refused.
        assert all(
            a.auth.standard_server and a.stats.counters["turn.error_440"] == 0
            for a in node.allocations.values()
        )
    conn = next(iter(gw.gateway.node.connections.values()))
    assert conn.peer_socket is not None and conn.peer_socket.kind is not PathKind.PEER_TO_PEER
    start = gw.world.now
    for i in range(5):
        gw.drive(0, lambda c, now, i=i: c.send_icmp(now, WEB_V4, i))
        gw.world.run_for(millis(400))
    got = [r.seq for r in gw.clients[0].received if r.at >= start and isinstance(r, EchoReply)]
    assert got == [0, 1, 2, 3, 4]


def _digest(seed: int) -> str:
    lines: list[str] = []
    trace = Trace()
    trace.listeners.append(lambda r: lines.append(json.dumps(r, sort_keys=True)))
    _world(seed, World(seed, trace=trace))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_the_same_seed_gives_the_same_trace() -> None:
    assert _digest(7) == _digest(7)
