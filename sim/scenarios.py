"""Scenarios: ready-made worlds for the CLI, the demo and the tests.

``echo``: two echo servers and two pingers on links with latency, jitter, loss and duplication; one
pinger is cut off from one server for a while (a partition that heals). It exercises every part of the
world: UDP datagrams to sockets, ICMP echo as raw IP packets, IPv4 and IPv6, loss, duplicates, reordering
by jitter, partitions, and the contract checks on every component.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.wire.ip import ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, parse_icmp, parse_ip
from sim.host import Host
from sim.hosts.echo import ECHO_PORT, EchoServer, Pinger, PingTarget
from sim.net import LinkProfile
from sim.trace import Record
from sim.world import World

DEFAULT_DURATION = secs(10)
"""Long enough for ~35 probe rounds and a partition in the middle; short enough for a fast test."""
PING_INTERVAL = millis(250)
"""One probe round per quarter second per pinger."""
DRAIN = secs(1)
"""The pingers stop this long before the end (at most half the run) so the last replies (max path ~0.3 s)
arrive in time."""

SERVER_V4 = IPv4Address("203.0.113.10")
SERVER_V6 = IPv6Address("2001:db8::10")
CAROL_V4 = IPv4Address("203.0.113.30")
CAROL_V6 = IPv6Address("2001:db8::30")
ALICE_V4 = IPv4Address("203.0.113.21")
BOB_V6 = IPv6Address("2001:db8::22")
"""Addresses from the documentation ranges (RFC 5737, RFC 3849); Firezone's tests use 203.0.113.0/24 too."""


@dataclass(frozen=True, slots=True)
class EchoScenario:
    """The ``echo`` scenario's knobs."""

    duration: Duration = DEFAULT_DURATION
    interval: Duration = PING_INTERVAL
    partition_at: Duration = secs(3)
    heal_at: Duration = secs(6)


