"""The stub portal and the portal-client host of the simulator (text frames over simulated streams).

Theory of operation
-------------------
The world's reliable streams carry whole text frames (:meth:`sim.world.World.stream_connect`). A
WebSocket upgrade is simulated by the first frames of a stream: the client sends
``GET <path?query>\\nUser-Agent: <ua>``; the portal answers ``HTTP 101`` (then speaks Phoenix) or
``HTTP <status> <body>`` and closes the stream.

- :class:`StubPortal` is a pure component wrapping :class:`devportal.DevPortal` (the same logic the real
  ``firezone-dev-portal`` serves): it authenticates upgrades, runs one
  :class:`devportal.PhoenixSocket` per accepted stream, closes sockets idle for 37 s (the portal's idle
  timeout), and exposes the portal for scripting through :meth:`StubPortal.act` (grant, revoke, push
  relays, refuse upgrades, revoke the token, make the channel crash with ``phx_error``...). Its commands
  (:class:`StreamSend`, :class:`StreamClose`) are carried out by :class:`StubPortalHost`.
- :class:`PortalClientHost` drives a :class:`gateway_core.portal.channel.PortalChannel`: ``ConnectPortal``
  opens a stream to the portal's address, ``SendPortalFrame`` and ``ClosePortal`` map to stream sends and
  closes, and stream events come back as the channel's inputs (a refused upgrade with its status). The
  channel's events are logged with their time in :attr:`ChannelComponent.events`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import parse_qsl, urlsplit

from devportal import DevPortal, PhoenixSocket, Refusal, load_config
from devportal.config import EXAMPLE_CONFIG
from gateway_core.addr import SocketAddr
from gateway_core.clock import NANOS_PER_SEC, Duration, Instant, secs
from gateway_core.commands import Command
from gateway_core.contract import Deadline
from gateway_core.errors import UsageError
from gateway_core.portal.channel import (
    ChannelConfig,
    ClosePortal,
    ConnectPortal,
    PortalChannel,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalEvent,
    PortalFrameReceived,
    SendPortalFrame,
)
from gateway_core.portal.login import login_url, user_agent
from gateway_core.stats import Stats
from sim.host import Host, StreamClosed, StreamEvent, StreamFrame, StreamOpened
from sim.net import LinkProfile
from sim.world import World

PORTAL_PORT = 443
IDLE_TIMEOUT: Duration = secs(37)
"""The portal closes a socket that received nothing for 37 s (``endpoint.ex:28``)."""


@dataclass(frozen=True, slots=True)
class StreamSend(Command):
    stream: int
    text: str


@dataclass(frozen=True, slots=True)
class StreamClose(Command):
    stream: int
    reason: str


@dataclass(slots=True)
class _Peer:
    sock: PhoenixSocket | None = None
    conn: int = 0
    last_rx: Instant = Instant(0)


class StubPortal:
    """The portal as a pure component; see the module docstring."""

    def __init__(self, portal: DevPortal, epoch_unix: int = 1_700_000_000) -> None:
        self.portal = portal
        self.epoch_unix = epoch_unix
        self.stats = Stats()
        self._now = Instant(0)
        self._peers: dict[int, _Peer] = {}
        self._out: deque[Command] = deque()

    def _advance(self, now: Instant) -> None:
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        self._now = now
        self.portal.unix_now = self.epoch_unix + now // NANOS_PER_SEC

    # --- driving contract

    def poll_command(self) -> Command | None:
        return self._out.popleft() if self._out else None

    def poll_timeout(self) -> Deadline | None:
        live = [p.last_rx for p in self._peers.values() if p.sock is not None]
        if not live:
            return None
        return Deadline(Instant(max(min(live) + IDLE_TIMEOUT, self._now)), "portal idle timeout")

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)
        for sid, p in sorted(self._peers.items()):
            if p.sock is not None and now >= p.last_rx + IDLE_TIMEOUT:
                self.stats.incr("idle_closes")
                self._close(sid, "idle timeout")

    def handle_stream_event(self, now: Instant, event: StreamEvent) -> None:
        self._advance(now)
        match event:
            case StreamOpened(stream=sid):
                self._peers[sid] = _Peer(last_rx=now)
            case StreamFrame(stream=sid, text=text):
                p = self._peers.get(sid)
                if p is None:
                    return
                p.last_rx = now
                if p.sock is None:
                    self._upgrade(sid, p, text)
                else:
                    p.sock.handle_text(text)
                self._flush()
            case StreamClosed(stream=sid):
                p = self._peers.pop(sid, None)
                if p is not None and p.sock is not None:
                    self.portal.disconnect(p.conn)

    # --- internals

    def _upgrade(self, sid: int, p: _Peer, request: str) -> None:
        first, _, rest = request.partition("\n")
        method, _, target = first.partition(" ")
        ua = rest[len("User-Agent: ") :] if rest.startswith("User-Agent: ") else None
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        result = self.portal.authenticate(parts.path, query, ua) if method == "GET" else Refusal(400, "Bad")
        if isinstance(result, Refusal):
            self.stats.incr(f"refused_{result.status}")
            self._out.append(StreamSend(sid, f"HTTP {result.status} {result.body}"))
            self._close(sid, f"refused {result.status}")
            return
        p.conn, p.sock = self.portal.connect(result, query.get("vsn"))
        self._out.append(StreamSend(sid, "HTTP 101"))

    def _close(self, sid: int, reason: str) -> None:
        p = self._peers.pop(sid, None)
        if p is not None and p.sock is not None:
            self.portal.disconnect(p.conn)
        self._out.append(StreamClose(sid, reason))

    def _flush(self) -> None:
        for sid, p in sorted(self._peers.items()):
            if p.sock is None:
                continue
            while (frame := p.sock.poll_frame()) is not None:
                self._out.append(StreamSend(sid, frame))
            if self.portal.kicked(p.conn):
                self._close(sid, "kicked")

    def act(self, now: Instant, action: object) -> None:
        """Run a scripted portal action (a callable taking the :class:`DevPortal`), then send its pushes."""
        self._advance(now)
        if callable(action):
            action(self.portal)
        self._flush()

    def sockets(self) -> list[PhoenixSocket]:
        return [p.sock for _, p in sorted(self._peers.items()) if p.sock is not None]


class StubPortalHost(Host):
    """Carries out the stub portal's stream commands."""

    def __init__(
        self, name: str, portal: StubPortal, *, ipv4: IPv4Address | str, link: LinkProfile | None = None
    ) -> None:
        super().__init__(name, portal, ipv4=ipv4, link=link, stream_ports=(PORTAL_PORT,))
        self.portal = portal

    def execute(self, now: Instant, command: Command) -> None:
        match command:
            case StreamSend(stream=sid, text=text):
                self.world.stream_send(self, sid, text)
            case StreamClose(stream=sid, reason=reason):
                self.world.stream_close(self, sid, reason)
            case _:
                super().execute(now, command)


