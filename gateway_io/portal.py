"""The portal WebSocket, IO side: carries out the channel's commands and reports what happened.

No decisions here (R7): :class:`PortalIO` opens a WebSocket when told (:class:`ConnectPortal`), writes the
frames it is given, closes when told, and reports every outcome as an input: the upgrade succeeded
(:class:`PortalConnected`), failed (:class:`PortalConnectFailed`, with the HTTP status of a refused upgrade,
and ``certificate_invalid`` when TLS verification failed), a frame arrived, the connection ended, a write
failed. Retries, backoff, timeouts and heartbeats are the core's (``gateway_core.portal.channel``).

TLS verifies the portal's certificate against the system store by default (``wss://``); ``ws://`` is for
local development. As Firezone: no ``Origin`` header, no subprotocol, no compression, no WebSocket pings
(the Phoenix heartbeat is the liveness check), and the gateway's own User-Agent.

:class:`PortalDriver` is a minimal driver loop for a :class:`PortalChannel` alone (used by the dev tools
and the tests until the gateway's full driver takes over): it feeds inputs and deadlines to the channel and
executes its commands.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from gateway_core.clock import Instant
from gateway_core.commands import Command
from gateway_core.inputs import Input
from gateway_core.portal.channel import (
    ClosePortal,
    ConnectPortal,
    PortalChannel,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalEvent,
    PortalFailed,
    PortalFrameReceived,
    PortalSendFailed,
    PortalStopped,
    SendPortalFrame,
)

log = logging.getLogger("gateway_io.portal")

MAX_FRAME = 1 << 20
"""Largest frame accepted (1 MiB, the websockets default; portal frames are a few kB)."""

OUTBOX_SIZE = 1024
"""Frames waiting to be written on one connection (the core holds at most 33 queued plus heartbeats)."""


@dataclass(slots=True)
class _Conn:
    conn: int
    send: MemoryObjectSendStream[str]
    ws: ClientConnection | None = None
    cancel: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Covers the whole connection task (connect, then reading)."""
    writer: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    """Covers the writer task (a sibling, so that a reader error is a plain exception, not a group)."""


class PortalIO:
    """Executes portal commands on real WebSockets; see the module docstring."""

    def __init__(
        self,
        tg: TaskGroup,
        report: Callable[[Input], None],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._tg = tg
        self._report = report
        self._ssl = ssl_context
        self._conns: dict[int, _Conn] = {}

    def execute(self, cmd: Command) -> bool:
        """Carry out one portal command; ``False`` if ``cmd`` is not one."""
        match cmd:
            case ConnectPortal():
                for old in list(self._conns):
                    self._abort(old)
                send, recv = anyio.create_memory_object_stream[str](OUTBOX_SIZE)
                c = _Conn(cmd.conn, send)
                self._conns[cmd.conn] = c
                self._tg.start_soon(self._run, c, cmd, recv)
            case SendPortalFrame(conn=conn, text=text):
                target = self._conns.get(conn)
                if target is None:
                    self._report(PortalSendFailed(conn, text, "no such connection"))
                    return True
                try:
                    target.send.send_nowait(text)
                except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError) as e:
                    self._report(PortalSendFailed(conn, text, f"outbox: {type(e).__name__}"))
            case ClosePortal(conn=conn, graceful=graceful):
                target = self._conns.get(conn)
                if target is not None:
                    if graceful and target.ws is not None:
                        target.send.close()  # the writer closes the WebSocket after the queued frames
                    else:
                        self._abort(conn)
            case _:
                return False
        return True

    def _abort(self, conn: int) -> None:
        c = self._conns.pop(conn, None)
        if c is not None:
            c.send.close()
            c.cancel.cancel()
            c.writer.cancel()

    def _ssl_for(self, cmd: ConnectPortal) -> ssl.SSLContext | None:
        if not cmd.url.tls:
            return None
        return self._ssl if self._ssl is not None else ssl.create_default_context()

    async def _run(self, c: _Conn, cmd: ConnectPortal, outbox: MemoryObjectReceiveStream[str]) -> None:
        with c.cancel:
            try:
                ws = await connect(
                    cmd.url.url,
                    ssl=self._ssl_for(cmd),
                    user_agent_header=cmd.user_agent,
                    origin=None,
                    compression=None,
                    proxy=None,
                    open_timeout=None,  # the core owns the connect timeout
                    ping_interval=None,
                    max_size=MAX_FRAME,
                    close_timeout=1,
                )
            except InvalidStatus as e:
                self._report(PortalConnectFailed(c.conn, "upgrade refused", status=e.response.status_code))
                return
            except ssl.SSLCertVerificationError as e:
                self._report(
                    PortalConnectFailed(c.conn, f"invalid peer certificate: {e}", certificate_invalid=True)
                )
                return
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError, EOFError) as e:
                self._report(PortalConnectFailed(c.conn, f"{type(e).__name__}: {e}"))
                return
            c.ws = ws
            self._report(PortalConnected(c.conn))
            reason = "closed"
            self._tg.start_soon(self._writer, c, ws, outbox)
            try:
                async for msg in ws:
                    self._report(PortalFrameReceived(c.conn, msg))
            except ConnectionClosed as e:
                reason = f"{e}"
            except OSError as e:
                reason = f"{type(e).__name__}: {e}"
            finally:
                c.writer.cancel()
                if self._conns.get(c.conn) is c:
                    del self._conns[c.conn]
                with anyio.CancelScope(shield=True):
                    await ws.close()
            if ws.close_code is not None and reason == "closed":
                reason = f"closed ({ws.close_code} {ws.close_reason})".strip()
            self._report(PortalDisconnected(c.conn, reason))
        if c.cancel.cancel_called and c.ws is None:
            log.debug("portal connection %d abandoned while connecting", c.conn)

    async def _writer(self, c: _Conn, ws: ClientConnection, outbox: MemoryObjectReceiveStream[str]) -> None:
        with c.writer:
            async with outbox:
                async for text in outbox:
                    try:
                        await ws.send(text)
                    except (ConnectionClosed, OSError) as e:
                        self._report(PortalSendFailed(c.conn, text, f"{type(e).__name__}: {e}"))
                        return
            # The outbox was closed by a graceful ClosePortal: close after the last frame.
            with contextlib.suppress(ConnectionClosed, OSError):
                await ws.close()


