"""Metrics, readiness and flow logs of the real daemon, checked from outside the process.

- **OTLP and flow logs, end to end** (the topology of :mod:`e2e.topology`): the gateway runs with
  ``FIREZONE_METRICS=otel-collector`` towards a real OTLP/gRPC receiver (opentelemetry-proto's
  ``MetricsService`` on grpcio, :mod:`tests.system.otlp_receiver`, in the gateway's namespace), JSON logs
  and ``RUST_LOG`` with ``flow_logs=trace`` (the reference's switch). A client pings, curls, asks a TXT
  record and tries a blocked port through the tunnel; the exported counters must grow by at least what was
  sent (packets both ways on the TUN and the sockets, the drop of the blocked port under its reason, the DNS
  answer under NOERROR, the handshake, the clients and authorisations), and ``/metrics`` must say the same
  in the Prometheus text format (parsed with ``prometheus_client.parser``). The curl's flow record must
  carry the client, the resource, both tuples and exactly the bytes curl counted each way.
- **Readiness**: a daemon started before its portal answers ``/readyz`` 503 (``/healthz`` 200), 200 once
  joined and configured, 503 again when the portal goes away; with ``FIREZONE_METRICS=stdout`` it runs and
  prints the SDK's export; ``FIREZONE_FLOW_LOGS=true`` turns the flow tracker on.

Every wait polls a condition with a bounded timeout; namespaces and processes are removed by the fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import checks
from e2e.demo import connect
from e2e.topology import CIDR_ID, CLIENT_IDS, CLIENT_TUNNEL, WEB_V4, Topology, run, sh, wait_for
from gateway_io.metrics import INSTRUMENTS
from tests.system.io_netns import netns
from tests.system.otlp_receiver import exports, points
from tests.system.test_daemon import BIN, PORTAL_CONFIG, PORTAL_PORT, TOKEN, process

pytestmark = pytest.mark.system

OTLP = "127.0.0.1:4317"
HEALTH = "127.0.0.1:8080"
PINGS = 10


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    env = {
        "FIREZONE_METRICS": "otel-collector",
        "OTLP_GRPC_ENDPOINT": OTLP,
        "OTEL_METRIC_EXPORT_INTERVAL": "500",  # ms: the SDK's variable (the reference's default is 60 s)
        "FIREZONE_LOG_FORMAT": "json",
    }
    with Topology(gateway_env=env, gateway_log="info,flow_logs=trace") as t:
        out = t.workdir / "otlp.jsonl"
        receiver = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                t.ns["gw"],
                sys.executable,
                "-m",
                "tests.system.otlp_receiver",
                OTLP,
                str(out),
            ],
            env={**t.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert receiver.stdout is not None
            assert receiver.stdout.readline().strip() == "listening"
            connect(t, 0)
            yield t
        finally:
            receiver.kill()
            receiver.wait(timeout=10)
            print(f"--- gateway log (tail) ---\n{t.procs['gateway'].text()[-3000:]}")


def _latest(topo: Topology) -> dict[tuple[str, frozenset[tuple[str, str]]], int]:
    """The newest export's data points by (name, attributes)."""
    got = exports(topo.workdir / "otlp.jsonl")
    if not got:
        return {}
    return {(name, frozenset(attrs.items())): value for name, attrs, value, _ in points(got[-1])}


def _value(series: dict[tuple[str, frozenset[tuple[str, str]]], int], name: str, **attrs: str) -> int:
    return series.get((name, frozenset(attrs.items())), 0)


TUN_TX = {"network.io.direction": "transmit", "network.type": "ipv4"}
TUN_RX = {"network.io.direction": "receive", "network.type": "ipv4"}
UDP_TX = {**TUN_TX, "network.transport": "udp"}
UDP_RX = {**TUN_RX, "network.transport": "udp"}


