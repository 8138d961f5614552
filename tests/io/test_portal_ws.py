"""Our channel machine over the gateway_io WebSocket client against the dev portal, on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devio.portal import DevPortalServer
from devportal import DevPortal, load_config
from gateway_core.clock import millis
from gateway_core.entropy import SeededEntropy
from gateway_core.portal.channel import (
    ChannelConfig,
    ChannelState,
    FatalKind,
    PortalChannel,
    PortalFailed,
    PortalHiccup,
    PortalJoined,
    PortalMessageReceived,
)
from gateway_core.portal.login import login_url, user_agent
from gateway_core.portal.messages import AuthorizeFlow, FlowAuthorized, Init
from tests.io.portal_driver import PortalDriver

pytestmark = pytest.mark.anyio

CONFIG = Path(__file__).parent / "devportal_test.toml"
CLIENT = "3abd725a-733b-4801-ac16-72f26cd98a24"
RESOURCE = "c7793628-8579-465b-83e3-1a5d4af4db3b"
KEY = bytes(range(32))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def portal_server() -> AsyncIterator[tuple[DevPortalServer, int]]:
    server = DevPortalServer(DevPortal(load_config(CONFIG.read_text()), 1_700_000_000))
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.stop()


def make_channel(port: int, token: str = "dev-token", scheme: str = "ws", **cfg: int) -> PortalChannel:
    url = login_url(f"{scheme}://127.0.0.1:{port}", token, "gw-io-test", "gw-io", KEY)
    return PortalChannel(
        url,
        user_agent("Debian", "12", "x86_64", None),
        SeededEntropy(1),
        ChannelConfig(**cfg),  # type: ignore[arg-type]
    )


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not cond():
            await anyio.sleep(0.01)


async def test_connect_join_init_heartbeat_and_flow(portal_server: tuple[DevPortalServer, int]) -> None:
    server, port = portal_server
    ch = make_channel(port, heartbeat_interval=millis(200), heartbeat_timeout=millis(5000))
    drv = PortalDriver(ch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drv.run)
        await wait_for(lambda: any(isinstance(e, PortalMessageReceived) for e in drv.events))
        assert isinstance(drv.events[0], PortalJoined)
        init = next(e.message for e in drv.events if isinstance(e, PortalMessageReceived))
        assert isinstance(init, Init)
        rec = server.portal.gateways["gw-io-test"]
        assert init.interface.ipv4 == rec.ipv4 and rec.version == "1.4.18"
        assert len(init.relays) == 2  # one relay, IPv4 and IPv6 addresses

        # Keeps heartbeating: several heartbeat round trips, the channel stays joined on one socket.
        await wait_for(lambda: ch.stats.counters["portal.heartbeats"] >= 4)
        assert ch.state is ChannelState.JOINED and ch.conn == 1
        live = next(iter(server._live.values()))
        # The portal saw (and answered) them.
        await wait_for(lambda: live.sock.stats.counters["heartbeats"] >= 4)
        assert ch.stats.drops.total() == 0

        # A flow: the admin API authorises, the gateway answers flow_authorized, the portal says ok.
        def admin() -> dict[str, object]:
            url = f"http://127.0.0.1:{port}/admin/authorize?client={CLIENT}&resource={RESOURCE}"
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]

        result = await anyio.to_thread.run_sync(admin)
        assert result["ok"] is True
        await wait_for(
            lambda: any(
                isinstance(e, PortalMessageReceived) and isinstance(e.message, AuthorizeFlow)
                for e in drv.events
            )
        )
        af = next(
            e.message
            for e in drv.events
            if isinstance(e, PortalMessageReceived) and isinstance(e.message, AuthorizeFlow)
        )
        drv.call(lambda now: ch.send(now, FlowAuthorized(af.ref)))
        drv.call(lambda now: ch.send(now, FlowAuthorized("forged")))
        await wait_for(lambda: len(server.portal.received) >= 2)
        assert [(r.event, r.reply) for r in server.portal.received] == [
            ("flow_authorized", "ok"),
            ("flow_authorized", "{'reason': 'invalid_ref'}"),
        ]
        drv.call(ch.close)
        await wait_for(drv.done.is_set)
    assert ch.state is ChannelState.CLOSED
    await wait_for(lambda: not server._live)


async def test_bad_token_is_fatal_401(portal_server: tuple[DevPortalServer, int]) -> None:
    _, port = portal_server
    ch = make_channel(port, token="wrong")
    drv = PortalDriver(ch)
    with anyio.fail_after(10):
        await drv.run()
    (failed,) = [e for e in drv.events if isinstance(e, PortalFailed)]
    assert failed.kind is FatalKind.CLIENT_ERROR and failed.status == 401
    assert ch.stats.counters["portal.connect_attempts"] == 1


async def test_outage_503_then_recovery(portal_server: tuple[DevPortalServer, int]) -> None:
    server, port = portal_server
    from devportal import Refusal

    server.portal.refuse = Refusal(503, "Service Unavailable")
    ch = make_channel(port)
    drv = PortalDriver(ch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(drv.run)
        await wait_for(lambda: sum(isinstance(e, PortalHiccup) for e in drv.events) >= 3)
        server.portal.refuse = None
        await wait_for(lambda: ch.state is ChannelState.JOINED)
        drv.call(ch.close)
        await wait_for(drv.done.is_set)
    assert ch.conn >= 4


async def test_portal_closing_socket_makes_channel_reconnect(
    portal_server: tuple[DevPortalServer, int],
) -> None:
    server, port = portal_server
    ch = make_channel(port)
    drv = PortalDriver(ch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(drv.run)
        await wait_for(lambda: ch.state is ChannelState.JOINED)
        server.portal.kick()
        server.flush()
        await wait_for(lambda: ch.conn == 2 and ch.state is ChannelState.JOINED)
        inits = [
            e for e in drv.events if isinstance(e, PortalMessageReceived) and isinstance(e.message, Init)
        ]
        assert len(inits) == 2  # a fresh init after the rejoin
        drv.call(ch.close)
        await wait_for(drv.done.is_set)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_verifies_certificates(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    server = DevPortalServer(DevPortal(load_config(CONFIG.read_text()), 1_700_000_000))
    port = await server.start("127.0.0.1", 0, sctx)
    try:
        # Default verification (system store): the self-signed certificate is refused, fatally.
        ch = make_channel(port, scheme="wss")
        drv = PortalDriver(ch)
        with anyio.fail_after(10):
            await drv.run()
        (failed,) = [e for e in drv.events if isinstance(e, PortalFailed)]
        assert failed.kind is FatalKind.FATAL_IO and "certificate" in failed.error

        # Trusting that certificate: connects and joins over TLS.
        cctx = ssl.create_default_context(cafile=str(cert))
        ch2 = make_channel(port, scheme="wss")
        drv2 = PortalDriver(ch2, ssl_context=cctx)
        async with anyio.create_task_group() as tg:
            tg.start_soon(drv2.run)
            await wait_for(lambda: ch2.state is ChannelState.JOINED)
            drv2.call(ch2.close)
            await wait_for(drv2.done.is_set)
    finally:
        await server.stop()


async def test_connection_reset_by_portal_reconnects(portal_server: tuple[DevPortalServer, int]) -> None:
    """An abrupt TCP reset (no close frame) is a transient error: reconnect at once, rejoin, new init."""
    server, port = portal_server
    ch = make_channel(port)
    drv = PortalDriver(ch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(drv.run)
        await wait_for(lambda: ch.state is ChannelState.JOINED)
        live = next(iter(server._live.values()))
        live.ws.transport.abort()
        await wait_for(lambda: ch.conn == 2 and ch.state is ChannelState.JOINED)
        hiccups = [e for e in drv.events if isinstance(e, PortalHiccup)]
        assert len(hiccups) == 1 and hiccups[0].delay == 0
        drv.call(ch.close)
        await wait_for(drv.done.is_set)