class PortalDriver:
    """A small loop driving one :class:`PortalChannel` over :class:`PortalIO` (R1-R3 in miniature)."""

    def __init__(
        self,
        channel: PortalChannel,
        on_event: Callable[[Instant, PortalEvent], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.channel = channel
        self.on_event = on_event
        self.ssl_context = ssl_context
        self.clock = clock
        self.events: list[PortalEvent] = []
        self.done = anyio.Event()
        # Unbounded: IO tasks report synchronously and must never fail to; the loop drains in batches.
        self._send, self._recv = anyio.create_memory_object_stream[Input](math.inf)

    def now(self) -> Instant:
        return Instant(self.clock())

    def report(self, inp: Input) -> None:
        self._send.send_nowait(inp)

    def _feed(self, io: PortalIO, inp: Input) -> None:
        if not isinstance(inp, _Nudge):
            self.channel.handle_input(self.now(), inp)
        self._drain(io)

    def _drain(self, io: PortalIO) -> None:
        ch = self.channel
        while (cmd := ch.poll_command()) is not None:
            io.execute(cmd)
        while (ev := ch.poll_event()) is not None:
            self.events.append(ev)
            if self.on_event is not None:
                self.on_event(self.now(), ev)
            if isinstance(ev, PortalFailed | PortalStopped):
                self.done.set()

    async def run(self, started: Callable[[PortalIO], None] | None = None) -> None:
        """Run until the channel stops or fails (or the caller cancels)."""
        async with anyio.create_task_group() as tg:
            io = PortalIO(tg, self.report, self.ssl_context)
            self.channel.start(self.now())
            self._drain(io)
            if started is not None:
                started(io)
            while not self.done.is_set():
                deadline = self.channel.poll_timeout()
                wait = None if deadline is None else max(0, deadline.at - self.clock()) / 1e9
                inp: Input | None = None
                with anyio.move_on_after(wait):
                    inp = await self._recv.receive()
                if inp is not None:
                    self._feed(io, inp)
                    # R9 in miniature: a batch of what is already there, then the timers.
                    for _ in range(64):
                        try:
                            more = self._recv.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        self._feed(io, more)
                deadline = self.channel.poll_timeout()
                if deadline is not None and deadline.at <= self.clock():
                    self.channel.handle_timeout(self.now())
                    self._drain(io)
            tg.cancel_scope.cancel()

    def call(self, fn: Callable[[Instant], object]) -> None:
        """Call into the channel from another task (e.g. push a message); the loop executes what it
        orders on its next turn (it is nudged awake)."""
        fn(self.now())
        self._send.send_nowait(_Nudge())


@dataclass(frozen=True, slots=True)
class _Nudge(Input):
    """Internal: wakes the driver loop; never reaches the channel."""
