"""The health check (as Firezone's ``rust/bin-shared/src/http_health_check.rs``) on loopback, asked by real
HTTP clients (curl, http.client)."""

from __future__ import annotations

import http.client
import socket

import anyio
import pytest

from gateway_io.health import HealthServer, route, serve_health_check

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def curl(url: str, *extra: str) -> tuple[int, bytes]:
    argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", *extra, url]
    result = await anyio.run_process(argv, check=False)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code), body


def test_routes() -> None:
    assert route(b"GET", b"/healthz", True) == (200, b"OK")
    assert route(b"GET", b"/healthz?verbose=1", True) == (200, b"OK")
    assert route(b"GET", b"/healthz", False) == (400, b"Bad Request")
    assert route(b"GET", b"/", True)[0] == 404
    assert route(b"POST", b"/healthz", True)[0] == 405


async def test_curl_gets_200_404_405_and_400_when_unhealthy() -> None:
    healthy = True
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_health_check, ("127.0.0.1", 0), lambda: healthy)
        assert address is not None
        base = f"http://127.0.0.1:{address[1]}"
        assert await curl(f"{base}/healthz") == (200, b"")
        assert (await curl(f"{base}/metrics"))[0] == 404
        assert (await curl(f"{base}/healthz", "-X", "POST"))[0] == 405
        healthy = False
        assert (await curl(f"{base}/healthz"))[0] == 400
        tg.cancel_scope.cancel()


async def test_keep_alive_and_garbage() -> None:
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_health_check, ("127.0.0.1", 0))
        assert address is not None

        def two_requests_one_connection() -> list[int]:
            conn = http.client.HTTPConnection("127.0.0.1", address[1], timeout=10)
            statuses = []
            for path in ("/healthz", "/nope"):
                conn.request("GET", path)
                response = conn.getresponse()
                assert response.read() == b""
                statuses.append(response.status)
            conn.close()
            return statuses

        assert await anyio.to_thread.run_sync(two_requests_one_connection) == [200, 404]

        def garbage() -> bytes:
            with socket.create_connection(("127.0.0.1", address[1]), timeout=10) as s:
                s.sendall(b"\x00\x01 not http at all\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data

        reply = await anyio.to_thread.run_sync(garbage)
        assert reply.startswith(b"HTTP/1.1 400 ")  # answered, then closed
        tg.cancel_scope.cancel()


async def test_port_in_use_means_no_health_endpoint() -> None:
    first = await HealthServer.bind(("127.0.0.1", 0))
    assert first is not None
    try:
        assert await HealthServer.bind(first.local_address) is None
        async with anyio.create_task_group() as tg:
            assert await tg.start(serve_health_check, first.local_address) is None
    finally:
        await first.aclose()


async def test_served_by_the_daemon_address_format() -> None:
    """``HEALTH_CHECK_ADDR`` is parsed into ``(host, port)`` by the config; IPv6 loopback works too."""
    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_health_check, ("::1", 0))
        assert address is not None
        code, body = await curl(f"http://[::1]:{address[1]}/healthz", "-g")
        assert (code, body) == (200, b"")
        tg.cancel_scope.cancel()