class ChannelComponent:
    """Wraps a :class:`PortalChannel` for a host: logs its events (with time) as its commands are drained."""

    def __init__(self, channel: PortalChannel) -> None:
        self.channel = channel
        self.events: list[tuple[Instant, PortalEvent]] = []
        self._now = Instant(0)

    def handle_timeout(self, now: Instant) -> None:
        self._now = now
        self.channel.handle_timeout(now)

    def poll_timeout(self) -> Deadline | None:
        return self.channel.poll_timeout()

    def poll_command(self) -> Command | None:
        while (ev := self.channel.poll_event()) is not None:
            self.events.append((self._now, ev))
        return self.channel.poll_command()


class PortalClientHost(Host):
    """Drives a portal channel over simulated streams to ``portal``; see the module docstring."""

    def __init__(
        self,
        name: str,
        channel: PortalChannel,
        portal: SocketAddr,
        *,
        ipv4: IPv4Address | str | None = None,
        ipv6: IPv6Address | str | None = None,
        link: LinkProfile | None = None,
    ) -> None:
        self.comp = ChannelComponent(channel)
        super().__init__(name, self.comp, ipv4=ipv4, ipv6=ipv6, link=link)
        self.channel = channel
        self.portal_addr = portal
        self._stream_of: dict[int, int] = {}  # conn -> stream
        self._conn_of: dict[int, int] = {}  # stream -> conn
        self._upgraded: set[int] = set()
        self._requests: dict[int, str] = {}

    def _input(self, now: Instant, inp: object) -> None:
        self.comp._now = now
        self.channel.handle_input(now, inp)  # type: ignore[arg-type]

    def execute(self, now: Instant, command: Command) -> None:
        match command:
            case ConnectPortal(conn=conn, url=url, user_agent=ua):
                sid = self.world.stream_connect(self, self.portal_addr)
                self._stream_of[conn] = sid
                self._conn_of[sid] = conn
                self._requests[sid] = f"GET {url.path_query}\nUser-Agent: {ua}"
            case SendPortalFrame(conn=conn, text=text):
                target = self._stream_of.get(conn)
                if target is not None:
                    self.world.stream_send(self, target, text)
            case ClosePortal(conn=conn):
                closing = self._stream_of.pop(conn, None)
                if closing is not None:
                    self._conn_of.pop(closing, None)
                    self.world.stream_close(self, closing, "client close")
            case _:
                super().execute(now, command)

    def on_stream_event(self, now: Instant, event: StreamEvent) -> bool:
        conn = self._conn_of.get(event.stream)
        if conn is None:
            return True  # a stream the channel already gave up
        match event:
            case StreamOpened(stream=sid):
                self.world.stream_send(self, sid, self._requests.pop(sid, "GET /"))
            case StreamFrame(stream=sid, text=text):
                if sid in self._upgraded:
                    self._input(now, PortalFrameReceived(conn, text))
                elif text == "HTTP 101":
                    self._upgraded.add(sid)
                    self._input(now, PortalConnected(conn))
                else:
                    words = text.split(" ", 2)
                    status = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
                    self._forget(sid)
                    self.world.stream_close(self, sid, "refused")
                    self._input(now, PortalConnectFailed(conn, text, status=status))
            case StreamClosed(stream=sid, reason=reason):
                upgraded = sid in self._upgraded
                self._forget(sid)
                if upgraded:
                    self._input(now, PortalDisconnected(conn, reason))
                else:
                    self._input(now, PortalConnectFailed(conn, reason))
        return True

    def _forget(self, sid: int) -> None:
        conn = self._conn_of.pop(sid, None)
        if conn is not None and self._stream_of.get(conn) == sid:
            del self._stream_of[conn]
        self._upgraded.discard(sid)
        self._requests.pop(sid, None)


