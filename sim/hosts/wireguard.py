"""WireGuard tunnel endpoints for the simulator, and the ``wireguard`` scenario.

Theory of operation: a :class:`TunnelEndpoint` is a sans-IO component made of two children, a
:class:`~gateway_core.wireguard.peer.WireGuardPeer` and an inner component (a
:class:`~sim.hosts.echo.Pinger` or :class:`~sim.hosts.echo.EchoServer`) that lives "behind the TUN".
The inner component's raw IP packets (``WriteTun``) are encapsulated and sent as UDP to the other
endpoint; UDP datagrams from it are decapsulated and the IP packet handed to the inner component. Like
every parent (R8) it drains its children inside its own calls: inner commands, then the peer's queued
datagrams (handshakes, cookie replies, keepalives). Its deadline is the earlier of the two children's.

The ``wireguard`` scenario: two hosts, ``wg-a`` (pinger behind the tunnel) and ``wg-b`` (echo server
behind the tunnel), joined by lossy, jittery links; ICMP echo flows inside the tunnel, so the pcap shows
only WireGuard messages on UDP 51820 (tshark decodes them with ``-d udp.port==51820,wg``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address

from gateway_core.addr import SocketAddr
from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.commands import Command, Transmit, WriteTun
from gateway_core.contract import Deadline, earliest
from gateway_core.errors import UsageError
from gateway_core.wireguard import WireGuardPeer
from gateway_core.wireguard.crypto import public_key
from sim.host import Host
from sim.hosts.echo import EchoServer, Pinger, PingTarget
from sim.net import LinkProfile
from sim.world import World

WG_PORT = 51820
"""WireGuard's registered default port; tshark's WireGuard dissector looks for it."""


class TunnelEndpoint:
    """A WireGuard peer with one inner component behind it (see the module docstring)."""

    def __init__(
        self, peer: WireGuardPeer, inner: Pinger | EchoServer, local: SocketAddr, remote: SocketAddr
    ):
        self.peer = peer
        self.inner = inner
        self.local = local
        self.remote = remote
        self._out: deque[Command] = deque()

    def _drain(self, now: Instant) -> None:
        while (cmd := self.inner.poll_command()) is not None:
            if isinstance(cmd, WriteTun):
                out = self.peer.encapsulate(now, cmd.packet)
                if out is not None:
                    self._out.append(Transmit(self.local, self.remote, out))
            else:
                raise UsageError(f"tunnel endpoint: the inner component may only write IP packets: {cmd!r}")
        while (d := self.peer.poll_transmit()) is not None:
            self._out.append(Transmit(self.local, self.remote, d))
        while self.peer.poll_event() is not None:
            pass

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        packet = self.peer.decapsulate(now, payload, remote.ip)
        if packet is not None:
            self.inner.handle_tun_packet(now, packet)
        self._drain(now)

    def handle_timeout(self, now: Instant) -> None:
        self.peer.handle_timeout(now)
        self.inner.handle_timeout(now)
        self._drain(now)

    def poll_timeout(self) -> Deadline | None:
        return earliest(self.peer.poll_timeout(), self.inner.poll_timeout())

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None


@dataclass(frozen=True, slots=True)
class WireGuardScenario:
    """The ``wireguard`` scenario's knobs."""

    duration: Duration = secs(10)
    interval: Duration = millis(250)
    loss_ppm: int = 50_000
    """5 % loss on each access link: handshakes get lost too and are retransmitted."""


A_ADDR = IPv4Address("203.0.113.41")
B_ADDR = IPv4Address("203.0.113.42")
A_TUN = IPv4Address("100.64.0.1")
B_TUN = IPv4Address("100.96.0.1")
"""Outer addresses from RFC 5737; inner addresses from Firezone's client (100.64/11) and resource ranges."""


def build_wireguard_world(world: World, cfg: WireGuardScenario | None = None) -> World:
    """Populate ``world`` with two WireGuard endpoints carrying ICMP echo over lossy links."""
    cfg = cfg or WireGuardScenario()
    keys = world.entropy.fork("wireguard-keys")
    a_priv, b_priv, psk = keys.random_bytes(32), keys.random_bytes(32), keys.random_bytes(32)
    wall = world.clock.unix_ns()
    now = world.now
    a_sock, b_sock = SocketAddr(A_ADDR, WG_PORT), SocketAddr(B_ADDR, WG_PORT)
    rounds = max(0, (cfg.duration - secs(1)) // cfg.interval)
    pinger = Pinger(
        targets=[PingTarget("icmp", B_TUN)],
        interval=cfg.interval,
        count=rounds,
        start=Instant(now + millis(100)),
        ident=0x5167,
        ipv4=A_TUN,
    )
    peer_a = WireGuardPeer(
        static_private=a_priv,
        peer_public=public_key(b_priv),
        psk=psk,
        global_index=0x00A001,
        entropy=world.entropy_for("wg-a"),
        now=now,
        wall_unix_ns=wall,
    )
    peer_b = WireGuardPeer(
        static_private=b_priv,
        peer_public=public_key(a_priv),
        psk=psk,
        global_index=0x00B002,
        entropy=world.entropy_for("wg-b"),
        now=now,
        wall_unix_ns=wall,
    )
    link = LinkProfile(latency=millis(20), jitter=millis(10), loss_ppm=cfg.loss_ppm)
    world.add_host(
        Host(
            "wg-a",
            TunnelEndpoint(peer_a, pinger, a_sock, b_sock),
            ipv4=A_ADDR,
            udp_ports=(WG_PORT,),
            link=link,
        )
    )
    world.add_host(
        Host(
            "wg-b",
            TunnelEndpoint(peer_b, EchoServer([B_TUN]), b_sock, a_sock),
            ipv4=B_ADDR,
            udp_ports=(WG_PORT,),
            link=link,
        )
    )
    return world


def wireguard_summary(world: World) -> str:
    """Per endpoint: pings sent/received, handshakes and WireGuard drops (for ``firezone-sim``)."""
    lines = []
    for name, host in world.hosts.items():
        comp = host.component
        if not isinstance(comp, TunnelEndpoint):
            continue
        snap = comp.peer.stats.snapshot()
        lines.append(f"{name} wireguard: " + (", ".join(f"{k} {v}" for k, v in snap.items()) or "idle"))
        if isinstance(comp.inner, Pinger):
            for target, res in zip(comp.inner.targets, comp.inner.results, strict=True):
                lines.append(
                    f"  through the tunnel, {target.describe()}: sent {res.sent} received {res.received}"
                    f" duplicates {res.duplicates}"
                )
    return "\n".join(lines)