def test_otlp_export_counts_the_traffic_through_the_tunnel(topo: Topology) -> None:
    first = wait_for("a first OTLP export", lambda: _latest(topo), timeout=30)
    resource = next(r for *_, r in points(exports(topo.workdir / "otlp.jsonl")[-1]))
    assert resource["service.name"] == "firezone-gateway"
    assert resource["service.instance.id"] == f"e2e-gateway-{topo.tag}"  # not a UUID: as given

    r = run("ping", "-c", str(PINGS), "-i", "0.05", "-W", "2", WEB_V4, ns=topo.client_ns(0))
    assert f" {PINGS} received" in r.stdout, r.stdout
    assert checks.dig(topo, 0, "txt.fz.test", "TXT", "firezone e2e").ok
    assert checks.curl_name(topo, 0).ok
    assert checks.blocked_port(topo, 0).ok

    def grown() -> dict[tuple[str, frozenset[tuple[str, str]]], int] | None:
        now = _latest(topo)
        ok = (
            _value(now, "system.network.packets", **TUN_TX)
            - _value(first, "system.network.packets", **TUN_TX)
            >= PINGS
            and _value(now, "system.network.packets", **TUN_RX)
            - _value(first, "system.network.packets", **TUN_RX)
            >= PINGS
            and _value(now, "system.network.packets", **UDP_RX)
            - _value(first, "system.network.packets", **UDP_RX)
            >= PINGS
            and _value(now, "system.network.packets", **UDP_TX)
            - _value(first, "system.network.packets", **UDP_TX)
            >= PINGS
            and _value(now, "network.packet.dropped", **{"error.type": "filtered"}) >= 1
            and _value(now, "firezone.gateway.dns.queries", **{"dns.response.code": "NOERROR"}) >= 1
        )
        return now if ok else None

    now = wait_for("the export to show the traffic", grown, timeout=30)
    # Bytes: at least the ICMP echo requests' size (84-byte IPv4 packets) each way on the TUN.
    assert (
        _value(now, "system.network.io", **TUN_TX) - _value(first, "system.network.io", **TUN_TX)
        >= 84 * PINGS
    )
    assert _value(now, "firezone.gateway.clients") == 1
    assert _value(now, "firezone.gateway.connections") == 1
    assert _value(now, "firezone.gateway.authorizations") == 2  # the CIDR and the DNS resource
    assert (
        _value(now, "firezone.gateway.wireguard.handshakes", **{"firezone.wireguard.role": "responder"}) >= 1
    )
    assert (
        _value(now, "firezone.gateway.portal.messages", **{"firezone.portal.message": "AuthorizeFlow"}) >= 2
    )
    assert _value(now, "firezone.gateway.relay.allocations", **{"firezone.relay.phase": "allocated"}) == 2
    assert _value(now, "firezone.gateway.portal.reconnects") == 0


def _scrape(topo: Topology) -> dict[str, Any]:
    text = sh("curl", "-s", "--max-time", "5", f"http://{HEALTH}/metrics", ns=topo.ns["gw"])
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_endpoint_speaks_prometheus_and_matches(topo: Topology) -> None:
    # Traffic of its own (the tests of this module may run in any order, or on other workers): pings, a
    # forwarded TXT query, a connection to a port the filter blocks.
    r = run("ping", "-c", str(PINGS), "-i", "0.05", "-W", "2", WEB_V4, ns=topo.client_ns(0))
    assert f" {PINGS} received" in r.stdout, r.stdout
    assert checks.dig(topo, 0, "txt.fz.test", "TXT", "firezone e2e").ok
    assert checks.blocked_port(topo, 0).ok

    def complete() -> dict[str, Any] | None:  # a snapshot is reused for up to a second (decision 0160)
        got = _scrape(topo)
        return got if all(inst.prometheus_name in got for inst in INSTRUMENTS) else None

    families = wait_for("every instrument in /metrics", complete, timeout=10, interval=0.5)
    # Every instrument has data points, each of its kind.
    for inst in INSTRUMENTS:
        family = families.get(inst.prometheus_name)
        assert family is not None, (inst.name, sorted(families))
        assert family.type == inst.kind, (inst.name, family.type)
    packets = families["system_network_packets"]
    tun_tx = [
        s.value
        for s in packets.samples
        if s.name == "system_network_packets_total"
        and s.labels.get("network_io_direction") == "transmit"
        and s.labels.get("network_type") == "ipv4"
        and s.labels.get("network_transport", "") == ""
    ]
    assert tun_tx and tun_tx[0] >= PINGS, packets.samples
    clients = families["firezone_gateway_clients"]
    assert clients.samples[0].value == 1
    dropped = {s.labels["error_type"]: s.value for s in families["network_packet_dropped"].samples}
    assert dropped.get("filtered", 0) >= 1, dropped
    bytes_rx = [
        s.value
        for s in families["system_network_io_bytes"].samples
        if s.labels.get("network_transport") == "udp"
    ]
    assert sum(bytes_rx) > 0


