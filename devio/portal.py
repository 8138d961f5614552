"""``firezone-dev-portal``: the dev portal served over real WebSockets (Phoenix V1 and V2 serializers).

Usage: ``firezone-dev-portal --config portal.toml --listen 127.0.0.1:8081 [--tls-cert C --tls-key K]``.
The logic is :class:`devportal.DevPortal` (pure, shared with the simulator's stub portal); this module only
moves frames: the HTTP upgrade is checked by ``DevPortal.authenticate`` (a refusal becomes that HTTP
status), each accepted socket gets a reader (frames -> ``PhoenixSocket.handle_text``) and a writer
(outbox -> WebSocket, in order). A socket silent for 37 s is closed, as the real portal's idle timeout.

A small admin API on the same port (plain HTTP GET, JSON answers; ``admin_token`` from the configuration
is required when set): ``/admin/status``, ``/admin/authorize?client=&resource=[&gateway=]``,
``/admin/revoke?client=&resource=``, ``/admin/expiry?client=&resource=&expires_at=``,
``/admin/resource?id=&filters=tcp/80,icmp``, ``/admin/relays?offline=ID,ID``,
``/admin/ice?client=&candidate=...&candidate=...[&invalidate=1]``,
``/admin/request_connection?client=&resource=``, ``/admin/allow_access?client=&resource=``,
``/admin/kick[?gateway=]``, ``/admin/refuse?status=503`` (``0`` clears), ``/admin/revoke_token``.

The client side (:class:`devportal.clients.ClientFeed`, for the dev client process, :mod:`devio.client`):
``/client/poll?client=&after=N[&wait=S]`` returns the client's events after cursor N (grants, the
gateway's candidates, relay changes), held up to S seconds until there are some;
``/client/authorize?client=&resource=`` is the client asking for a flow (same as ``/admin/authorize``);
``/client/ice`` is ``/admin/ice``. Every authorisation and relay change is fed to the client feed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import logging
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from devportal import ConfigError, DevPortal, GatewayRecord, PhoenixSocket, Refusal, load_config
from devportal.clients import ClientFeed
from devportal.config import parse_filter
from gateway_core.errors import DecodeError
from gateway_core.portal.model import CidrResource, DnsResource

log = logging.getLogger("devio.portal")

IDLE_TIMEOUT = 37.0
"""Seconds without a frame before the portal closes a socket (``endpoint.ex:28``)."""
MAX_POLL_WAIT = 5.0
"""Longest ``wait`` a client's long poll may ask for (seconds)."""
POLL_STEP = 0.01
"""How often a held long poll looks for new events (seconds; the added signalling latency at most)."""


