"""The driver with the real ``Gateway`` and the real portal WebSocket (``PortalIO``) against the dev portal
on loopback; TUN, UDP, DNS servers and netlink are fakes (no root). ``init`` must turn into
``ConfigureInterface`` and ``BindDnsServers`` for the portal's tunnel addresses, and a shutdown request
into a graceful portal close within the grace period and exit code 0."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from devio.portal import DevPortalServer
from devportal import DevPortal, load_config
from gateway_core.dns.servers import BindDnsServers, DnsServerBound
from gateway_core.entropy import SeededEntropy
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import GatewayConfig
from gateway_core.interface import ConfigureInterface
from gateway_io.driver import Driver, Transports
from gateway_io.portal import PortalIO
from tests.io.driver_fakes import LOCAL4, FakeDns, FakeInterface, FakeResolver, FakeTun, FakeUdp, Log

pytestmark = pytest.mark.anyio

CONFIG = Path(__file__).with_name("devportal_test.toml")
LIMIT = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def portal() -> AsyncIterator[tuple[DevPortal, int]]:
    dev = DevPortal(load_config(CONFIG.read_text()), 1_700_000_000)
    server = DevPortalServer(dev)
    port = await server.start("127.0.0.1", 0)
    try:
        yield dev, port
    finally:
        await server.stop()


async def until(cond: object) -> None:
    with anyio.fail_after(LIMIT):
        while not cond():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_init_configures_interface_and_dns_then_shutdown_exits_0(portal: tuple[DevPortal, int]) -> None:
    dev, port = portal
    gateway = Gateway(
        config=GatewayConfig(
            api_url=f"ws://127.0.0.1:{port}", token="dev-token", firezone_id=f"driver-test-{os.getpid()}"
        ),
        private_key=bytes(range(32)),
        entropy=SeededEntropy(b"driver-gateway-test"),
        now=time.monotonic_ns(),  # type: ignore[arg-type]
        utc_ns=time.time_ns(),
    )
    log = Log()
    dns = FakeDns(log)
    interface = FakeInterface(log)
    driver = Driver(gateway)
    transports = Transports(
        tun=FakeTun(log),
        udp=[FakeUdp(log, LOCAL4)],
        portal=lambda tg, report: PortalIO(tg, report),
        dns=dns,
        resolver=FakeResolver(),
        interface=interface,
    )
    codes: list[int] = []

    async def run() -> None:
        codes.append(await driver.run(transports))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await until(lambda: any(k == "dns" for k, _ in log.entries))
        (record,) = dev.gateways.values()
        v4, v6 = record.ipv4, record.ipv6
        configure = [c for k, c in log.entries if k == "interface"]
        assert len(configure) == 1 and isinstance(configure[0], ConfigureInterface)
        assert (configure[0].config.ipv4, configure[0].config.ipv6) == (v4, v6)
        bind = [c for k, c in log.entries if k == "dns"][0]
        assert isinstance(bind, BindDnsServers)
        assert sorted(str(a) for a in bind.addresses) == sorted([f"{v4}:53535", f"[{v6}]:53535"])
        for address in bind.addresses:
            driver.report_dns(DnsServerBound(address, 53535))
        driver.request_shutdown()
        await until(lambda: bool(codes))
    assert codes == [0]
    assert driver.exit is not None and driver.exit.code == 0
    stats = gateway.stats()
    assert stats.get("gateway.portal_joined") == 1
    assert stats.get("gateway.dns_bound") == 2
    # The exit code 0 also says the portal's close handshake finished within the grace period.
