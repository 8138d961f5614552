"""The ``gateway`` scenario: one client using a CIDR and a DNS resource through the whole gateway.

A scripted timeline on :func:`~sim.gateway_world.build_gateway_world` (every step is a labelled world
action, so it shows in traces):

- 0.5 s: the portal grants the client the CIDR resource ``web`` (filters tcp/80, udp/7, udp/5000-5010,
  icmp) and the DNS resource ``**.corp.test``;
- from 2 s: the client pings ``web`` every ``interval`` until the end;
- 2.5 s: UDP echo to port 7 (allowed), UDP to port 9 (not in the filters: ICMP prohibited from the
  gateway), UDP to port 5000 (allowed, closed on the host: port unreachable from the resource), a TCP
  request to port 80;
- 3 s: the client resolves ``app.corp.test`` (proxy IPs), pings the first IPv4 and IPv6 proxy IPs and
  sends a TCP request to port 443 through the DNS-resource NAT;
- 3.5 s: SRV and TXT queries forwarded to the gateway's DNS server and answered by the upstream; a TXT
  query for a name outside every resource (REFUSED by the gateway);
- ``revoke_at``: the portal revokes the CIDR resource; the pings stop getting answers.

:func:`scenario_summary` tells what the client received and what reached the resources;
:func:`narrate` prints a readable play-by-play as it happens (``firezone-sim demo``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from devpeers.client import DevClient
from devpeers.client_types import (
    DnsAnswer,
    DomainStatusReceived,
    EchoReply,
    GoodbyeReceived,
    IcmpErrorReceived,
    Received,
    TcpReceived,
    UdpReceived,
)
from gateway_core.clock import Duration, Instant, millis, secs
from sim.gateway_world import (
    CIDR_FILTERS,
    CIDR_RESOURCE,
    DNS_PATTERN,
    DNS_RESOURCE,
    WEB_V4,
    GatewayWorld,
    build_gateway_world,
)
from sim.hosts.resources import Arrival
from sim.trace import Record
from sim.world import World


@dataclass(frozen=True, slots=True)
class GatewayScenario:
    duration: Duration = secs(10)
    interval: Duration = millis(500)
    revoke_at: Duration = secs(7)
    relay_only: bool = False


def build_gateway_scenario(world: World, cfg: GatewayScenario | None = None) -> GatewayWorld:
    """Build the gateway world in ``world`` and schedule the timeline of the module docstring."""
    cfg = cfg or GatewayScenario()
    gw = build_gateway_world(world.seed, world=world, relay_only=cfg.relay_only)
    w = world

    def on(label: str, at: Duration, call: Callable[[DevClient, Instant], object]) -> None:
        w.at(Instant(at), lambda: gw.drive(0, call), label=label)

    def grant() -> None:
        gw.grant(0, CIDR_RESOURCE)
        gw.grant(0, DNS_RESOURCE)

    def revoke() -> None:
        gw.revoke(0, CIDR_RESOURCE)

    w.at(
        Instant(millis(500)),
        grant,
        label=f"portal grants client-0 web (CIDR, {' '.join(CIDR_FILTERS)}) and corp (DNS {DNS_PATTERN})",
    )
    t, seq = secs(2), 1
    while t < cfg.duration - secs(1):
        on(f"client-0 pings {WEB_V4} seq={seq}", t, _ping_web(seq))
        t += cfg.interval
        seq += 1
    on(
        "client-0 UDP echo to web:7",
        secs(2) + millis(500),
        lambda c, now: c.send_udp(now, WEB_V4, 7, b"echo me"),
    )
    on(
        "client-0 UDP to web:9 (filtered)",
        secs(2) + millis(510),
        lambda c, now: c.send_udp(now, WEB_V4, 9, b"x"),
    )
    on(
        "client-0 UDP to web:5000 (closed port)",
        secs(2) + millis(520),
        lambda c, now: c.send_udp(now, WEB_V4, 5000, b"x"),
    )
    on(
        "client-0 TCP request to web:80",
        secs(2) + millis(530),
        lambda c, now: c.send_tcp_request(now, WEB_V4, 80, b"GET /"),
    )
    on("client-0 resolves app.corp.test A and AAAA", secs(3), _resolve_app)
    on("client-0 pings app.corp.test (IPv4 and IPv6 proxy IPs)", secs(3) + millis(10), _ping_app)
    on("client-0 TCP request to app.corp.test:443", secs(3) + millis(20), _tcp_app)
    on(
        "client-0 asks SRV _sip._tcp.corp.test",
        secs(3) + millis(500),
        lambda c, now: c.query_dns(now, "_sip._tcp.corp.test", "SRV"),
    )
    on(
        "client-0 asks TXT info.corp.test",
        secs(3) + millis(510),
        lambda c, now: c.query_dns(now, "info.corp.test", "TXT"),
    )
    on(
        "client-0 asks TXT outside.example through the gateway (not a resource)",
        secs(3) + millis(520),
        lambda c, now: c.query_dns(now, "outside.example", "TXT", via=gw.gateway_id()),
    )
    w.at(
        Instant(cfg.revoke_at),
        revoke,
        label="portal revokes web for client-0",
    )
    return gw


def _ping_web(seq: int) -> Callable[[DevClient, Instant], object]:
    return lambda c, now: c.send_icmp(now, WEB_V4, seq)


def _resolve_app(c: DevClient, now: Instant) -> None:
    c.query_dns(now, "app.corp.test", "A")
    c.query_dns(now, "app.corp.test", "AAAA")


def _ping_app(c: DevClient, now: Instant) -> None:
    ips = c.proxy_ips("app.corp.test")
    c.send_icmp(now, ips[0], 1)
    c.send_icmp(now, ips[4], 2)


def _tcp_app(c: DevClient, now: Instant) -> None:
    c.send_tcp_request(now, c.proxy_ips("app.corp.test")[1], 443, b"hello app")


def run_gateway_scenario(world: World, duration: Duration | None = None) -> GatewayWorld:
    cfg = (
        GatewayScenario()
        if duration is None
        else GatewayScenario(duration=duration, revoke_at=duration * 7 // 10)
    )
    gw = build_gateway_scenario(world, cfg)
    world.run_until(Instant(cfg.duration))
    return gw


# --- reporting --------------------------------------------------------------------------------------------


def describe(rec: Received) -> str:
    """One line for a client record."""
    if isinstance(rec, EchoReply):
        return f"echo reply from {rec.src} seq={rec.seq}"
    if isinstance(rec, IcmpErrorReceived):
        what = {
            (3, 13): "prohibited",
            (1, 1): "prohibited",
            (3, 3): "port unreachable",
            (1, 4): "port unreachable",
        }
        name = what.get((rec.icmp_type, rec.code), "error")
        return (
            f"ICMP {rec.icmp_type}/{rec.code} ({name}) from {rec.src} for {rec.inner_dst}"
            f" port {rec.inner_dport}"
        )
    if isinstance(rec, UdpReceived):
        return f"UDP from {rec.src}:{rec.sport} {rec.payload!r}"
    if isinstance(rec, TcpReceived):
        flags = "SYN/ACK" if rec.flags & 0x02 else ("RST" if rec.flags & 0x04 else "ACK")
        return f"TCP {flags} from {rec.src}:{rec.sport}" + (f" {rec.payload!r}" if rec.payload else "")
    if isinstance(rec, DnsAnswer):
        return f"DNS {rec.rtype} {rec.name}: {rec.rcode} {', '.join(rec.records)} ({rec.source})"
    if isinstance(rec, DomainStatusReceived):
        return f"domain_status {rec.domain}: {rec.status}"
    assert isinstance(rec, GoodbyeReceived)
    return "goodbye from the gateway"


def _stamp(t: int) -> str:
    return f"{t // 1_000_000_000:3d}.{(t // 1_000_000) % 1000:03d}s"


def narrate(gw: GatewayWorld, out: Callable[[str], None]) -> Callable[[Record], None]:
    """Print client records and resource arrivals as they happen; returns a trace listener for actions."""

    def received(i: int) -> Callable[[Received], None]:
        return lambda r: out(f"{_stamp(r.at)}  client-{i} <- {describe(r)}")

    for i, c in enumerate(gw.clients):
        c.listeners.append(received(i))

    def arrival(name: str) -> Callable[[Arrival], None]:
        def show(a: Arrival) -> None:
            proto = {1: "ICMP", 58: "ICMPv6", 6: "TCP", 17: "UDP"}.get(a.proto, str(a.proto))
            out(f"{_stamp(a.at)}  {name} <- {proto} {a.src}:{a.sport} -> {a.dst}:{a.dport}")

        return show

    gw.web.listeners.append(arrival("web"))
    gw.app.listeners.append(arrival("app"))

    def on_trace(rec: Record) -> None:
        if rec["ev"] == "action":
            t = rec["t"]
            assert isinstance(t, int)
            out(f"{_stamp(t)}  *** {rec['what']}")

    return on_trace


def scenario_summary(gw: GatewayWorld) -> str:
    lines = []
    for i, c in enumerate(gw.clients):
        kinds = Counter(type(r).__name__ for r in c.received)
        lines.append(f"client-{i}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        conn = next(iter(gw.gateway.node.connections.values()), None)
        path = "none" if conn is None or conn.peer_socket is None else conn.peer_socket.kind.value
        lines.append(f"  gateway connection path: {path}")
    lines.append(f"web received {len(gw.web.received)} packets, app received {len(gw.app.received)}")
    lines.append(f"upstream DNS answered {len(gw.upstream.queries)} queries")
    drops = {k: v for k, v in sorted(gw.gateway.stats().items()) if k.startswith("drop.") and v}
    lines.append("gateway drops: " + (", ".join(f"{k[5:]} {v}" for k, v in drops.items()) or "none"))
    return "\n".join(lines)