def test_flow_record_of_a_curl_has_the_reference_fields_and_exact_bytes(topo: Topology) -> None:
    ns = topo.client_ns(0)
    r = run(
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
        "-w",
        "%{size_request} %{size_header} %{size_download} %{local_port}",
        f"http://{WEB_V4}/",
        ns=ns,
    )
    assert r.returncode == 0, r.stderr
    request, header, body, port = (int(x) for x in r.stdout.split())

    def record() -> dict[str, Any] | None:
        for line in topo.procs["gateway"].text().splitlines():
            if '"flow_logs.tcp"' not in line:
                continue
            rec = json.loads(line)
            if rec.get("inner_src_port") == port and rec.get("inner_dst_ip") == WEB_V4:
                return rec  # type: ignore[no-any-return]
        return None

    # The flow completes when both FINs were seen (the next timer turn) and is written within a second.
    rec = wait_for("the curl's flow record", record, timeout=15)
    assert (
        rec["target"] == "flow_logs.tcp"
        and rec["level"] == "TRACE"
        and rec["message"] == "TCP flow completed"
    )
    assert rec["client_id"] == str(CLIENT_IDS[0])
    assert rec["resource_id"] == str(CIDR_ID) and rec["resource_name"] and rec["resource_address"]
    assert rec["inner_src_ip"] == CLIENT_TUNNEL[0][0] and rec["inner_dst_port"] == 80
    assert rec["outer_dst_port"] > 0 and rec["outer_src_port"] > 0
    assert rec["outer_dst_ip"] == topo.ip("gw"), rec  # our socket's address (IP_PKTINFO)
    assert rec["tx_bytes"] == request, (rec, request)
    assert rec["rx_bytes"] == header + body, (rec, header, body)
    assert rec["tx_packets"] >= 3 and rec["rx_packets"] >= 2
    assert rec["start"] <= rec["last_packet"] <= rec["end"] and rec["start"].endswith("Z")
    assert "inner_domain" not in rec  # a CIDR resource: no domain (the reference leaves it out)


def test_a_scrape_flood_does_not_stop_the_data_path(topo: Topology) -> None:
    """Attack: 300 scrapes, 20 at a time, on the health port while a client pings through the tunnel
    (bounded: 300 requests, 20 pings over ~1 s). Every scrape is answered and no echo is lost. (With one
    client a walk of the core is cheap; that a flood walks it at most once a second, which bounds the
    cost at 10,000 clients, is tested in tests/io/test_metrics.py.)"""
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", topo.client_ns(0), "ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        flood = run(
            "curl", "-s", "--parallel", "--parallel-max", "20", "--max-time", "10", "-o", "/dev/null",
            "-w", "%{http_code}\n", f"http://{HEALTH}/metrics?n=[1-300]", ns=topo.ns["gw"], timeout=60,
        )  # fmt: skip
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    codes = flood.stdout.split()
    assert len(codes) == 300 and set(codes) == {"200"}, flood.stdout[-500:]
    assert " 20 received" in out, out


def _http(ns: str, path: str) -> int:
    code = (
        "import http.client; "
        f"c = http.client.HTTPConnection('127.0.0.1', 8080, timeout=5); "
        f"c.request('GET', '{path}'); print(c.getresponse().status)"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    return int(out.stdout.strip()) if out.returncode == 0 else -1


def test_readyz_follows_the_portal_and_stdout_metrics_run(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "FIREZONE_ID": f"metrics-test-{os.getpid()}",
        "FIREZONE_NO_INC_BUF": "true",
        "FIREZONE_METRICS": "stdout",
        "FIREZONE_FLOW_LOGS": "true",  # our switch (the e2e test above uses the reference's RUST_LOG one)
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "PYTHONUNBUFFERED": "1",
    }
    glog, plog = tmp_path / "gateway.log", tmp_path / "portal.log"
    gateway_argv = [
        str(BIN / "firezone-gateway"),
        TOKEN,
        "--api-url",
        f"ws://127.0.0.1:{PORTAL_PORT}",
        "--health-check-addr",
        HEALTH,
    ]
    portal_argv = [
        str(BIN / "firezone-dev-portal"),
        "--config",
        str(PORTAL_CONFIG),
        "--listen",
        f"127.0.0.1:{PORTAL_PORT}",
    ]
    with (
        netns("fzready") as ns,
        glog.open("w") as gout,
        plog.open("w") as pout,
        process(gateway_argv, ns, env, gout) as gateway,
    ):
        wait_for("the health check", lambda: _http(ns, "/healthz") == 200)
        assert _http(ns, "/readyz") == 503  # no portal yet: not joined, no interface
        with process(portal_argv, ns, env, pout) as portal:
            wait_for("readiness after the join", lambda: _http(ns, "/readyz") == 200)
            portal.send_signal(signal.SIGKILL)
            portal.wait(timeout=10)
        wait_for("not ready while the portal is gone", lambda: _http(ns, "/readyz") == 503)
        assert _http(ns, "/healthz") == 200  # still alive: health is the reference's constant
        wait_for("the stdout exporter", lambda: '"system.network.packets"' in glog.read_text())
        assert "flow logs on" in glog.read_text()
        assert gateway.poll() is None
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
