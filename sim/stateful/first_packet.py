"""The stateful harness's time-to-first-packet check (decision 0130).

Theory of operation: when a ``grant`` step authorises client ``c`` for the CIDR resource while the client
holds no connection to the gateway (every example's first step is one), the client sends one ICMP echo
to the web host the moment its grant arrives (``SIGNAL_DELAY`` after the portal's ``authorize_flow``),
as an application waiting for the resource would; the probe is predicted and checked like any other
(:mod:`sim.stateful.probes`). If the model says it is delivered and the world is calm (the client, the
gateway, a relay and the portal reach each other as the path needs, the gateway has joined the portal and
holds a relay allocation), its first arrival must come within :func:`bound` of the portal's
``authorize_flow``.

The bound is :data:`sim.first_packet.DIRECT_BOUND` round trips of the direct path (worlds where it
works and wins the race: plain links, no NAT, no relay-only, no partition between the client and the
gateway) or :data:`sim.first_packet.RELAYED_BOUND` round trips through a relay otherwise (with 40 ms of
jitter a relayed pair can answer first and carry the handshake), each round trip taken at
the *largest* delay the links can draw (latency plus jitter, both ways), plus the client's portal hop.
Where any link has jitter (every world: the plain links have 2 ms), packets sent together can arrive in
either order, which costs one side a wait: a handshake initiation that overtakes the nomination check
waits at the gateway for it (at most the path's jitter), and a check that overtakes the ChannelBind
whose in-flight channel it rides is dropped by the relay and retransmitted after the initial RTO
(250 ms). The allowance is one more round trip of the path, and on a relayed path also the initial RTO.
Lossy worlds are excluded: one lost check costs a retransmission, one lost handshake message 5 s, and
neither is a regression.
"""

from __future__ import annotations

from gateway_core.clock import Duration, Instant
from gateway_core.ice.pair import DEFAULT_TIMING
from sim.client_portal import SIGNAL_DELAY
from sim.first_packet import DIRECT_BOUND, RELAYED_BOUND
from sim.stateful.probes import Probe
from sim.stateful.scene import CONTROL_SETTLE, InvariantError, Scene
from sim.stateful.traffic import Traffic


def _max_one_way(scene: Scene, a: str, b: str) -> int:
    p = scene.world.network.path(a, b)
    return p.latency + p.jitter


def bound(scene: Scene, c: int) -> Duration | None:
    """The first-packet bound for client ``c`` now, or ``None`` when the world is not calm enough to
    hold one (see the module docstring)."""
    s = scene
    net = s.world.network
    client = s.gw.client_hosts[c].name
    if s.model.lossy or not s.gw.portal.joined_sockets() or net.is_partitioned("portal", "gateway"):
        return None
    if not s.gw.gateway.node.allocations:
        return None
    direct_ok = (
        s.spec.net == "plain"
        and not s.spec.relay_only
        and s.spec.nat == "none"
        and not net.is_partitioned(client, "gateway")
    )
    jitter = any(
        s.world.network.path(a, b).jitter
        for a in (client, "gateway", "portal")
        for b in (client, "gateway", "portal", *s.gw.relay_names)
        if a != b and b in s.world.hosts
    )
    if direct_ok:
        rtt = 2 * _max_one_way(s, client, "gateway")
        return Duration(int(DIRECT_BOUND * rtt) + SIGNAL_DELAY + (rtt if jitter else 0))
    relays = [
        r
        for r in s.gw.relay_names
        if r in s.world.hosts and not net.is_partitioned(client, r) and not net.is_partitioned(r, "gateway")
    ]
    if len(relays) != len([r for r in s.gw.relay_names if r in s.world.hosts]) or not relays:
        return None  # a relay cut off from one end: the relay each end picked may not be usable
    rtt = 2 * max(_max_one_way(s, client, r) + _max_one_way(s, r, "gateway") for r in relays)
    allowance = rtt + DEFAULT_TIMING.initial_rto if jitter else 0
    return Duration(int(RELAYED_BOUND * rtt) + SIGNAL_DELAY + allowance)


def grant_with_first_packet(scene: Scene, traffic: Traffic, c: int, grant: object) -> None:
    """Run ``grant()`` (the portal authorises client ``c`` for the CIDR resource now) with the first
    packet of the module docstring; checks the probe and its time."""
    s = scene
    gid = s.gw.gateway_id()
    fresh = gid not in s.client(c).node.connections
    start = s.world.now
    assert callable(grant)
    grant()
    if not fresh or not s.model.live(c, "web", start):
        return
    limit = bound(s, c)
    dst = traffic.web_target(0)
    pred = s.model.predict_packet(c, dst, "icmp", 0, start)
    p = traffic.prober.prepare(Probe(c, "icmp", dst, 0, pred, traffic.host_for(dst)))
    mark = traffic.inv.mark()
    traffic.prober.send_at(Instant(start + SIGNAL_DELAY), p)
    s.world.run_for(CONTROL_SETTLE)
    traffic.finish([p], mark)
    delivered = all(a.arrivals >= 1 for a in pred.alternatives)
    if limit is None or not delivered or not p.arrivals:
        return
    s.coverage["event:first_packet_checked"] += 1
    took = p.arrivals[0].at - start
    if took > limit:
        raise InvariantError(
            f"client-{c}'s first packet to {dst} reached it {took / 1e6:.1f} ms after authorize_flow, "
            f"the bound is {limit / 1e6:.1f} ms"
        )
