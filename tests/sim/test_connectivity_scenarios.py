"""Connectivity in the simulator: gateway and client nodes, Firezone-like relays, four scenarios.

Every scenario runs WireGuard-encapsulated ICMP echo from the client's pinger to the gateway's echo
server; the world checks the driving contract (R2, R4, R5, R6) on every component after every step.
"""

from __future__ import annotations

import io

import pytest

from gateway_core.clock import Instant, secs
from gateway_core.node.connection import ConnState, PathKind
from gateway_core.node.events import InvalidateIceCandidate
from sim.hosts.connectivity import ConnectivityScenario, NodeEndpoint, build_connectivity_world
from sim.hosts.echo import Pinger
from sim.pcap import PcapWriter, read_pcap
from sim.trace import Trace
from sim.world import World


def run(kind: str, seed: int = 1, duration: int = secs(20), trace: Trace | None = None) -> World:
    w = World(seed, trace=trace)
    build_connectivity_world(w, ConnectivityScenario(kind=kind, duration=duration))
    w.run_until(Instant(duration))
    return w


def endpoint(w: World, name: str) -> NodeEndpoint:
    ep = w.hosts[name].component
    assert isinstance(ep, NodeEndpoint)
    return ep


def pings(w: World) -> tuple[int, int]:
    inner = endpoint(w, "client").inner
    assert isinstance(inner, Pinger)
    return inner.results[0].sent, inner.results[0].received


def test_direct_path() -> None:
    w = run("direct")
    conn = endpoint(w, "gateway").node.connections["client"]
    assert conn.state is ConnState.CONNECTED
    assert conn.peer_socket is not None and conn.peer_socket.kind is PathKind.PEER_TO_PEER
    sent, received = pings(w)
    assert sent > 60 and received >= sent - 2  # the path exists before the first ping


def test_relay_only_path() -> None:
    w = run("relay-only")
    conn = endpoint(w, "gateway").node.connections["client"]
    assert conn.peer_socket is not None
    assert conn.peer_socket.kind in (PathKind.RELAY_TO_PEER, PathKind.RELAY_TO_RELAY, PathKind.PEER_TO_RELAY)
    sent, received = pings(w)
    assert sent > 60 and received >= sent - 2


def test_relay_disappears_and_another_remains() -> None:
    w = run("relay-lost", duration=secs(30))
    gw = endpoint(w, "gateway")
    conn = gw.node.connections["client"]
    assert len(gw.node.allocations) == 1
    assert conn.relay in gw.node.allocations
    assert any(isinstance(e, InvalidateIceCandidate) for e in gw.events)
    inner = endpoint(w, "client").inner
    assert isinstance(inner, Pinger)
    res = inner.results[0]
    # Pings go on through the remaining relay; at most a few are lost while the path moves.
    assert res.sent > 100 and res.received >= res.sent - 5
    assert conn.state in (ConnState.CONNECTED, ConnState.IDLE)


def test_relay_credentials_rotated() -> None:
    w = run("credentials", duration=secs(30))
    gw = endpoint(w, "gateway")
    assert all(a.username.endswith("salt-2") for a in gw.node.allocations.values())
    assert any(isinstance(e, InvalidateIceCandidate) for e in gw.events)
    sent, received = pings(w)
    assert sent > 100 and received >= sent - 5
    # The re-announced relays got new allocations (the relay answered the new one with 437 first).
    assert all(a.stats.counters["turn.error_437"] == 1 for a in gw.node.allocations.values())
    assert gw.node.connections["client"].state in (ConnState.CONNECTED, ConnState.IDLE)


@pytest.mark.parametrize("kind", ["direct", "relay-only"])
def test_deterministic_by_seed(kind: str) -> None:
    outs = []
    for _ in range(2):
        buf = io.StringIO()
        run(kind, seed=7, duration=secs(6), trace=Trace(buf))
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] and len(outs[0]) > 1000


def test_pcap_shows_stun_channel_data_and_wireguard() -> None:
    buf = io.BytesIO()
    w = World(3, pcap=PcapWriter(buf))
    build_connectivity_world(w, ConnectivityScenario(kind="relay-only", duration=secs(4)))
    w.run_until(Instant(secs(4)))
    records = read_pcap(buf.getvalue())
    udp_payloads = [pkt[28:] for _, pkt in records if pkt[0] >> 4 == 4 and pkt[9] == 17]
    firsts = {p[0] for p in udp_payloads if p}
    assert {0x00, 0x01} <= firsts  # STUN requests and responses
    assert any(0x40 <= b <= 0x4F for b in firsts)  # ChannelData
    assert {0x01, 0x02, 0x04} & firsts  # WireGuard (inside ChannelData payloads too)


@pytest.mark.parametrize("kind", ["direct", "relay-lost"])
def test_lossy_links(kind: str) -> None:
    # 5 % loss on every access link: a relayed round trip crosses 8 of them (about 66 % survive).
    w = World(2)
    build_connectivity_world(w, ConnectivityScenario(kind=kind, duration=secs(30), loss_ppm=50_000))
    w.run_until(Instant(secs(30)))
    conn = endpoint(w, "gateway").node.connections["client"]
    assert conn.state is ConnState.CONNECTED
    sent, received = pings(w)
    assert received >= sent * 6 // 10


def test_cli_runs_connectivity_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    from sim.cli import main

    assert main(["run", "--seed", "4", "--scenario", "relay-only", "--duration", "5"]) == 0
    out = capsys.readouterr().out
    assert "gateway: connection connected, path relay_to_peer" in out
    assert "pings through the tunnel" in out
