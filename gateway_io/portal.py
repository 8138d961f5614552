"""The portal WebSocket, IO side: carries out the channel's commands and reports what happened.

No decisions here (R7): :class:`PortalIO` opens a WebSocket when told (:class:`ConnectPortal`), writes the
frames it is given, closes when told, and reports every outcome as an input: the upgrade succeeded
(:class:`PortalConnected`), failed (:class:`PortalConnectFailed`, with the HTTP status of a refused upgrade,
and ``certificate_invalid`` when TLS verification failed), a frame arrived, the connection ended, a write
failed. Retries, backoff, timeouts and heartbeats are the core's (``gateway_core.portal.channel``).

TLS verifies the portal's certificate against the system store by default (``wss://``); ``ws://`` is for
local development. As Firezone: no ``Origin`` header, no subprotocol, no compression, no WebSocket pings
(the Phoenix heartbeat is the liveness check), and the gateway's own User-Agent.

The gateway's driver (:mod:`gateway_io.driver`) drives the channel and executes these commands; the
tests drive a channel alone with a small loop of their own (``tests/io/portal_driver.py``).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from gateway_core.commands import Command
from gateway_core.inputs import Input
from gateway_core.portal.channel import (
    ClosePortal,
    ConnectPortal,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalFrameReceived,
    PortalSendFailed,
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
