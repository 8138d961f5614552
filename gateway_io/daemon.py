"""The daemon: the start-up sequence of Firezone's gateway (``rust/gateway/src/main.rs``), then the driver
until shutdown.

Theory of operation
-------------------
:func:`run` follows the reference's order (numbered as the reference's start-up steps; steps 1-2, parsing
and the permission check, are the CLI's; 3, 7 and 14, runtime, telemetry and resolver set-up, have no
separate step here):

4. logging (``RUST_LOG``, human or JSON on stdout, the token and the private key redacted);
5. unless ``--no-inc-buf``: raise ``net.core.rmem_max``/``wmem_max`` (failures only logged);
6. identity and token come from the configuration; the WireGuard private key is random and kept in memory
   only, as Firezone's gateway (``Tunnel::new`` draws a fresh key at each start; the portal learns the
   public key from the login URL on every connection);
8. the login URL (built by the core; a bad URL stops the start);
9. ``/etc/resolv.conf`` (must be readable) -> the upstream resolver of forwarded SRV/TXT queries, whose
   nameserver evaluation runs in the background; DNS-resource names are resolved with ``getaddrinfo``
   and a 30 s cache (:mod:`gateway_io.system_resolver`, as the reference's event loop);
10. the UDP sockets (52625 per family with fallback; a family that fails is only logged);
11. the portal's host is resolved (failure: exit 1);
12. the Firezone routing tables are flushed and ``tun-firezone`` is created (failure: exit 1);
13. the health check is served (a busy port is only logged), with ``/readyz`` and ``/metrics`` beside
    ``/healthz`` (ours); with ``--metrics`` the exporter pushes too (the reference's step 7, done here so
    that the instruments can read the gateway; :mod:`gateway_io.metrics`);
15. the driver runs the core with every transport until ``Exit``; SIGINT/SIGTERM are shutdown requests.

The driver's loop also serves the metrics (a snapshot of the counters whenever a scrape or a push asks,
``Driver.call_soon``) and, with flow logs on, writes the completed flows every second (an observer,
:mod:`gateway_io.flowlog`); both are flushed once more at exit.

Two additions to the reference (decision 0110): the DNS listeners are bound to the TUN device, and each
interface configuration also installs the underlay guard (:mod:`gateway_io.firewall`), which is deleted
again on the way out.

Every failure before the loop is one log line and exit code 1 (as in the reference). The exit code of the
loop is the driver's: 0 after a clean shutdown, 1 after a fatal error or a flush that did not finish within
1 s.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc

from gateway_core.dns.forwarding import DnsLimits
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import GatewayConfig
from gateway_core.interface import ConfigureInterface, InterfaceConfigFailed, InterfaceConfigured
from gateway_core.portal.channel import ChannelState
from gateway_core.portal.login import LoginUrlError, user_agent
from gateway_io import firewall, netlink
from gateway_io.config import Config
from gateway_io.dns_servers import DnsServerSet
from gateway_io.driver import Driver, Report, Transports
from gateway_io.entropy import SystemEntropy
from gateway_io.flood_guard import FloodGuard, budget_from_env
from gateway_io.flowlog import FlowLog
from gateway_io.health import serve_health_check
from gateway_io.logging import Redactor
from gateway_io.metrics import FLOW_LOG_INTERVAL, Metrics, Snapshot, make_exporter, snapshot_of
from gateway_io.portal import PortalIO
from gateway_io.resolver import RESOLV_CONF, Resolver, read_nameservers
from gateway_io.signals import EXIT_FAILURE, shutdown_requests
from gateway_io.system_resolver import SystemResolver
from gateway_io.tun import DEFAULT_NAME, TunDevice
from gateway_io.udp import UdpSockets, raise_buffer_limits

log = logging.getLogger("gateway_io.daemon")

VERSION = "0.1.0"
"""This gateway's version (``service.version`` of the metrics; ``--version`` says the same)."""

OS_RELEASE = Path("/etc/os-release")
"""Where the User-Agent's OS name and version come from (Firezone uses ``os_info``, which reads it too)."""


class StartupError(Exception):
    """A start-up step failed; the message is the one line logged before exit 1."""


@dataclass(slots=True)
class Paths:
    """Files and names the daemon uses; tests may point them elsewhere."""

    resolv_conf: Path = RESOLV_CONF
    tun_name: str = DEFAULT_NAME


