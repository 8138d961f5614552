"""Metrics: the core's counters and the driver's packet counts as OpenTelemetry instruments, exported the
reference's way (``--metrics stdout|otel-collector``, ``rust/gateway/src/main.rs``) and scraped the
Prometheus way (``GET /metrics`` on the health-check listener, :mod:`gateway_io.health`).

Theory of operation
-------------------
Nothing is counted for the metrics on the data path: the core keeps its :class:`~gateway_core.stats.Stats`
(drops by reason, handshakes, DNS answers by response code, ...) and the driver its
:class:`~gateway_io.io_counters.IoCounters` (packets and bytes per device, direction and family) anyway.
Every instrument here is *observable*: its callback reads the last :class:`Snapshot` when a reader
collects.

- **Snapshots are taken in the driver's loop, on demand** (R1 of docs/design/driving-contract.md: one
  task calls the core). ``Gateway.stats()`` walks every client and connection (about 10 us per client:
  0.1 s at 10,000 clients), so it runs only when a reader is about to read: :meth:`Metrics.fresh` asks the
  driver (``Driver.call_soon``) to run :meth:`Metrics.observe` at the end of its next turn and waits for
  it (concurrent requests share one snapshot). A snapshot younger than :data:`MIN_SNAPSHOT_INTERVAL` is
  reused, so a flood of scrapes on the (network-facing) health port costs at most one walk a second.
  ``observe`` merges ``Gateway.stats()`` with the driver's and the UDP sockets' counters into one
  immutable mapping and swaps it in; readers only ever read a whole snapshot, never the core.
- **Readers.** A :class:`~opentelemetry.exporter.prometheus.PrometheusMetricReader` on a registry of our
  own, always: ``GET /metrics`` takes a fresh snapshot and renders it with
  ``prometheus_client.generate_latest``. With ``--metrics stdout`` a push reader with the SDK's console
  exporter, with ``--metrics otel-collector`` one with the OTLP gRPC exporter to
  ``http://OTLP_GRPC_ENDPOINT`` (without an endpoint the reference exports nothing: a no-op exporter
  waiting for a hosted collector; so does this one, and says so). The push reader has no thread of its
  own: :meth:`Metrics.run_exports` takes a fresh snapshot every interval (the SDK's 60 s or
  ``OTEL_METRIC_EXPORT_INTERVAL``, as the reference's periodic reader) and collects and exports in a
  worker thread, so a slow collector never holds the loop.
- **Instruments** (:data:`INSTRUMENTS`): the reference's names and attributes where it has them
  (``system.network.packets``, ``network.packet.dropped``, ``system.network.errors``), ours under
  ``firezone.gateway.*`` for the rest. docs/operations.md lists them; a test checks that it lists all.

A counter the core keeps per connection would fall when a connection goes away; the node keeps the
counters of removed connections (``Node.retired_tunnels``) so the cumulative totals never go down.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import anyio
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway_io.io_counters import V4, V6, IoCounters

log = logging.getLogger(__name__)

FLOW_LOG_INTERVAL = 1_000_000_000
"""Nanoseconds between drains of the completed flows (a record appears within a second of the flow's end;
an empty drain is one call)."""

MIN_SNAPSHOT_INTERVAL = 1.0
"""Seconds a snapshot is reused for: scrapes (every 15-60 s) and pushes (60 s) always get a new one, a
flood of ``GET /metrics`` gets at most one ``Gateway.stats()`` a second (0.1 s of loop at 10,000
clients)."""

FRESH_TIMEOUT = 2.0
"""Seconds a reader waits for the loop's snapshot before it reads the previous one (a loop that does not
turn for that long is stuck or stopped; the scrape still answers)."""

DEFAULT_EXPORT_INTERVAL_MS = 60_000.0
"""The push interval without ``OTEL_METRIC_EXPORT_INTERVAL`` (the SDK's and the reference's 60 s)."""

SHUTDOWN_TIMEOUT_MS = 1000
"""Milliseconds the last export may take at exit (the reference's whole shutdown flush is 1 s)."""

SERVICE_NAME = "firezone-gateway"
"""``service.name`` (the reference's crate name, ``CARGO_PKG_NAME``)."""

METER = "connlib"
"""The meter's (instrumentation scope's) name: the reference's (``global::meter("connlib")``)."""

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""``Content-Type`` of ``GET /metrics`` (the Prometheus text exposition format)."""

Attrs = Mapping[str, str]
Series = Iterable[tuple[int, Attrs]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent reading: the merged counters and the packet counts (immutable once built)."""

    stats: Mapping[str, int]
    io: Mapping[str, tuple[int, int]]
    """``IoCounters`` attribute -> (IPv4, IPv6)."""


EMPTY = Snapshot(MappingProxyType({}), MappingProxyType({}))

_FAMILIES = ((V4, "ipv4"), (V6, "ipv6"))
_DIRECTIONS = (("rx", "receive"), ("tx", "transmit"))


def _io(kind: Literal["packets", "bytes"]) -> Callable[[Snapshot], Series]:
    def series(s: Snapshot) -> Series:
        for dev in ("tun", "udp"):
            for short, direction in _DIRECTIONS:
                counts = s.io.get(f"{dev}_{short}_{kind}", (0, 0))
                for fam, name in _FAMILIES:
                    attrs = {"network.io.direction": direction, "network.type": name}
                    if dev == "udp":
                        attrs["network.transport"] = "udp"
                    yield counts[fam], attrs

    return series


def _prefixed(prefix: str, attr: str) -> Callable[[Snapshot], Series]:
    def series(s: Snapshot) -> Series:
        for key, value in s.stats.items():
            if key.startswith(prefix):
                yield value, {attr: key[len(prefix) :]}

    return series


def _one(key: str) -> Callable[[Snapshot], Series]:
    return lambda s: [(s.stats.get(key, 0), {})]


def _errors(s: Snapshot) -> Series:
    yield (
        s.stats.get("driver.send_failed", 0),
        {
            "network.io.direction": "transmit",
            "network.transport": "udp",
            "error.type": "SendFailed",
        },
    )
    yield (
        s.stats.get("driver.tun_write_failed", 0),
        {
            "network.io.direction": "transmit",
            "error.type": "TunWriteFailed",
        },
    )


def _handshakes(s: Snapshot) -> Series:
    for role in ("initiator", "responder"):
        yield s.stats.get(f"wireguard.handshakes_as_{role}", 0), {"firezone.wireguard.role": role}


def _reconnects(s: Snapshot) -> Series:
    return [(max(0, s.stats.get("portal.connect_attempts", 0) - 1), {})]


@dataclass(frozen=True, slots=True)
class Instrument:
    """One exported instrument: its name, kind, unit, meaning and how to read it from a snapshot."""

    name: str
    kind: Literal["counter", "gauge"]
    unit: str
    description: str
    series: Callable[[Snapshot], Series]
    reference: bool = False
    """Firezone's gateway has this instrument (same name and attributes)."""

    @property
    def prometheus_name(self) -> str:
        """The family's name on ``/metrics`` (the SDK's Prometheus reader: dots to underscores, the unit
        ``By`` as ``_bytes``; counters' samples add ``_total``)."""
        return self.name.replace(".", "_") + ("_bytes" if self.unit == "By" else "")


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(
        "system.network.packets",
        "counter",
        "{packet}",
        "The number of packets processed.",
        _io("packets"),
        reference=True,
    ),
    Instrument(
        "system.network.io",
        "counter",
        "By",
        "Bytes processed: whole IP packets on the TUN device, UDP payloads on the sockets.",
        _io("bytes"),
    ),
    Instrument(
        "network.packet.dropped",
        "counter",
        "{packet}",
        "Count of packets that are dropped or discarded (error.type: the drop reason).",
        _prefixed("drop.", "error.type"),
        reference=True,
    ),
    Instrument(
        "system.network.errors",
        "counter",
        "{error}",
        "Number of IO errors encountered",
        _errors,
        reference=True,
    ),
    Instrument(
        "firezone.gateway.clients",
        "gauge",
        "{client}",
        "Clients the portal has authorised on this gateway (with a policy here).",
        _one("gateway.clients"),
    ),
    Instrument(
        "firezone.gateway.connections",
        "gauge",
        "{connection}",
        "Peer-to-peer connections (ICE + WireGuard) to clients.",
        _one("gateway.connections"),
    ),
    Instrument(
        "firezone.gateway.authorizations",
        "gauge",
        "{authorization}",
        "Resource authorisations in force (one per client and resource).",
        _one("gateway.authorizations"),
    ),
    Instrument(
        "firezone.gateway.portal.messages",
        "counter",
        "{message}",
        "Portal messages handled, by type (firezone.portal.message: authorize_flow as AuthorizeFlow, ...).",
        _prefixed("gateway.portal.", "firezone.portal.message"),
    ),
    Instrument(
        "firezone.gateway.portal.reconnects",
        "counter",
        "{connection}",
        "Connections to the portal attempted after the first one.",
        _reconnects,
    ),
    Instrument(
        "firezone.gateway.nat.sessions",
        "gauge",
        "{session}",
        "NAT sessions of DNS resources (proxy IP and port to real IP).",
        _one("gateway.nat_sessions"),
    ),
    Instrument(
        "firezone.gateway.dns.queries",
        "counter",
        "{query}",
        "DNS queries to the gateway's DNS servers answered, by response code (dns.response.code).",
        _prefixed("dns.responses.", "dns.response.code"),
    ),
    Instrument(
        "firezone.gateway.relay.allocations",
        "gauge",
        "{allocation}",
        "TURN allocations on the portal's relays, by phase (firezone.relay.phase: allocated, ...).",
        _prefixed("gateway.relay_allocations.", "firezone.relay.phase"),
    ),
    Instrument(
        "firezone.gateway.wireguard.handshakes",
        "counter",
        "{handshake}",
        "WireGuard handshakes completed, by our role (firezone.wireguard.role).",
        _handshakes,
    ),
    Instrument(
        "firezone.gateway.flows.active",
        "gauge",
        "{flow}",
        "TCP/UDP flows followed for the flow log (0 unless flow logs are on).",
        _one("gateway.flows_active"),
    ),
    Instrument(
        "firezone.gateway.flow_cache.hits",
        "counter",
        "{packet}",
        "Packets forwarded by the per-flow decision cache (decision 0155), by direction "
        "(firezone.flow.direction: outbound from clients, inbound to them).",
        _prefixed("gateway.flow_cache_hits.", "firezone.flow.direction"),
    ),
    Instrument(
        "firezone.gateway.flows.logged",
        "counter",
        "{flow}",
        "Flow-log records written.",
        _one("flowlog.records"),
    ),
)


