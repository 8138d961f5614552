"""The health check: ``GET /healthz`` on ``HEALTH_CHECK_ADDR``, HTTP/1.1 with h11 (as Firezone's
``rust/bin-shared/src/http_health_check.rs``).

``/healthz`` answers **200** with an empty body while the gateway is healthy and **400** when the
``healthy`` callable says otherwise (Firezone always passes a constant "healthy", so in practice it is
always 200, independent of portal or tunnel state). Any other path is **404**, any other method on
``/healthz`` **405**. A bind failure (port in use) is logged and the gateway runs on without a health
endpoint, as Firezone does. Each connection is bounded in time and size so a slow or hostile client
cannot hold it; connections are served one request at a time, keep-alive honoured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc
import h11

log = logging.getLogger(__name__)

PATH = b"/healthz"
"""The only path served (``http_health_check.rs:36``)."""

CONNECTION_TIMEOUT = 10.0
"""Seconds a connection may stay open in total; a health probe needs milliseconds."""

MAX_REQUEST_BYTES = 16 * 1024
"""Largest request head accepted (h11's incomplete-event limit); probes send a few hundred bytes."""

READ_SIZE = 4096
"""Bytes read per ``receive`` call."""


def _response(status: int, reason: bytes) -> list[h11.Event]:
    headers = [("content-length", "0"), ("server", "firezone-gateway-py")]
    return [h11.Response(status_code=status, headers=headers, reason=reason), h11.EndOfMessage()]


def route(method: bytes, target: bytes, healthy: bool) -> tuple[int, bytes]:
    """``(status, reason)`` for a request (pure, for the tests)."""
    path = target.split(b"?", 1)[0]
    if path != PATH:
        return 404, b"Not Found"
    if method not in (b"GET", b"HEAD"):
        return 405, b"Method Not Allowed"
    return (200, b"OK") if healthy else (400, b"Bad Request")


async def _serve_connection(stream: anyio.abc.SocketStream, healthy: Callable[[], bool]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    with anyio.move_on_after(CONNECTION_TIMEOUT):
        async with stream:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await _send(stream, conn, _response(e.error_status_hint, b"Bad Request"))
                    return
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive(READ_SIZE)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        data = b""
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    status, reason = route(event.method, event.target, healthy())
                    await _send(stream, conn, _response(status, reason))
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if event is h11.PAUSED:
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    try:
                        conn.start_next_cycle()
                    except h11.LocalProtocolError:
                        return
                # Data / EndOfMessage of the request: nothing to do.


async def _send(stream: anyio.abc.SocketStream, conn: h11.Connection, events: list[h11.Event]) -> None:
    for event in events:
        data = conn.send(event)
        if data:
            await stream.send(data)


class HealthServer:
    """A bound health-check listener; :meth:`serve` runs it until cancelled."""

    def __init__(
        self, listener: anyio.abc.Listener[anyio.abc.SocketStream], healthy: Callable[[], bool]
    ) -> None:
        self.listener = listener
        self.healthy = healthy

    @classmethod
    async def bind(
        cls, address: tuple[str, int], healthy: Callable[[], bool] = lambda: True
    ) -> HealthServer | None:
        """Listen on ``address``; ``None`` (logged) if that fails, as Firezone silently runs without."""
        host, port = address
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as e:
            log.warning("health check not available on %s:%d: %s", host, port, e)
            return None
        return cls(listener, healthy)

    @property
    def local_address(self) -> tuple[str, int]:
        sockname = self.listener.extra(anyio.abc.SocketAttribute.local_address)
        assert isinstance(sockname, tuple)
        return str(sockname[0]), int(sockname[1])

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            task_status.started()
            await self.listener.serve(lambda stream: _serve_connection(stream, self.healthy), tg)

    async def aclose(self) -> None:
        await self.listener.aclose()


async def serve_health_check(
    address: tuple[str, int],
    healthy: Callable[[], bool] = lambda: True,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int] | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and serve until cancelled; ``task_status`` gets the bound address (``None``: not bound)."""
    server = await HealthServer.bind(address, healthy)
    if server is None:
        task_status.started(None)
        return
    async with server.listener:
        task_status.started(server.local_address)
        await server.serve()
