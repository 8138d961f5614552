"""Connectivity scenarios: a gateway node, a client node, Firezone-like TURN relays and a signalling path.

Theory of operation
-------------------
- :class:`RelayComponent` wraps the dev relay :class:`~devpeers.relay.DevRelay` (Firezone flavour) as a
  sans-IO component; :class:`RelayHost` binds the relayed ports the server hands out, so peers' datagrams
  to them reach it.
- :class:`NodeEndpoint` is a :class:`~gateway_core.node.node.Node` with an inner component behind its
  "TUN" (an :class:`~sim.hosts.echo.EchoServer` on the gateway, a :class:`~sim.hosts.echo.Pinger` on the
  client), like :class:`~sim.hosts.wireguard.TunnelEndpoint`. It drains node and inner commands inside its
  own calls (R8). Node events that the portal would carry (candidates, invalidations) are handed to a
  :class:`Signalling` object, which delivers them to the other endpoint after ``SIGNAL_DELAY`` through
  :meth:`World.drive` (so they are traced and contract-checked like any step).
- Scenarios (:func:`build_connectivity_world`): ``direct`` (both reach each other), ``relay-only`` (the
  direct path is partitioned from the start), ``relay-lost`` (relay-only; the relay the gateway uses is
  removed by the portal and vanishes, another remains), ``credentials`` (relay-only; the portal re-announces
  every relay with new credentials, as ``relays_presence`` does). ICMP echo flows inside WireGuard; all
  of it is deterministic by seed and shows in traces and pcaps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.commands import Command, WriteTun
from gateway_core.contract import Deadline, earliest
from gateway_core.entropy import SeededEntropy
from gateway_core.node.events import InvalidateIceCandidate, NewIceCandidate, NodeEvent
from gateway_core.node.factory import wireguard_node
from gateway_core.node.node import Node, RelayConfig
from gateway_core.turn.allocation import RelaySocket
from gateway_core.turn.credentials import firezone_password, firezone_username
from gateway_core.wireguard.crypto import public_key
from sim.host import Host
from sim.hosts.echo import EchoServer, Pinger, PingTarget
from sim.net import LinkProfile
from sim.world import World

NODE_PORT = 52625
"""snownet's preferred port (49152 + 3473)."""
TURN_PORT = 3478
SIGNAL_DELAY = millis(30)
"""One portal hop for candidates (the exact value does not matter; it must not be zero)."""
RELAY_SECRET = "sim-relay-secret"
GATEWAY_V4 = IPv4Address("203.0.113.50")
CLIENT_V4 = IPv4Address("198.51.100.50")
RELAY_V4 = (IPv4Address("192.0.2.31"), IPv4Address("192.0.2.32"))
GATEWAY_TUN = IPv4Address("100.96.0.1")
CLIENT_TUN = IPv4Address("100.64.0.2")
"""Outer addresses from RFC 5737, inner from Firezone's client and resource ranges."""


class RelayComponent:
    """A Firezone-like relay as a sans-IO component (no timers)."""

    def __init__(self, server: DevRelay) -> None:
        self.server = server
        self._out: deque[Command] = deque()

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        self._out.extend(self.server.handle(now, local, remote, payload))

    def handle_timeout(self, now: Instant) -> None:
        return None

    def poll_timeout(self) -> Deadline | None:
        return None

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None


class RelayHost(Host):
    """Binds every relayed port its server allocates."""

    def on_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bool:
        handled = super().on_datagram(now, local, remote, payload)  # (relays ignore the ECN bits)
        comp = self.component
        assert isinstance(comp, RelayComponent)
        # Only the addresses whose port is not bound yet are sorted (the same binds in the same order as
        # sorting them all: binding only adds ports); this runs for every datagram the relay receives.
        missing = [a for a in comp.server.relayed_addresses() if a.port not in self.ports]
        for addr in sorted(missing, key=str):
            if addr.port not in self.ports:
                self.bind(addr.port)
        return handled