@dataclass(slots=True)
class PortalScene:
    """What :func:`build_portal_world` put in the world."""

    stub: StubPortal
    portal_host: StubPortalHost
    channel: PortalChannel
    gateway_host: PortalClientHost

    def act(self, world: World, action: object) -> None:
        """Run a scripted portal action now (e.g. ``lambda p: p.authorize(client, resource)``)."""
        world.drive(self.portal_host, lambda now: self.stub.act(now, action))


def build_portal_world(
    world: World,
    *,
    config_text: str = EXAMPLE_CONFIG,
    portal_ip: str = "198.51.100.10",
    gateway_ip: str = "203.0.113.5",
    firezone_id: str = "gw-sim-1",
    channel_config: ChannelConfig | None = None,
) -> PortalScene:
    """A stub portal and a gateway's portal channel in ``world``; the channel starts connecting now."""
    stub = StubPortal(DevPortal(load_config(config_text)))
    portal_host = StubPortalHost("portal", stub, ipv4=portal_ip)
    world.add_host(portal_host)
    public_key = world.entropy_for("gateway-key").random_bytes(32)
    url = login_url("wss://portal.sim", stub.portal.token, firezone_id, "gw-sim", public_key)
    channel = PortalChannel(
        url, user_agent("Debian", "12", "x86_64", None), world.entropy_for("gateway"), channel_config
    )
    gw = PortalClientHost(
        "gateway", channel, SocketAddr(IPv4Address(portal_ip), PORTAL_PORT), ipv4=gateway_ip
    )
    world.add_host(gw)
    world.drive(gw, channel.start)
    return PortalScene(stub, portal_host, channel, gw)
