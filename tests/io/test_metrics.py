"""Metrics and flow logs in the IO layer: the instrument catalogue, snapshots, the Prometheus rendering,
the packet counts of the driver, its observers, the flow-log records and the health server's new paths."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_core.commands import Transmit
from gateway_core.policy.client import ClientProperties
from gateway_core.policy.flows import CompletedFlow, OuterContext
from gateway_io.flowlog import FlowLog, fields, rfc3339
from gateway_io.health import HealthServer, route
from gateway_io.io_counters import V4, V6, IoCounters
from gateway_io.logging import setup_logging
from gateway_io.metrics import (
    INSTRUMENTS,
    Metrics,
    export_interval,
    make_exporter,
    service_instance_id,
    snapshot_of,
)
from tests.io.driver_fakes import CLIENT, FakeCore, sa
from tests.io.logging_state import restored_logging
from tests.io.test_driver import SEC, FakeClock, Rig, until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]

REFERENCE_INSTRUMENTS = {"system.network.packets", "network.packet.dropped", "system.network.errors"}
"""The reference's gateway instruments we export (``rust/connlib/tunnel/src/{io,lib}.rs``,
``rust/telemetry/src/otel.rs``, ``rust/connlib/tunnel/src/sockets.rs``)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- catalogue and snapshots ------------------------------------------------------------------------


def test_catalogue_has_the_reference_names_and_unique_names() -> None:
    names = [i.name for i in INSTRUMENTS]
    assert len(names) == len(set(names))
    assert {i.name for i in INSTRUMENTS if i.reference} == REFERENCE_INSTRUMENTS
    for inst in INSTRUMENTS:
        assert inst.reference or inst.name.startswith(("firezone.gateway.", "system.network."))


def test_operations_doc_lists_every_metric() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for inst in INSTRUMENTS:
        assert f"`{inst.name}`" in doc, inst.name


def test_io_counters_split_families_and_add_bytes() -> None:
    c = IoCounters()
    c.tun_read([b"\x45" + bytes(83), b"\x60" + bytes(99), b"\x45" + bytes(19)])
    c.tun_written(b"\x60" + bytes(59))
    c.udp_received(V6, [(None, None, b"x" * 148, 0), (None, None, b"y" * 32, 0)])
    c.udp_sent(V4, b"z" * 10)
    assert (c.tun_rx_packets, c.tun_rx_bytes) == ([2, 1], [104, 100])
    assert (c.tun_tx_packets, c.tun_tx_bytes) == ([0, 1], [0, 60])
    assert (c.udp_rx_packets, c.udp_rx_bytes) == ([0, 2], [0, 180])
    assert (c.udp_tx_packets, c.udp_tx_bytes) == ([1, 0], [10, 0])


def test_io_counters_fast_path_for_ipv4_batches_counts_the_same() -> None:
    """An IPv4-only batch (no per-packet loop) and a batch with an empty packet (the careful way) give the
    same totals as counting one by one."""
    c = IoCounters()
    c.tun_read([b"\x45" + bytes(39), b"\x45" + bytes(59)])
    c.tun_read([b"", b"\x45" + bytes(9), b"\x60" + bytes(49)])
    c.tun_read([])
    for _ in range(3):
        c.udp_sent(V6, b"z" * 100)
    c.udp_sent(V6, b"z" * 5)
    assert (c.tun_rx_packets, c.tun_rx_bytes) == ([4, 1], [110, 50])
    assert (c.udp_tx_packets, c.udp_tx_bytes) == ([0, 4], [0, 305])