def build_echo_world(world: World, cfg: EchoScenario | None = None) -> World:
    """Populate ``world`` with the echo scenario and schedule its partition."""
    cfg = cfg or EchoScenario()
    rounds = max(0, (cfg.duration - min(DRAIN, cfg.duration // 2)) // cfg.interval)
    server = EchoServer([SERVER_V4, SERVER_V6])
    world.add_host(
        Host(
            "server",
            server,
            ipv4=SERVER_V4,
            ipv6=SERVER_V6,
            udp_ports=(ECHO_PORT,),
            link=LinkProfile(latency=millis(15), jitter=millis(5)),
        )
    )
    carol = EchoServer([CAROL_V4, CAROL_V6])
    world.add_host(
        Host(
            "carol",
            carol,
            ipv4=CAROL_V4,
            ipv6=CAROL_V6,
            udp_ports=(ECHO_PORT,),
            link=LinkProfile(latency=millis(40), jitter=millis(30), loss_ppm=100_000),
        )
    )
    alice = Pinger(
        targets=[PingTarget("udp", SERVER_V4), PingTarget("icmp", CAROL_V4)],
        interval=cfg.interval,
        count=rounds,
        start=Instant(millis(100)),
        ident=0xA11C,
        ipv4=ALICE_V4,
    )
    world.add_host(
        Host(
            "alice",
            alice,
            ipv4=ALICE_V4,
            udp_ports=(40001,),
            link=LinkProfile(latency=millis(30), jitter=millis(20), loss_ppm=50_000, duplicate_ppm=30_000),
        )
    )
    bob = Pinger(
        targets=[PingTarget("icmp", SERVER_V6), PingTarget("udp", CAROL_V6)],
        interval=cfg.interval,
        count=rounds,
        start=Instant(millis(150)),
        ident=0xB0B,
        ipv6=BOB_V6,
    )
    world.add_host(
        Host(
            "bob",
            bob,
            ipv6=BOB_V6,
            udp_ports=(40002,),
            link=LinkProfile(latency=millis(60), jitter=millis(10)),
        )
    )
    world.at(Instant(cfg.partition_at), lambda: world.partition(["alice"], ["server"]))
    world.at(Instant(cfg.heal_at), lambda: world.heal(["alice"], ["server"]))
    return world


# --- reporting ----------------------------------------------------------------------------------------------


def _ms(ns: int) -> str:
    return f"{ns / 1_000_000:.1f}"


def summary(world: World) -> str:
    """A short text summary: network totals, then per pinger and target sent/received/lost/duplicates."""
    st = world.stats.counters
    lines = [
        f"seed {world.seed!r}: {int(world.now) // 1_000_000} ms simulated",
        f"network: sent {st['sent']}, delivered {st['delivered']} (duplicates {st['duplicated']}), dropped "
        + (", ".join(f"{k[5:]} {v}" for k, v in sorted(st.items()) if k.startswith("drop.")) or "none"),
    ]
    for name, host in world.hosts.items():
        comp = host.component
        sent, received = st[f"{name}.sent"], st[f"{name}.received"]
        lines.append(f"{name}: {sent} packets sent, {received} received")
        if isinstance(comp, Pinger):
            for target, res in zip(comp.targets, comp.results, strict=True):
                rtt = "-"
                if res.rtts:
                    rtt = (
                        f"{_ms(min(res.rtts))}/{_ms(sum(res.rtts) // len(res.rtts))}/{_ms(max(res.rtts))} ms"
                    )
                lines.append(
                    f"  {target.describe():<24} sent {res.sent:3d}  received {res.received:3d}"
                    f"  lost {res.lost:3d}"
                    f"  duplicates {res.duplicates:2d}  rtt min/avg/max {rtt}"
                )
        elif isinstance(comp, EchoServer):
            snap = comp.stats.snapshot()
            lines.append("  " + (", ".join(f"{k} {v}" for k, v in snap.items()) or "idle"))
    return "\n".join(lines)


def _what(rec: Record) -> str:
    l4 = rec.get("l4")
    if rec.get("proto") == "udp":
        return "UDP"
    name = {1: "ICMP", 58: "ICMPv6", 17: "UDP/IP", 6: "TCP"}.get(
        l4 if isinstance(l4, int) else -1, f"IP/{l4}"
    )
    payload = rec.get("payload")
    if isinstance(payload, str) and name.startswith("ICMP"):
        try:
            icmp = parse_icmp(parse_ip(bytes.fromhex(payload)).payload)
        except ValueError:
            return name
        kind = "request" if icmp.icmp_type in (ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REQUEST) else "reply"
        return f"{name} echo {kind} seq={icmp.seq}"
    return name


def play_by_play(rec: Record) -> str | None:
    """One readable line for a trace record (``None`` for records the demo does not show)."""
    t = rec["t"]
    assert isinstance(t, int)
    stamp = f"{t // 1_000_000_000:3d}.{(t // 1_000_000) % 1000:03d}s"
    ev = rec["ev"]
    if ev == "action":
        return f"{stamp}  *** {rec['what']}"
    if ev == "deliver":
        sent = rec["sent"]
        assert isinstance(sent, int)
        dup = "  (duplicate)" if rec["copy"] else ""
        return (
            f"{stamp}  {rec['from']:>6} -> {rec['to']:<6} {_what(rec):<28} {rec['src']} -> {rec['dst']}"
            f"  {rec['len']} B in {_ms(t - sent)} ms{dup}"
        )
    if ev == "drop" and "id" in rec:
        return (
            f"{stamp}  {rec['from']:>6} -> {rec['to'] or '?':<6} {_what(rec):<28}"
            f" {rec['src']} -> {rec['dst']}"
            f"  DROPPED: {rec['reason']}"
        )
    if ev == "drop":
        return f"{stamp}  DROPPED before sending: {rec['reason']} ({rec})"
    if ev == "exit":
        return f"{stamp}  {rec['host']} exited: {rec['reason']}"
    return None
