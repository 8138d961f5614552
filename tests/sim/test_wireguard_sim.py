"""Two WireGuard peers on two simulated hosts carry ICMP echo over lossy links."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from gateway_core.clock import Instant, secs
from sim.hosts.echo import EchoServer, Pinger
from sim.hosts.wireguard import WG_PORT, TunnelEndpoint, WireGuardScenario, build_wireguard_world
from sim.pcap import PcapWriter, read_pcap
from sim.trace import Trace
from sim.world import World


def run(seed: int, cfg: WireGuardScenario, pcap: PcapWriter | None = None) -> tuple[World, str]:
    sink = io.StringIO()
    world = build_wireguard_world(World(seed, trace=Trace(sink), pcap=pcap), cfg)
    world.run_until(Instant(cfg.duration))
    return world, sink.getvalue()


def endpoints(world: World) -> tuple[TunnelEndpoint, TunnelEndpoint]:
    a, b = world.hosts["wg-a"].component, world.hosts["wg-b"].component
    assert isinstance(a, TunnelEndpoint) and isinstance(b, TunnelEndpoint)
    return a, b


def test_icmp_echo_through_the_tunnel_over_a_lossy_link() -> None:
    world, _ = run(3, WireGuardScenario(duration=secs(20), loss_ppm=100_000))
    a, b = endpoints(world)
    assert isinstance(a.inner, Pinger) and isinstance(b.inner, EchoServer)
    res = a.inner.results[0]
    # 10 % loss each way per link: most echoes still make it; none is duplicated by WireGuard.
    assert res.sent >= 70
    assert res.received >= res.sent // 2
    assert res.duplicates == 0
    assert b.inner.stats.counters["icmp_echoed"] >= res.received
    assert a.peer.stats.counters["handshakes_as_initiator"] >= 1
    assert b.peer.stats.counters["handshakes_as_responder"] >= 1


def test_rekey_and_loss_of_handshakes_in_a_long_run() -> None:
    world, _ = run(5, WireGuardScenario(duration=secs(150), interval=secs(1), loss_ppm=50_000))
    a, _ = endpoints(world)
    assert isinstance(a.inner, Pinger)
    res = a.inner.results[0]
    assert a.peer.stats.counters["handshakes_as_initiator"] >= 2  # rekey after 120 s
    # 5 % loss on each of the two links a packet crosses each way: about 81 % of echoes come back.
    assert res.received >= res.sent * 6 // 10 and res.duplicates == 0


def test_same_seed_same_trace() -> None:
    cfg = WireGuardScenario(duration=secs(5))
    assert run(11, cfg)[1] == run(11, cfg)[1]
    assert run(11, cfg)[1] != run(12, cfg)[1]


def test_trace_and_pcap_show_wireguard_messages(tmp_path: Path) -> None:
    pcap_path = tmp_path / "wg.pcap"
    with open(pcap_path, "wb") as f:
        _, trace = run(7, WireGuardScenario(duration=secs(5)), PcapWriter(f))
    delivered = [r for r in map(json.loads, trace.splitlines()) if r["ev"] == "deliver"]
    kinds = Counter(int(r["payload"][:2], 16) for r in delivered)
    assert kinds[1] >= 1 and kinds[2] >= 1 and kinds[4] >= 10
    assert len(read_pcap(pcap_path.read_bytes())) == len(delivered)

    tshark = shutil.which("tshark")
    assert tshark, "tshark is missing: it is in scripts/debian-packages.txt (make deps installs it)"
    out = subprocess.run(
        [
            tshark,
            "-n",
            "-r",
            str(pcap_path),
            "-d",
            f"udp.port=={WG_PORT},wg",
            "-T",
            "fields",
            "-e",
            "wg.type",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    types = Counter(out)
    assert types["1"] == kinds[1] and types["2"] == kinds[2] and types["4"] == kinds[4]


def test_cli_runs_the_wireguard_scenario(tmp_path: Path, capsys: object) -> None:
    from sim.cli import main

    pcap, trace = tmp_path / "wg.pcap", tmp_path / "wg.jsonl"
    argv = ["run", "--seed", "3", "--scenario", "wireguard", "--duration", "4"]
    assert main([*argv, "--pcap", str(pcap), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "wg-a wireguard: handshakes_as_initiator 1" in out
    assert "through the tunnel, icmp 100.96.0.1" in out
    assert read_pcap(pcap.read_bytes()) and trace.read_text().count('"ev":"deliver"') >= 10