def os_identity(path: Path = OS_RELEASE) -> tuple[str, str]:
    """``(name, version)`` from ``/etc/os-release`` (``ID``/``VERSION_ID``), else ``("Linux", "unknown")``."""
    fields: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    name = fields.get("NAME", "").split()[0] if fields.get("NAME") else "Linux"
    return name, fields.get("VERSION_ID", "unknown")


def gateway_user_agent(version: str | None = None) -> str:
    name, os_version = os_identity()
    if version is None:
        return user_agent(name, os_version, platform.machine() or None, platform.release() or None)
    return user_agent(name, os_version, platform.machine() or None, platform.release() or None, version)


def new_private_key() -> bytes:
    """A fresh X25519 private key (32 random bytes; clamping is the key's use, RFC 7748)."""
    return os.urandom(32)


def register_key(redactor: Redactor | None, key: bytes) -> None:
    """Every printable form of ``key`` becomes a secret for the log redactor."""
    if redactor is None:
        return
    redactor.add_secret(key.hex())
    redactor.add_secret(base64.b64encode(key).decode())
    redactor.add_secret(base64.urlsafe_b64encode(key).decode().rstrip("="))


class NetlinkInterface:
    """The driver's interface transport: ``ConfigureInterface`` with pyroute2 on the TUN device, then the
    underlay guard (:mod:`gateway_io.firewall`) for what was applied; :meth:`aclose` removes the guard."""

    def __init__(self, ifname: str, *, guard: bool = True, netns: str | None = None) -> None:
        self.ifname = ifname
        self.guard = guard
        self.netns = netns
        self.guard_installed = False
        """Whether our nftables table may exist (so :meth:`aclose` deletes it)."""
        self.configured = False
        """The last configuration was applied (``/readyz``)."""

    async def configure(self, command: ConfigureInterface) -> InterfaceConfigured | InterfaceConfigFailed:
        result = await netlink.configure_interface(command, ifname=self.ifname, netns=self.netns)
        self.configured = isinstance(result, InterfaceConfigured)
        if not self.guard or not isinstance(result, InterfaceConfigured):
            return result
        spec = firewall.spec_for(command.config, self.ifname, ipv4=result.ipv4, ipv6=result.ipv6)
        self.guard_installed = True
        err = await firewall.apply(spec, netns=self.netns)
        if err is None:
            log.info(
                "underlay guard installed (nftables table inet %s; replies only into the tunnel: %s)",
                firewall.TABLE,
                ", ".join(f for f, on in (("IPv4", spec.forward_v4), ("IPv6", spec.forward_v6)) if on)
                or "no family (no masquerading)",
            )
            return result
        log.error("underlay guard NOT installed: %s; the host must filter (docs/operations.md)", err)
        warning = f"underlay guard not installed: {err}"
        return dataclasses.replace(result, warnings=(*result.warnings, warning))

    async def aclose(self) -> None:
        """Delete the guard's table if this process may have created it (at exit)."""
        if not self.guard_installed:
            return
        self.guard_installed = False
        err = await firewall.remove(netns=self.netns)
        if err is not None:
            log.warning("cannot remove the underlay guard (nftables table inet %s): %s", firewall.TABLE, err)