def service_instance_id(firezone_id: str) -> str:
    """The reference's ``service.instance.id``: a UUID (legacy ID) is hashed with SHA-256, else as is."""
    try:
        uuid.UUID(firezone_id)
    except ValueError:
        return firezone_id
    return hashlib.sha256(firezone_id.encode()).hexdigest()


def make_exporter(backend: str | None, endpoint: str | None) -> Any | None:
    """The push exporter for ``--metrics`` (``None``: nothing is pushed)."""
    match backend:
        case None:
            return None
        case "stdout":
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

            return ConsoleMetricExporter()
        case "otel-collector":
            if endpoint is None:
                log.warning(
                    "FIREZONE_METRICS=otel-collector without OTLP_GRPC_ENDPOINT: metrics are not pushed "
                    "(as the reference, which has no hosted collector yet); GET /metrics serves them"
                )
                return None
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter(endpoint=f"http://{endpoint}", insecure=True)
        case _:
            raise ValueError(f"unknown metrics backend {backend!r}")


def export_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between pushes: ``OTEL_METRIC_EXPORT_INTERVAL`` (ms, as the SDK reads it), else 60."""
    raw = (os.environ if env is None else env).get("OTEL_METRIC_EXPORT_INTERVAL", "")
    try:
        ms = float(raw)
    except ValueError:
        ms = DEFAULT_EXPORT_INTERVAL_MS
    if not 0 < ms < math.inf:
        ms = DEFAULT_EXPORT_INTERVAL_MS
    return ms / 1000


Request = Callable[[Callable[[int], None]], None]
"""``Driver.call_soon``: run a function in the driver's loop at the end of its next turn."""


