"""The gateway facade in the simulator: joins the stub portal, applies init, answers authorize_flow."""

from __future__ import annotations

import uuid

from gateway_core.clock import Instant, secs
from gateway_core.dns.servers import BindDnsServers
from gateway_core.interface import ConfigureInterface
from sim.hosts.gateway import build_gateway_world
from sim.world import World

CLIENT = uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24")
CIDR = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")


def test_gateway_joins_configures_and_authorizes() -> None:
    w = World(1)
    sc = build_gateway_world(w)
    w.run_until(Instant(secs(3)))
    kinds = [type(c) for _, c in sc.host.log]
    assert kinds[:2] == [ConfigureInterface, BindDnsServers]
    st = sc.gateway.stats()
    assert st["gateway.portal_joined"] == 1 and st["gateway.dns_bound"] == 2
    result: list[object] = []
    sc.act(w, lambda p: result.append(p.authorize(CLIENT, CIDR)))
    w.run_until(Instant(secs(6)))
    assert result and result[0]["ok"]  # type: ignore[index]
    assert CLIENT in sc.gateway.peers.clients
    # the portal accepted our flow_authorized (a valid ref) and got candidates
    st = sc.gateway.stats()
    assert st["gateway.portal.AuthorizeFlow"] == 1
    assert st.get("portal.error_replies", 0) == 0