async def _resolve_portal_host(api_url: str) -> None:
    parts = urlsplit(api_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    try:
        await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise StartupError(f"cannot resolve the portal host {host!r}: {e}") from None


async def _signals(
    driver: Driver, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    async with shutdown_requests() as requests:
        task_status.started()
        async for _ in requests:
            log.info("signal received: shutting down")
            driver.request_shutdown()


async def run(
    config: Config,
    *,
    redactor: Redactor | None = None,
    paths: Paths | None = None,
    portal_factory: Callable[[anyio.abc.TaskGroup, Report], PortalIO] | None = None,
) -> int:
    """Start the gateway and run it until it exits; the process exit code."""
    try:
        return await _run(config, redactor, paths or Paths(), portal_factory)
    except StartupError as e:
        log.error("%s", e)
        return EXIT_FAILURE


async def _run(
    config: Config,
    redactor: Redactor | None,
    paths: Paths,
    portal_factory: Callable[[anyio.abc.TaskGroup, Report], PortalIO] | None,
) -> int:
    log.info(
        "firezone-gateway starting: id=%s name=%s portal=%s", config.firezone_id, config.name, config.api_url
    )
    if not config.no_inc_buf:
        for err in raise_buffer_limits():
            log.info("cannot raise socket buffer limit: %s", err)

    private_key = new_private_key()
    register_key(redactor, private_key)

    try:
        nameservers = read_nameservers(paths.resolv_conf)
    except OSError as e:
        raise StartupError(f"cannot read {paths.resolv_conf}: {e.strerror or e}") from None
    log.info("upstream nameservers: %s", ", ".join(str(n) for n in nameservers) or "none")
    resolver = Resolver(nameservers)

    now = time.monotonic_ns()
    try:
        gateway = Gateway(
            config=GatewayConfig(
                api_url=config.api_url,
                token=config.token,
                firezone_id=config.firezone_id,
                name=config.name,
                user_agent=gateway_user_agent(),
                dns_limits=DnsLimits(
                    client_rate=config.dns_client_qps, client_burst=max(1, 2 * config.dns_client_qps)
                ),
                flow_logs=config.flow_logs,
                validate_checksums=config.validate_checksums,
                check_deadlines=config.check_deadlines,
            ),
            private_key=private_key,
            entropy=SystemEntropy(),
            now=now,  # type: ignore[arg-type]
            utc_ns=time.time_ns(),
        )
    except LoginUrlError as e:
        raise StartupError(f"FIREZONE_API_URL: {e}") from None
    log.info("public key %s", base64.b64encode(gateway.public_key).decode())

    udp = UdpSockets.bind()
    for version, err in sorted(udp.errors.items()):
        log.warning("no IPv%d UDP socket: %s", version, err)
    try:
        await _resolve_portal_host(config.api_url)
        try:
            await anyio.to_thread.run_sync(netlink.flush_firezone_tables)
        except OSError as e:
            log.warning("cannot flush the Firezone routing tables: %s", e)
        try:
            tun = TunDevice.open(paths.tun_name)
        except OSError as e:
            raise StartupError(f"cannot create the TUN device {paths.tun_name}: {e.strerror or e}") from None
    except BaseException:
        udp.close()
        raise

    driver = Driver(gateway)
    interface = NetlinkInterface(tun.name)
    transports = Transports(
        tun=tun,
        udp=udp.sockets,
        portal=portal_factory or (lambda tg, report: PortalIO(tg, report)),
        resolver=resolver,
        domains=SystemResolver(),
        interface=interface,
        guard=FloodGuard(
            [s.local.port for s in udp.sockets],
            gateway.node.relay_addresses,
            gateway.node.session_indices,
            budget=budget_from_env(),
        ),
    )
    flow_log = FlowLog(gateway.poll_flow)
    if config.flow_logs:
        driver.add_observer(FLOW_LOG_INTERVAL, flow_log.drain)
        log.info("flow logs on (logger flow_logs, one record per TCP/UDP flow)")

    dns_servers = DnsServerSet(driver.report_dns, device=tun.name)

    def read_counters() -> Snapshot:
        return snapshot_of(
            [
                gateway.stats(),
                driver.stats.counters.snapshot(),
                *(s.stats.snapshot() for s in udp.sockets),
                *(s.snapshot() for s in dns_servers.stats()),
            ],
            driver.stats.io,
            {"flowlog.records": flow_log.records},
        )

    metrics = Metrics(
        read_counters,
        firezone_id=config.firezone_id,
        version=VERSION,
        exporter=make_exporter(config.metrics, config.otlp_grpc_endpoint),
        request=driver.call_soon,
    )
    if config.metrics is not None:
        where = config.otlp_grpc_endpoint if config.metrics == "otel-collector" else "stdout"
        log.info("metrics exported to %s", where or "nowhere (no OTLP_GRPC_ENDPOINT)")

    def ready() -> bool:
        return gateway.channel.state is ChannelState.JOINED and interface.configured

    code = 1
    try:
        async with dns_servers as dns, anyio.create_task_group() as tg:
            transports.dns = dns
            await tg.start(_signals, driver)
            health = await tg.start(
                serve_health_check, config.health_check_addr, lambda: True, ready, metrics.scrape
            )
            if health is not None:
                log.info("health check on http://%s:%d/healthz (and /readyz, /metrics)", *health)
            tg.start_soon(resolver.run_evaluation)
            tg.start_soon(metrics.run_exports)
            code = await driver.run(transports)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await tun.aclose()  # first: with the device gone nothing is routed into the tunnel
            await interface.aclose()
            # The loop has stopped: this task is the core's only caller now (R1).
            flow_log.drain()
            metrics.observe()
            await anyio.to_thread.run_sync(metrics.shutdown)
        resolver.close()
        udp.close()
    log.info("firezone-gateway stopped (exit code %d)", code)
    return code
