"""The gateway's portal channel against the stub portal in the simulated world: partitions, outages,
fatal errors, rejoin. Virtual time only; the world checks the driving contract after every step."""

from __future__ import annotations

import json
import uuid
from ipaddress import IPv4Address
from pathlib import Path

from devportal import Refusal
from gateway_core.clock import Instant, millis, secs
from gateway_core.portal.channel import (
    ChannelState,
    FatalKind,
    PortalFailed,
    PortalHiccup,
    PortalJoined,
    PortalMessageReceived,
)
from gateway_core.portal.messages import AuthorizeFlow, BroadcastIceCandidates, FlowAuthorized, Init
from sim.portal import build_portal_world
from sim.trace import Trace, encode
from sim.world import World

CONFIG = Path(__file__).parent.parent / "io" / "devportal_test.toml"
PORTAL_IP = IPv4Address("198.51.100.10")
CLIENT = uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24")
RESOURCE = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")


class Scene:
    def __init__(self, seed: int = 1, trace: Trace | None = None) -> None:
        self.world = World(seed, trace=trace)
        self.scene = build_portal_world(self.world, config_text=CONFIG.read_text())
        self.stub = self.scene.stub
        self.portal_host = self.scene.portal_host
        self.channel = self.scene.channel
        self.gw = self.scene.gateway_host

    def events(self, kind: type) -> list[tuple[Instant, object]]:
        return [(t, e) for t, e in self.gw.comp.events if isinstance(e, kind)]

    def act(self, fn: object) -> None:
        self.world.drive(self.portal_host, lambda now: self.stub.act(now, fn))

    def heartbeats_seen_by_portal(self) -> int:
        return sum(s.stats.counters["heartbeats"] for s in self.stub.sockets())


def test_join_init_and_heartbeats_keep_the_socket_alive() -> None:
    s = Scene()
    s.world.run_until(Instant(secs(600)))
    assert s.channel.state is ChannelState.JOINED and s.channel.conn == 1
    joined = s.events(PortalJoined)
    # Three round trips of 40 ms (two 10 ms links each way): TCP connect, upgrade, join.
    assert len(joined) == 1 and joined[0][0] == millis(120)
    (init,) = [e for _, e in s.events(PortalMessageReceived)]
    assert isinstance(init, PortalMessageReceived) and isinstance(init.message, Init)
    assert 19 <= s.heartbeats_seen_by_portal() <= 20  # every 30 s, and the 37 s idle timeout never fired
    assert s.stub.stats.counters["idle_closes"] == 0


def test_flow_round_trip() -> None:
    s = Scene()
    s.world.run_until(Instant(secs(1)))
    s.act(lambda p: p.authorize(CLIENT, RESOURCE))
    s.world.run_until(Instant(secs(2)))
    flows = [e.message for _, e in s.events(PortalMessageReceived) if isinstance(e.message, AuthorizeFlow)]  # type: ignore[attr-defined]
    assert len(flows) == 1
    s.world.drive(s.gw, lambda now: s.channel.send(now, FlowAuthorized(flows[0].ref)))
    s.world.run_until(Instant(secs(3)))
    assert [(r.event, r.reply) for r in s.stub.portal.received] == [("flow_authorized", "ok")]


def _attempt_times(s: Scene) -> list[int]:
    return [t for t, e in s.events(PortalHiccup)]