class Metrics:
    """The meter provider, its readers and the snapshot its instruments read."""

    def __init__(
        self,
        read: Callable[[], Snapshot],
        *,
        firezone_id: str,
        version: str,
        exporter: Any | None = None,
        request: Request | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._clock = clock
        self._taken_at: float | None = None
        self._request = request
        self._pending: anyio.Event | None = None
        self._snapshot = EMPTY
        self.interval = export_interval() if interval is None else interval
        self.registry = CollectorRegistry(auto_describe=True)
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        self._push: PeriodicExportingMetricReader | None = None
        if exporter is not None:
            # No thread of its own (interval inf): run_exports drives it after a fresh snapshot.
            self._push = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
            readers.append(self._push)
        resource = Resource.create(
            {
                "service.name": SERVICE_NAME,
                "service.version": version,
                "service.instance.id": service_instance_id(firezone_id),
                "os.type": "linux",
            }
        )
        self.provider = MeterProvider(metric_readers=readers, resource=resource)
        meter = self.provider.get_meter(METER)
        for inst in INSTRUMENTS:
            callback = self._callback(inst)
            if inst.kind == "counter":
                meter.create_observable_counter(
                    inst.name, [callback], unit=inst.unit, description=inst.description
                )
            else:
                meter.create_observable_gauge(
                    inst.name, [callback], unit=inst.unit, description=inst.description
                )

    def _callback(self, inst: Instrument) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            snapshot = self._snapshot  # one reference read: a whole snapshot, whichever thread asks
            return [Observation(value, dict(attrs)) for value, attrs in inst.series(snapshot)]

        return callback

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def observe(self, _now: int = 0) -> None:
        """Take a new snapshot (in the driver's loop only, or once it has stopped)."""
        self._snapshot = self._read()
        self._taken_at = self._clock()

    async def fresh(self) -> None:
        """Have the loop take a snapshot and wait for it (at most :data:`FRESH_TIMEOUT`); a snapshot younger
        than :data:`MIN_SNAPSHOT_INTERVAL` is fresh enough."""
        if self._taken_at is not None and self._clock() - self._taken_at < MIN_SNAPSHOT_INTERVAL:
            return
        if self._request is None:
            self.observe()
            return
        event = self._pending
        if event is None:
            event = self._pending = anyio.Event()

            def take(now: int) -> None:
                self._pending = None
                try:
                    self.observe(now)
                finally:
                    event.set()

            self._request(take)
        with anyio.move_on_after(FRESH_TIMEOUT):
            await event.wait()

    def render(self) -> bytes:
        """The Prometheus text exposition of the last snapshot."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """``GET /metrics``: a fresh snapshot, rendered."""
        await self.fresh()
        return self.render()

    async def run_exports(self) -> None:
        """Push every :attr:`interval` seconds until cancelled (nothing to do without an exporter)."""
        if self._push is None:
            return
        push = self._push
        while True:
            await anyio.sleep(self.interval)
            await self.fresh()
            try:
                await anyio.to_thread.run_sync(push.collect, abandon_on_cancel=True)
            except Exception as e:  # the SDK logs exporter failures itself; this is anything else
                log.warning("metrics export failed: %s", e)

    def shutdown(self) -> None:
        """Push the last snapshot and stop the exporters (blocking: run it in a thread)."""
        try:
            if self._push is not None:
                self._push.collect(timeout_millis=SHUTDOWN_TIMEOUT_MS)
            self.provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_MS)
        except Exception as e:  # an exporter failing at exit must not change the exit code
            log.warning("metrics exporter shutdown failed: %s", e)


def snapshot_of(stats: Iterable[Mapping[str, int]], io: IoCounters, extra: Mapping[str, int]) -> Snapshot:
    """Merge counter mappings (same names add up) and copy the packet counts into a :class:`Snapshot`."""
    merged: dict[str, int] = {}
    for part in (*stats, extra):
        for k, v in part.items():
            merged[k] = merged.get(k, 0) + v
    counts = {name: (getattr(io, name)[V4], getattr(io, name)[V6]) for name in IoCounters.__slots__}
    return Snapshot(MappingProxyType(merged), MappingProxyType(counts))