class Signalling:
    """The portal's part: carries candidate strings between the two endpoints after a delay."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.hosts: dict[str, str] = {}  # endpoint peer id -> host name of that endpoint
        self.log: list[tuple[int, str, str]] = []

    def send(self, sender: str, to_peer: str, event: NodeEvent) -> None:
        host = self.hosts[to_peer]

        def deliver() -> None:
            ep = self.world.hosts[host].component
            assert isinstance(ep, NodeEndpoint)
            self.world.drive(host, lambda now: ep.signal(now, sender, event))

        self.log.append((self.world.now, sender, type(event).__name__))
        self.world.after(SIGNAL_DELAY, deliver)


class NodeEndpoint:
    """A node plus an inner component behind the tunnel (see the module docstring)."""

    def __init__(
        self, name: str, node: Node, inner: Pinger | EchoServer, peer: str, signalling: Signalling
    ) -> None:
        self.name = name
        self.node = node
        self.inner = inner
        self.peer = peer
        self.signalling = signalling
        self._out: deque[Command] = deque()
        self.events: list[NodeEvent] = []

    def signal(self, now: Instant, sender: str, event: NodeEvent) -> None:
        if isinstance(event, NewIceCandidate):
            self.node.add_remote_candidate(sender, event.candidate, now)
        elif isinstance(event, InvalidateIceCandidate):
            self.node.remove_remote_candidate(sender, event.candidate, now)
        self._drain(now)

    def _drain(self, now: Instant) -> None:
        for _ in range(4):
            while (cmd := self.inner.poll_command()) is not None:
                if isinstance(cmd, WriteTun):
                    t = self.node.encapsulate(self.peer, cmd.packet, now)
                    if t is not None:
                        self._out.append(t)
            while (c := self.node.poll_command()) is not None:
                self._out.append(c)
            while (e := self.node.poll_event()) is not None:
                self.events.append(e)
                if isinstance(e, NewIceCandidate | InvalidateIceCandidate):
                    self.signalling.send(self.name, self.peer, e)

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        got = self.node.handle_datagram(now, local, remote, payload)
        if got is not None:
            self.inner.handle_tun_packet(now, got[1])
        self._drain(now)

    def handle_timeout(self, now: Instant) -> None:
        self.node.handle_timeout(now)
        self.inner.handle_timeout(now)
        self._drain(now)

    def poll_timeout(self) -> Deadline | None:
        return earliest(self.node.poll_timeout(), self.inner.poll_timeout())

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None


@dataclass(frozen=True, slots=True)
class ConnectivityScenario:
    kind: str = "direct"
    """``direct``, ``relay-only``, ``relay-lost`` or ``credentials``."""
    duration: Duration = secs(20)
    interval: Duration = millis(250)
    event_at: Duration = secs(8)
    """When the relay is lost or the credentials rotate."""
    loss_ppm: int = 0


def _make_node(world: World, name: str, priv: bytes, controlling: bool) -> Node:
    ent = world.entropy_for(name)
    # The node's entropy is drawn after the limiter's fork, as the trace of every scenario was recorded.
    return wireguard_node(
        priv,
        ent,
        SeededEntropy(ent.random_bytes(16)),
        world.now,
        lambda _t: world.clock.unix_ns(),
        controlling=controlling,
    )


def relay_configs(expiry: int, salt: str) -> list[RelayConfig]:
    user = firezone_username(expiry, salt)
    pw = firezone_password(expiry, RELAY_SECRET, salt)
    return [
        RelayConfig(f"relay-{i}", RelaySocket(SocketAddr(ip, TURN_PORT)), user, pw)
        for i, ip in enumerate(RELAY_V4)
    ]


def build_connectivity_world(world: World, cfg: ConnectivityScenario | None = None) -> World:
    """Populate ``world`` with a gateway, a client, two relays, and the scenario's events."""
    cfg = cfg or ConnectivityScenario()
    keys = world.entropy.fork("connectivity-keys")
    gw_priv, cl_priv, psk = keys.random_bytes(32), keys.random_bytes(32), keys.random_bytes(32)
    link = LinkProfile(latency=millis(20), jitter=millis(5), loss_ppm=cfg.loss_ppm)
    signalling = Signalling(world)
    signalling.hosts = {"gateway": "gateway", "client": "client"}
    for i, ip in enumerate(RELAY_V4):
        server = DevRelay(
            [SocketAddr(ip, TURN_PORT)],
            [SocketAddr(ip, 0)],
            RELAY_SECRET,
            world.entropy_for(f"relay-{i}"),
            wall_clock_secs=world.clock.unix_ns() // 1_000_000_000,
        )
        world.add_host(
            RelayHost(f"relay-{i}", RelayComponent(server), ipv4=ip, udp_ports=(TURN_PORT,), link=link)
        )
    gw = NodeEndpoint(
        "gateway",
        _make_node(world, "gateway", gw_priv, False),
        EchoServer([GATEWAY_TUN]),
        "client",
        signalling,
    )
    rounds = max(0, (cfg.duration - secs(2)) // cfg.interval)
    pinger = Pinger(
        targets=[PingTarget("icmp", GATEWAY_TUN)],
        interval=cfg.interval,
        count=rounds,
        start=Instant(world.now + millis(500)),
        ident=0xC0DE,
        ipv4=CLIENT_TUN,
    )
    cl = NodeEndpoint("client", _make_node(world, "client", cl_priv, True), pinger, "gateway", signalling)
    world.add_host(Host("gateway", gw, ipv4=GATEWAY_V4, udp_ports=(NODE_PORT,), link=link))
    world.add_host(Host("client", cl, ipv4=CLIENT_V4, udp_ports=(NODE_PORT,), link=link))
    if cfg.kind != "direct":
        world.partition(["client"], ["gateway"])
    expiry = world.clock.unix_ns() // 1_000_000_000 + 90 * 86400
    relays = relay_configs(expiry, "salt-1")
    gw_creds, cl_creds = ("gwuf", "gateway-password-22chr"), ("cluf", "client-password-22chrs")

    def on(ep: NodeEndpoint, action: Callable[[Node, Instant], object]) -> None:
        def call(now: Instant) -> None:
            action(ep.node, now)
            ep._drain(now)

        world.drive(ep.name, call)

    on(gw, lambda n, now: n.update_relays([], relays, now))
    on(cl, lambda n, now: n.update_relays([], relays, now))
    gw_pub, cl_pub = public_key(gw_priv), public_key(cl_priv)

    def authorize() -> None:
        on(gw, lambda n, now: n.upsert_connection("client", cl_pub, psk, gw_creds, cl_creds, now))
        on(cl, lambda n, now: n.upsert_connection("gateway", gw_pub, psk, cl_creds, gw_creds, now))

    world.after(millis(200), authorize, label="authorize flow")
    if cfg.kind == "relay-lost":

        def lose() -> None:
            conn = gw.node.connections.get("client")
            rid = conn.relay if conn is not None and conn.relay is not None else "relay-0"
            world.remove_host(rid)
            on(gw, lambda n, now: n.update_relays([rid], [], now))
            on(cl, lambda n, now: n.update_relays([rid], [], now))

        world.at(Instant(world.now + cfg.event_at), lose, label="relay disappears")
    elif cfg.kind == "credentials":
        fresh = relay_configs(expiry + 1, "salt-2")

        def rotate() -> None:
            on(gw, lambda n, now: n.update_relays([], fresh, now))

        world.at(Instant(world.now + cfg.event_at), rotate, label="relays_presence: new credentials")
    return world


CONNECTIVITY_KINDS = ("direct", "relay-only", "relay-lost", "credentials")
"""The scenario names ``firezone-sim run --scenario`` accepts for this module."""


def run_connectivity(world: World, kind: str, duration: Duration | None) -> World:
    cfg = (
        ConnectivityScenario(kind=kind)
        if duration is None
        else ConnectivityScenario(kind=kind, duration=duration)
    )
    build_connectivity_world(world, cfg)
    world.run_until(Instant(cfg.duration))
    return world


def connectivity_summary(world: World) -> str:
    """Per endpoint: the connection's state and path, allocations, and the pings through the tunnel."""
    lines = []
    for name in ("gateway", "client"):
        ep = world.hosts[name].component
        if not isinstance(ep, NodeEndpoint):
            continue
        conn = next(iter(ep.node.connections.values()), None)
        path = "none" if conn is None or conn.peer_socket is None else f"{conn.peer_socket.kind.value}"
        state = "none" if conn is None else conn.state.value
        lines.append(
            f"{name}: connection {state}, path {path}, relays {', '.join(sorted(ep.node.allocations))}"
        )
        if isinstance(ep.inner, Pinger):
            res = ep.inner.results[0]
            lines.append(f"  pings through the tunnel: sent {res.sent} received {res.received}")
    return "\n".join(lines)
