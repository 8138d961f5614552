"""A gateway restarted in the gateway world (:meth:`GatewayWorld.restart_gateway`, built on
:meth:`World.replace_component`): the old process's portal stream closes, the new gateway joins with a new
key, the old one is driven no more, and a client granted again connects to the new one."""

from __future__ import annotations

from devpeers.client_types import EchoReply
from gateway_core.clock import Instant, secs
from sim.gateway_world import CIDR_RESOURCE, WEB_V4, build_gateway_world
from sim.trace import Trace
from sim.world import World


def test_a_restarted_gateway_rejoins_and_serves_while_the_old_one_is_driven_no_more() -> None:
    world = World(5, trace=Trace(keep=True))
    gw = build_gateway_world(5, world=world)
    assert gw.start()
    gw.grant(0, CIDR_RESOURCE)
    assert gw.run_until_connected(0)
    old, host = gw.gateway, gw.gateway_host
    mark = len(world.trace.records)

    new = gw.restart_gateway()
    assert gw.restarts == 1 and gw.gateway is new is host.gateway is host.component
    assert host.channel is new.channel and host.checker.component is new
    assert new.public_key != old.public_key
    crashes = [r for r in world.trace.records[mark:] if r["ev"] == "stream_close"]
    assert [(r["host"], r["reason"]) for r in crashes] == [("gateway", "crash")]
    old_counters = old.counters.snapshot()

    assert gw.start()
    assert new.counters.snapshot().get("portal_joined", 0) == 1
    cid = str(gw.client_ids[0])
    assert cid not in new.node.connections
    world.drive(gw.client_hosts[0], gw.clients[0].reset_connections)  # as a client that saw it break
    gw.grant(0, CIDR_RESOURCE)
    assert gw.run_until_connected(0) and cid in new.node.connections
    at = world.now
    gw.drive(0, lambda c, now: c.send_icmp(now, WEB_V4, 1))
    world.run_until(Instant(at + secs(1)))
    assert [r.seq for r in gw.clients[0].received if isinstance(r, EchoReply) and r.at >= at] == [1]
    assert old.counters.snapshot() == old_counters  # nothing reached the old gateway
