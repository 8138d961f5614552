"""The health check: ``GET /healthz`` on ``HEALTH_CHECK_ADDR``, HTTP/1.1 with h11 (as Firezone's
``rust/bin-shared/src/http_health_check.rs``).

``/healthz`` answers **200** with an empty body while the gateway is healthy and **400** when the
``healthy`` callable says otherwise (Firezone always passes a constant "healthy", so in practice it is
always 200, independent of portal or tunnel state). Two paths beyond the reference, served when the
daemon passes them: ``/readyz`` is **200** while ``ready()`` holds (the portal channel joined and the
interface configured) and **503** otherwise, for load balancers and orchestrators that must not send
clients to a gateway that cannot serve them yet; ``/metrics`` is **200** with the Prometheus text
exposition (:mod:`gateway_io.metrics`). Any other path is **404**, any other method than GET or HEAD
**405**. A bind failure (port in use) is logged and the gateway runs on without a health
endpoint, as Firezone does. Each connection is bounded in time and size so a slow or hostile client
cannot hold it; connections are served one request at a time, keep-alive honoured.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import h11

log = logging.getLogger(__name__)

PATH = b"/healthz"
"""The reference's only path (``http_health_check.rs:36``)."""
READY_PATH = b"/readyz"
"""Readiness (ours): 200 while ``ready()``, else 503."""
METRICS_PATH = b"/metrics"
"""The Prometheus scrape path (ours; Prometheus' default ``metrics_path``)."""

CONNECTION_TIMEOUT = 10.0
"""Seconds a connection may stay open in total; a health probe needs milliseconds."""

MAX_REQUEST_BYTES = 16 * 1024
"""Largest request head accepted (h11's incomplete-event limit); probes send a few hundred bytes."""

READ_SIZE = 4096
"""Bytes read per ``receive`` call."""


def _response(
    status: int, reason: bytes, body: bytes = b"", content_type: str | None = None, head: bool = False
) -> list[h11.Event]:
    headers = [("content-length", str(len(body))), ("server", "firezone-gateway-py")]
    if content_type is not None:
        headers.append(("content-type", content_type))
    events: list[h11.Event] = [h11.Response(status_code=status, headers=headers, reason=reason)]
    if body and not head:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


def route(
    method: bytes, target: bytes, healthy: bool, ready: bool | None = None, metrics: bool = False
) -> tuple[int, bytes]:
    """``(status, reason)`` for a request (pure, for the tests). ``ready`` is ``None`` and ``metrics``
    false when the daemon serves no ``/readyz`` or ``/metrics`` (then they are 404 as any unknown path)."""
    path = target.split(b"?", 1)[0]
    if path == PATH:
        ok = (200, b"OK") if healthy else (400, b"Bad Request")
    elif path == READY_PATH and ready is not None:
        ok = (200, b"OK") if ready else (503, b"Service Unavailable")
    elif path == METRICS_PATH and metrics:
        ok = (200, b"OK")
    else:
        return 404, b"Not Found"
    if method not in (b"GET", b"HEAD"):
        return 405, b"Method Not Allowed"
    return ok


async def _serve_connection(stream: anyio.abc.SocketStream, server: HealthServer) -> None:
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
                    await _send(stream, conn, await server.respond(event.method, event.target))
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
        self,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        healthy: Callable[[], bool],
        ready: Callable[[], bool] | None = None,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.listener = listener
        self.healthy = healthy
        self.ready = ready
        self.metrics = metrics

    async def respond(self, method: bytes, target: bytes) -> list[h11.Event]:
        ready = None if self.ready is None else self.ready()
        status, reason = route(method, target, self.healthy(), ready, self.metrics is not None)
        head = method == b"HEAD"
        if status == 200 and self.metrics is not None and target.split(b"?", 1)[0] == METRICS_PATH:
            from gateway_io.metrics import PROMETHEUS_CONTENT_TYPE

            return _response(status, reason, await self.metrics(), PROMETHEUS_CONTENT_TYPE, head)
        return _response(status, reason, head=head)

    @classmethod
    async def bind(
        cls,
        address: tuple[str, int],
        healthy: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] | None = None,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
    ) -> HealthServer | None:
        """Listen on ``address``; ``None`` (logged) if that fails, as Firezone silently runs without."""
        host, port = address
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as e:
            log.warning("health check not available on %s:%d: %s", host, port, e)
            return None
        return cls(listener, healthy, ready, metrics)

    @property
    def local_address(self) -> tuple[str, int]:
        sockname = self.listener.extra(anyio.abc.SocketAttribute.local_address)
        assert isinstance(sockname, tuple)
        return str(sockname[0]), int(sockname[1])

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            task_status.started()
            await self.listener.serve(lambda stream: _serve_connection(stream, self), tg)

    async def aclose(self) -> None:
        await self.listener.aclose()


async def serve_health_check(
    address: tuple[str, int],
    healthy: Callable[[], bool] = lambda: True,
    ready: Callable[[], bool] | None = None,
    metrics: Callable[[], Awaitable[bytes]] | None = None,
    *,
    task_status: anyio.abc.TaskStatus[tuple[str, int] | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Bind and serve until cancelled; ``task_status`` gets the bound address (``None``: not bound)."""
    server = await HealthServer.bind(address, healthy, ready, metrics)
    if server is None:
        task_status.started(None)
        return
    async with server.listener:
        task_status.started(server.local_address)
        await server.serve()