def _families(m: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def test_render_reads_only_the_last_snapshot_and_every_instrument_has_a_family() -> None:
    counters = IoCounters()
    stats = {
        "drop.filtered": 2,
        "drop.udp_oversized": 1,
        "gateway.clients": 3,
        "dns.responses.NXDOMAIN": 4,
        "gateway.portal.AuthorizeFlow": 5,
        "gateway.relay_allocations.allocated": 2,
        "portal.connect_attempts": 3,
        "wireguard.handshakes_as_responder": 7,
        "gateway.flow_cache_hits.outbound": 6,
        "gateway.flow_cache_hits.inbound": 8,
    }
    current = {"snap": snapshot_of([stats, {"drop.filtered": 1}], counters, {"flowlog.records": 9})}
    m = Metrics(lambda: current["snap"], firezone_id="gw-1", version="0.1.0")
    families = _families(m)
    assert "firezone_gateway_clients" in families  # an instrument with no data yet renders a zero (empty)
    m.observe()
    families = _families(m)
    for inst in INSTRUMENTS:
        fam = families[inst.prometheus_name]
        assert fam.type == inst.kind  # type: ignore[attr-defined]

    def value(family: str, **labels: str) -> float:
        for s in families[family].samples:  # type: ignore[attr-defined]
            if all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise KeyError((family, labels))

    assert value("network_packet_dropped", error_type="filtered") == 3  # merged from both parts
    assert value("network_packet_dropped", error_type="udp_oversized") == 1
    assert value("firezone_gateway_clients") == 3
    assert value("firezone_gateway_flow_cache_hits", firezone_flow_direction="inbound") == 8
    assert value("firezone_gateway_dns_queries", dns_response_code="NXDOMAIN") == 4
    assert value("firezone_gateway_portal_messages", firezone_portal_message="AuthorizeFlow") == 5
    assert value("firezone_gateway_portal_reconnects") == 2
    assert value("firezone_gateway_wireguard_handshakes", firezone_wireguard_role="responder") == 7
    assert value("firezone_gateway_flows_logged") == 9
    # Later counts are invisible until the next observe (the snapshot is what readers see).
    counters.tun_read([b"\x45" + bytes(99)])
    current["snap"] = snapshot_of([stats], counters, {})
    before = _families(m)["system_network_packets"].samples  # type: ignore[attr-defined]
    assert all(s.value == 0 for s in before)
    m.observe()
    after = _families(m)["system_network_packets"].samples  # type: ignore[attr-defined]
    rx4 = [
        s.value
        for s in after
        if s.labels["network_io_direction"] == "receive"
        and s.labels["network_type"] == "ipv4"
        and s.labels["network_transport"] == ""
    ]
    assert rx4 == [1]
    m.shutdown()


async def test_fresh_asks_the_loop_once_for_concurrent_readers() -> None:
    reads: list[int] = []
    requests: list[object] = []

    def read() -> object:
        reads.append(1)
        return snapshot_of([{"gateway.clients": len(reads)}], IoCounters(), {})

    m = Metrics(read, firezone_id="gw", version="0", request=requests.append)  # type: ignore[arg-type]
    bodies: list[bytes] = []

    async def scrape() -> None:
        bodies.append(await m.scrape())

    async with anyio.create_task_group() as tg:
        tg.start_soon(scrape)
        tg.start_soon(scrape)
        await anyio.wait_all_tasks_blocked()
        assert len(requests) == 1 and bodies == []  # both wait for the one snapshot the loop will take
        requests[0](5)  # type: ignore[operator]
    assert reads == [1] and len(bodies) == 2
    assert all(b"firezone_gateway_clients{" in b and b"} 1.0" in b for b in bodies)


async def test_a_flood_of_scrapes_walks_the_core_at_most_once_a_second() -> None:
    """The health port faces the network: 200 scrapes within one (fake) second cost one snapshot."""
    reads: list[int] = []
    now = [100.0]

    def read() -> object:
        reads.append(1)
        return snapshot_of([], IoCounters(), {})

    def request(take: object) -> None:
        take(0)  # type: ignore[operator]  # the loop at once

    m = Metrics(read, firezone_id="gw", version="0", request=request, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(200):
        await m.scrape()
    assert len(reads) == 1
    now[0] += 1.0
    await m.scrape()
    assert len(reads) == 2


def test_export_interval_is_the_sdk_variable() -> None:
    assert export_interval({}) == 60.0
    assert export_interval({"OTEL_METRIC_EXPORT_INTERVAL": "500"}) == 0.5
    assert export_interval({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}) == 60.0
    assert export_interval({"OTEL_METRIC_EXPORT_INTERVAL": "-1"}) == 60.0


def test_service_instance_id_hashes_legacy_uuids_as_the_reference() -> None:
    legacy = str(uuid.UUID(int=7))
    assert service_instance_id(legacy) == hashlib.sha256(legacy.encode()).hexdigest()
    assert service_instance_id("a" * 64) == "a" * 64


def test_exporters_for_each_backend() -> None:
    assert make_exporter(None, "x:1") is None
    assert type(make_exporter("stdout", None)).__name__ == "ConsoleMetricExporter"
    assert make_exporter("otel-collector", None) is None  # the reference's no-op: nothing pushed
    exporter = make_exporter("otel-collector", "127.0.0.1:4317")
    assert type(exporter).__name__ == "OTLPMetricExporter"
    exporter.shutdown()
    with pytest.raises(ValueError):
        make_exporter("graphite", None)


# --- the driver: packet counts and observers ----------------------------------------------------


async def test_driver_counts_packets_and_calls_observers_on_its_loop() -> None:
    clock = FakeClock(1 * SEC)
    core = FakeCore()
    core.on_datagram = lambda p: b"\x45" + p
    core.on_tun = lambda p: Transmit(None, CLIENT, b"wg" + p)
    rig = Rig(core, clock=clock, utc_clock=None)
    seen: list[int] = []
    rig.driver.add_observer(SEC, seen.append)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.driver.stats.turns >= 1)
        rig.udp4.inject.send_nowait((sa("0.0.0.0:52625"), CLIENT, bytes(10), 0))
        rig.tun.inject.send_nowait(b"\x45" + bytes(19))
        await until(lambda: len(rig.log.entries) == 2)
        assert seen == []  # not before one interval
        clock.t = 2 * SEC
        rig.driver.nudge()
        await until(lambda: seen == [2 * SEC])
        clock.t = 2 * SEC + SEC // 2
        turns = rig.driver.stats.turns
        rig.driver.nudge()
        await until(lambda: rig.driver.stats.turns > turns)
        assert seen == [2 * SEC]  # at most once per interval
        rig.driver.call_soon(seen.append)  # once, at the end of the next turn, without waiting
        await until(lambda: seen == [2 * SEC, 2 * SEC + SEC // 2])
        tg.cancel_scope.cancel()
    io_ = rig.driver.stats.io
    assert (io_.udp_rx_packets[V4], io_.udp_rx_bytes[V4]) == (1, 10)
    assert (io_.tun_tx_packets[V4], io_.tun_tx_bytes[V4]) == (1, 11)
    assert (io_.tun_rx_packets[V4], io_.tun_rx_bytes[V4]) == (1, 20)
    assert (io_.udp_tx_packets[V4], io_.udp_tx_bytes[V4]) == (1, 22)
    assert io_.udp_rx_packets[V6] == io_.tun_rx_packets[V6] == 0


async def test_an_observer_that_raises_is_counted_and_the_loop_goes_on() -> None:
    clock = FakeClock(1 * SEC)
    rig = Rig(FakeCore(), clock=clock, utc_clock=None)

    def broken(now: int) -> None:
        raise RuntimeError("bug")

    rig.driver.add_observer(SEC, broken)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.driver.stats.turns >= 1)
        clock.t = 3 * SEC
        rig.driver.nudge()
        await until(lambda: rig.driver.stats.counters.counters["driver.observer_failed"] == 1)
        tg.cancel_scope.cancel()


# --- flow logs --------------------------------------------------------------------------------------

REFERENCE_FIELDS = [
    "client_id",
    "client_version",
    "device_os_name",
    "device_os_version",
    "device_serial",
    "device_uuid",
    "device_identifier_for_vendor",
    "device_firebase_installation_id",
    "identity_id",
    "identity_name",
    "actor_id",
    "actor_email",
    "resource_id",
    "resource_name",
    "resource_address",
    "start",
    "end",
    "last_packet",
    "inner_src_ip",
    "inner_dst_ip",
    "inner_src_port",
    "inner_dst_port",
    "inner_domain",
    "outer_src_ip",
    "outer_dst_ip",
    "outer_src_port",
    "outer_dst_port",
    "rx_packets",
    "tx_packets",
    "rx_bytes",
    "tx_bytes",
]
"""The fields of the reference's flow record, in order (``rust/connlib/tunnel/src/gateway.rs:486-571``)."""


def _flow(
    protocol: str = "tcp", client: ClientProperties | None = None, domain: str | None = None
) -> CompletedFlow:
    ip = ipaddress.ip_address
    return CompletedFlow(
        protocol,
        uuid.UUID(int=1),
        client or ClientProperties(),
        uuid.UUID(int=2),
        "web",
        "172.20.1.0/24",
        1_700_000_000_123_456_789,
        1_700_000_001_000_000_000,
        1_700_000_000_900_000_000,
        ip("100.64.0.1"),
        ip("172.20.1.10"),
        40000,
        80,
        domain,
        OuterContext(ip("198.51.100.7"), ip("10.0.0.2"), 51820, 52625),
        3,
        4,
        300,
        77,
    )


def test_record_fields_are_the_reference_fields_in_order() -> None:
    full = ClientProperties(*(f"v{i}" for i in range(11)))
    got = list(fields(_flow(client=full, domain="app.example.com")))
    assert got == REFERENCE_FIELDS
    sparse = fields(_flow())
    assert "client_version" not in sparse and "inner_domain" not in sparse  # unknown: left out
    assert sparse["start"] == "2023-11-14T22:13:20.123456789Z"
    assert (sparse["tx_bytes"], sparse["rx_bytes"], sparse["tx_packets"], sparse["rx_packets"]) == (
        77,
        300,
        4,
        3,
    )
    assert rfc3339(0) == "1970-01-01T00:00:00.000000000Z"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and the loggers our filters touch back as they were (other tests count on
    their levels, e.g. the stateful test's DEBUG records)."""
    with restored_logging("flow_logs", "asyncio", "websockets", "pyroute2"):
        yield


@pytest.mark.usefixtures("restore_logging")
def test_drain_writes_json_records_on_the_reference_targets() -> None:
    out = io.StringIO()
    setup_logging("json", "info,flow_logs=trace", stream=out)
    queue = [_flow("udp"), _flow("tcp")]
    log = FlowLog(lambda: queue.pop() if queue else None)
    log.drain()
    assert log.records == 2
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["target"], r["level"], r["message"]) for r in records] == [
        ("flow_logs.tcp", "TRACE", "TCP flow completed"),
        ("flow_logs.udp", "TRACE", "UDP flow completed"),
    ]
    assert records[0]["rx_bytes"] == 300 and records[0]["inner_dst_port"] == 80
    out.truncate(0)
    out.seek(0)
    setup_logging("human", "info,flow_logs=trace", stream=out)
    queue.append(_flow("tcp"))
    log.drain()
    assert re.search(
        r"TRACE flow_logs\.tcp: TCP flow completed client_id=\S+ .* tx_bytes=77$", out.getvalue().strip()
    )


# --- health server: /readyz and /metrics --------------------------------------------------------------


def test_routes_for_readyz_and_metrics() -> None:
    assert route(b"GET", b"/readyz", True, ready=True) == (200, b"OK")
    assert route(b"GET", b"/readyz", True, ready=False)[0] == 503
    assert route(b"GET", b"/readyz", True)[0] == 404  # not served without a readiness function
    assert route(b"GET", b"/metrics", True, metrics=True) == (200, b"OK")
    assert route(b"GET", b"/metrics", True)[0] == 404
    assert route(b"POST", b"/metrics", True, metrics=True)[0] == 405


async def test_metrics_served_with_the_prometheus_content_type() -> None:
    async def metrics() -> bytes:
        return b"x_total 1\n"

    server = await HealthServer.bind(("127.0.0.1", 0), ready=lambda: False, metrics=metrics)
    assert server is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        port = server.local_address[1]
        r = await anyio.run_process(
            ["curl", "-s", "-i", "--max-time", "10", f"http://127.0.0.1:{port}/metrics"], check=False
        )
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-type: text/plain" in head.lower()
        assert body == b"x_total 1\n"
        r = await anyio.run_process(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/readyz"],
            check=False,
        )
        assert r.stdout == b"503"
        tg.cancel_scope.cancel()
    await server.aclose()