def test_partition_reconnects_with_backoff_and_loses_no_queued_message() -> None:
    s = Scene(seed=3)
    s.world.run_until(Instant(secs(10)))
    s.world.at(Instant(secs(10)), lambda: s.world.partition(["gateway"], ["portal"]))
    # Once the loss is noticed (the heartbeat at 30 s hits the partition), the gateway keeps producing
    # messages (e.g. ICE candidates for clients); they wait in the outbound queue. (A frame written into
    # a connection that is already dead but not yet known to be is lost, as with Firezone.)
    for i in range(5):
        s.world.at(
            Instant(secs(40 + i)),
            lambda i=i: s.world.drive(
                s.gw, lambda now: s.channel.send(now, BroadcastIceCandidates((CLIENT,), (f"candidate:{i}",)))
            ),
        )
    s.world.at(Instant(secs(130)), lambda: s.world.heal())
    s.world.run_until(Instant(secs(400)))
    assert s.channel.state is ChannelState.JOINED

    hiccups = [(t, e) for t, e in s.events(PortalHiccup)]
    # The first failure is noticed when the heartbeat at 30 s hits the partition; retry at once.
    t0, first = hiccups[0]
    assert t0 == secs(30) + millis(80) and first.delay == 0  # type: ignore[attr-defined]
    # Every later retry waits delay_k in [0.5, 1.5] x 0.5 s x 1.5^k (interval capped at 60 s).
    interval = millis(500)
    for _, h in hiccups[1:]:
        d = h.delay  # type: ignore[attr-defined]
        assert interval // 2 <= d <= interval + interval // 2, (d, interval)
        interval = min(secs(60), interval * 3 // 2)
    # The partition healed at 130 s: the next attempt got through.
    rejoin = [t for t, _ in s.events(PortalJoined)][-1]
    assert secs(130) < rejoin <= secs(130) + secs(90) + millis(100)
    # All five queued messages reached the portal, in order, after the rejoin.
    received = s.stub.portal.received
    got = [r.payload["candidates"][0] for r in received if r.event == "broadcast_ice_candidates"]  # type: ignore[index]
    assert got == [f"candidate:{i}" for i in range(5)]
    # Heartbeats resumed on the new socket.
    assert s.heartbeats_seen_by_portal() >= 5


def test_outage_503_then_recovery() -> None:
    s = Scene()
    s.world.run_until(Instant(secs(5)))
    s.act(lambda p: setattr(p, "refuse", Refusal(503, "Service Unavailable")))
    s.act(lambda p: p.kick())
    s.world.at(Instant(secs(300)), lambda: s.act(lambda p: setattr(p, "refuse", None)))
    s.world.run_until(Instant(secs(500)))
    assert s.channel.state is ChannelState.JOINED
    assert s.stub.stats.counters["refused_503"] >= 8
    assert len(s.events(PortalJoined)) == 2
    assert not s.events(PortalFailed)


def test_outage_longer_than_15_minutes_is_fatal() -> None:
    s = Scene()
    s.world.run_until(Instant(secs(5)))
    s.act(lambda p: setattr(p, "refuse", Refusal(503, "Service Unavailable")))
    s.act(lambda p: p.kick())
    s.world.run_until(Instant(secs(3600)))
    (t_fail, failed) = s.events(PortalFailed)[0]
    assert failed.kind is FatalKind.MAX_RETRIES  # type: ignore[attr-defined]
    first_failure = s.events(PortalHiccup)[0][0]
    assert secs(900) - secs(90) <= t_fail - first_failure <= secs(900)
    attempts = s.stub.stats.counters["refused_503"]
    s.world.run_until(Instant(secs(7200)))
    assert s.stub.stats.counters["refused_503"] == attempts  # gave up for good


def test_fatal_4xx_stops_reconnecting() -> None:
    s = Scene()
    s.world.run_until(Instant(secs(5)))
    s.act(lambda p: p.revoke_token())
    s.world.run_until(Instant(secs(3600)))
    (_, failed) = s.events(PortalFailed)[0]
    assert failed.kind is FatalKind.CLIENT_ERROR and failed.status == 401  # type: ignore[attr-defined]
    assert s.stub.stats.counters["refused_401"] == 1  # one immediate retry, then never again
    assert s.channel.state is ChannelState.FAILED


def test_phx_error_rejoin_and_heartbeats_resume() -> None:
    s = Scene()
    s.world.run_until(Instant(secs(45)))
    before = s.heartbeats_seen_by_portal()
    s.act(lambda p: [sock.close_topic("gateway", "phx_error") for sock in s.stub.sockets()])
    s.world.run_until(Instant(secs(200)))
    assert len(s.events(PortalJoined)) == 2 and s.channel.conn == 1  # rejoined on the same socket
    assert s.channel.stats.counters["portal.rejoins"] == 1
    inits = [e for _, e in s.events(PortalMessageReceived) if isinstance(e.message, Init)]  # type: ignore[attr-defined]
    assert len(inits) == 2
    assert s.heartbeats_seen_by_portal() >= before + 4


def test_same_seed_same_trace() -> None:
    def run(seed: int) -> list[str]:
        trace = Trace(keep=True)
        s = Scene(seed, trace)
        s.world.at(Instant(secs(10)), lambda: s.world.partition(["gateway"], ["portal"]))
        s.world.at(Instant(secs(100)), lambda: s.world.heal())
        s.world.run_until(Instant(secs(200)))
        return [encode(r) for r in trace.records]

    a, b = run(11), run(11)
    assert a == b and len(a) > 50
    assert a != run(12)
    assert any(json.loads(x)["ev"] == "stream_frame" for x in a)