@dataclass(slots=True)
class _Live:
    ws: ServerConnection
    sock: PhoenixSocket
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class DevPortalServer:
    """Serves a :class:`DevPortal` over WebSockets; see the module docstring."""

    def __init__(
        self,
        portal: DevPortal,
        unix_clock: Callable[[], float] = time.time,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.portal = portal
        self.clients = ClientFeed(portal, uuid.uuid4().hex)
        self.unix_clock = unix_clock
        self.idle_timeout = idle_timeout
        self._live: dict[int, _Live] = {}
        self._accepted: dict[int, tuple[GatewayRecord, str | None]] = {}
        self.server: Server | None = None

    def _tick(self) -> None:
        self.portal.unix_now = int(self.unix_clock())

    def flush(self) -> None:
        """Wake every writer (after the portal queued pushes) and close kicked sockets."""
        for cid, live in list(self._live.items()):
            if self.portal.kicked(cid):
                live.sock.closed = True
            live.wake.set()

    # ------------------------------------------------------------------ HTTP

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self._tick()
        parts = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if parts.path.startswith("/admin/"):
            return self._admin(connection, parts.path[len("/admin/") :], parse_qs(parts.query))
        if parts.path == "/client/poll":
            await self._long_poll(query)
        if parts.path.startswith("/client/"):
            return self._admin(connection, "client_" + parts.path[len("/client/") :], parse_qs(parts.query))
        result = self.portal.authenticate(parts.path, query, request.headers.get("User-Agent"))
        if isinstance(result, Refusal):
            log.info("upgrade refused: %d %s", result.status, result.body)
            return connection.respond(http.HTTPStatus(result.status), result.body + "\n")
        self._accepted[id(connection)] = (result, query.get("vsn"))
        return None

    async def _long_poll(self, query: dict[str, str]) -> None:
        """``/client/poll?...&wait=S``: hold the answer until the client has events (at most S seconds)."""
        try:
            wait = min(float(query.get("wait") or 0), MAX_POLL_WAIT)
            client, after = uuid.UUID(query.get("client", "")), int(query.get("after") or 0)
        except ValueError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.clients.poll(client, after)["events"]:
            await asyncio.sleep(POLL_STEP)

    def _admin(self, connection: ServerConnection, action: str, q: dict[str, list[str]]) -> Response:
        token = self.portal.config.admin_token
        if token is not None and q.get("admin_token", [""])[-1] != token:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "admin token required\n")
        try:
            result = self._admin_action(action, q)
        except (KeyError, ValueError, DecodeError, ConfigError) as e:
            result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self.flush()
        status = http.HTTPStatus.OK if result.get("ok", True) else http.HTTPStatus.BAD_REQUEST
        resp = connection.respond(status, json.dumps(result, sort_keys=True) + "\n")
        resp.headers["Content-Type"] = "application/json"
        return resp

    def _admin_action(self, action: str, q: dict[str, list[str]]) -> dict[str, Any]:
        p = self.portal

        def one(key: str) -> str:
            return q[key][-1]

        def uid(key: str) -> uuid.UUID:
            return uuid.UUID(one(key))

        match action:
            case "status":
                return p.status()
            case "authorize" | "client_authorize":
                result = p.authorize(uid("client"), uid("resource"), q.get("gateway", [None])[-1])
                self.clients.granted(uid("client"), uid("resource"), result)
                return result
            case "client_poll":
                return self.clients.poll(uid("client"), int(q.get("after", ["0"])[-1]))
            case "revoke":
                return p.revoke(uid("client"), uid("resource"))
            case "expiry":
                return p.update_expiry(uid("client"), uid("resource"), int(one("expires_at")))
            case "resource":
                res = p.config.resource(uid("id"))
                if not isinstance(res, CidrResource | DnsResource):
                    return {"ok": False, "error": "no such cidr/dns resource"}
                spec = one("filters")
                filters = tuple(parse_filter(f, "filters") for f in spec.split(",") if f)
                return p.update_resource(replace(res, filters=filters))
            case "relays":
                result = p.relays_presence([uuid.UUID(x) for x in one("offline").split(",") if x])
                self.clients.relays_changed()
                return result
            case "ice" | "client_ice":
                invalidate = q.get("invalidate", ["0"])[-1] == "1"
                return p.ice_candidates(uid("client"), q.get("candidate", []), invalidate)
            case "request_connection":
                return p.request_connection(uid("client"), uid("resource"))
            case "allow_access":
                return p.allow_access(uid("client"), uid("resource"))
            case "kick":
                return {"ok": True, "kicked": p.kick(q.get("gateway", [None])[-1])}
            case "refuse":
                status = int(one("status"))
                p.refuse = None if status == 0 else Refusal(status, q.get("body", ["Refused"])[-1])
                return {"ok": True}
            case "revoke_token":
                return {"ok": True, "kicked": p.revoke_token()}
        return {"ok": False, "error": f"unknown action {action!r}"}

    # ------------------------------------------------------------------ WebSocket

    async def handler(self, ws: ServerConnection) -> None:
        accepted = self._accepted.pop(id(ws), None)
        if accepted is None:
            await ws.close(1011, "not authenticated")
            return
        gateway, vsn = accepted
        cid, sock = self.portal.connect(gateway, vsn)
        live = _Live(ws, sock)
        self._live[cid] = live
        log.info("gateway %s connected (socket %d, vsn %s)", gateway.name, cid, sock.vsn)
        writer = asyncio.create_task(self._writer(cid, live))
        try:
            while not sock.closed:
                try:
                    msg = await asyncio.wait_for(ws.recv(), self.idle_timeout)
                except TimeoutError:
                    log.info("socket %d idle for %.0f s: closing", cid, self.idle_timeout)
                    break
                self._tick()
                sock.handle_text(msg if isinstance(msg, str) else msg.decode("utf-8", "replace"))
                self.flush()
        except ConnectionClosed:
            pass
        finally:
            self.portal.disconnect(cid)
            self._live.pop(cid, None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await ws.close()
            log.info("gateway %s disconnected (socket %d)", gateway.name, cid)

    async def _writer(self, cid: int, live: _Live) -> None:
        while True:
            await live.wake.wait()
            live.wake.clear()
            while (frame := live.sock.poll_frame()) is not None:
                try:
                    await live.ws.send(frame)
                except ConnectionClosed:
                    return
            if live.sock.closed:
                await live.ws.close(1000, "kicked")
                return

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        self.server = await serve(
            self.handler,
            host,
            port,
            process_request=self.process_request,
            ssl=ssl_context,
            ping_interval=None,
            compression=None,
            server_header="firezone-dev-portal",
        )
        sockname = next(iter(self.server.sockets)).getsockname()
        return int(sockname[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    return ("" if host == "*" else host or "127.0.0.1"), int(port)


async def _amain(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(Path(args.config).read_text())
    except (OSError, ConfigError) as e:
        print(f"firezone-dev-portal: {e}", file=sys.stderr)
        return 2
    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    server = DevPortalServer(DevPortal(cfg, int(time.time())))
    host, port = args.listen
    bound = await server.start(host or None, port, ctx)  # type: ignore[arg-type]  # None: every address
    scheme = "wss" if ctx else "ws"
    print(f"firezone-dev-portal: listening on {scheme}://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="firezone-dev-portal", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="TOML configuration (see devportal/config.py)")
    ap.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8081),
        help="HOST:PORT (default 127.0.0.1:8081; *:PORT: every address of both families)",
    )
    ap.add_argument("--tls-cert", help="serve wss:// with this certificate (PEM)")
    ap.add_argument("--tls-key", help="private key for --tls-cert (PEM)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(_amain(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DevPortalServer", "main"]
