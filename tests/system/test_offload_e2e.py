"""The offload paths on real kernels (the topology of :mod:`e2e.topology`: the dev client and the real
gateway daemon, each on a TUN device, in network namespaces).

With offloads (the default) TCP and UDP cross the tunnel with every byte intact: a 16 MB TCP echo and
UDP datagrams each carrying a SHA-256 of itself, through the DNS resource (NAT path), and iperf3 TCP
both ways and UDP at a fixed rate through the CIDR resource. The device counters show that the offload
paths carried them: the client's TUN handed us super-packets (TSO), the gateway wrote coalesced
super-packets to its TUN, and the client's datagrams left as UDP GSO runs. Then the client's underlay
route gets an MTU below one datagram, so the kernel refuses ``UDP_SEGMENT``: the client falls back per
destination and the transfers stay intact. A second topology with ``FIREZONE_TUN_OFFLOAD=0`` and
``FIREZONE_UDP_OFFLOAD=0`` on both ends shows the one-packet fallback carrying the same transfers.

Bounded: each transfer has its own timeout (60 s at most); the module takes about a minute. The counter
thresholds are generous (a super-packet path averages tens of KiB per packet, the fallback at most one
MTU), not timings.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.demo import connect
from e2e.topology import WEB_V4, Topology, run, sh, wait_for

pytestmark = pytest.mark.system

HELPER = str(Path(__file__).with_name("offload_transfer.py"))
PORT = 7001
"""Echo port on the web host, reached through the DNS resource (no filters there)."""
TCP_BYTES = 16 * 1024 * 1024
UDP_COUNT, UDP_SIZE = 2000, 1200
OFF = {"FIREZONE_TUN_OFFLOAD": "0", "FIREZONE_UDP_OFFLOAD": "0"}


def _link_stats(ns: str, dev: str) -> dict[str, int]:
    data = json.loads(sh("ip", "-s", "-j", "link", "show", "dev", dev, ns=ns))[0]["stats64"]
    return {f"{k}_{f}": int(data[k][f]) for k in ("rx", "tx") for f in ("bytes", "packets")}


def _start(topo: Topology) -> str:
    """Connect client 0, start the echo server; the DNS resource's proxy IPv4 for ``web.fz.test``."""
    connect(topo, 0)
    topo._proc("echo", "web", [sys.executable, HELPER, "server", str(PORT)])
    wait_for("the echo server", lambda: f":{PORT}" in sh("ss", "-ltn", ns=topo.ns["web"]))
    out = run("dig", "+short", "+time=3", "+tries=2", "web.fz.test", "A", ns=topo.client_ns(0)).stdout.split()
    assert out, "the stub resolver gave no proxy address"
    return out[0]


def _iperf(ns: str, *args: str) -> dict[str, Any]:
    """One iperf3 run's JSON. iperf3 3.12's server resets a control connection that arrives while it is
    still ending the previous test (the client says "control message" or, when the reset meets its
    connect, "unable to connect to server: Connection reset by peer"); that (and only that) is retried,
    up to 3 times."""
    for attempt in range(3):
        r = run("iperf3", "-c", WEB_V4, "-t", "2", "-J", *args, ns=ns, timeout=60)
        data: dict[str, Any] = json.loads(r.stdout)
        error = str(data.get("error", ""))
        if not ("control message" in error or "Connection reset by peer" in error) or attempt == 2:
            return data
        time.sleep(0.5)  # no condition to wait for: the server shows no state between tests
    raise AssertionError("unreachable")


def _transfers(topo: Topology, proxy: str) -> None:
    ns = topo.client_ns(0)
    r = run(sys.executable, HELPER, "tcp", proxy, str(PORT), str(TCP_BYTES), ns=ns, timeout=90)
    tcp = json.loads(r.stdout)
    assert tcp["ok"] and tcp["bytes"] == TCP_BYTES, tcp
    r = run(sys.executable, HELPER, "udp", proxy, str(PORT), str(UDP_COUNT), str(UDP_SIZE), ns=ns, timeout=90)
    udp = json.loads(r.stdout)
    assert udp["bad"] == 0, udp
    # Generous: a busy machine drops some; integrity is the point.
    assert udp["received"] >= UDP_COUNT // 2, udp
    for extra in ((), ("-R",)):
        data = _iperf(ns, *extra)
        assert "error" not in data, data.get("error")
        assert data["end"]["sum_received"]["bytes"] > 1_000_000
    data = _iperf(ns, "-u", "-b", "20M", "-l", "1200")
    assert "error" not in data, data.get("error")
    assert data["end"]["sum"]["lost_percent"] < 20, data["end"]["sum"]


@pytest.fixture(scope="module")
def offloaded() -> Iterator[tuple[Topology, str]]:
    with Topology() as t:
        yield t, _start(t)


def test_offload_paths_carry_tcp_and_udp_intact(offloaded: tuple[Topology, str]) -> None:
    topo, proxy = offloaded
    assert "offloads 0x" in topo.procs["gateway"].text() and "offloads 0x" in topo.procs["client"].text()
    c_tun0 = _link_stats(topo.client_ns(0), "tun-fzclient")
    g_tun0 = _link_stats(topo.ns["gw"], "tun-firezone")
    c_eth0 = _link_stats(topo.client_ns(0), "eth0")
    _transfers(topo, proxy)
    c_tun = _link_stats(topo.client_ns(0), "tun-fzclient")
    g_tun = _link_stats(topo.ns["gw"], "tun-firezone")
    c_eth = _link_stats(topo.client_ns(0), "eth0")
    # What the kernel handed the client's TUN reader (tx of the device): TSO super-packets.
    per_read = (c_tun["tx_bytes"] - c_tun0["tx_bytes"]) / max(1, c_tun["tx_packets"] - c_tun0["tx_packets"])
    # What the gateway wrote to its TUN (rx of the device): coalesced super-packets.
    per_write = (g_tun["rx_bytes"] - g_tun0["rx_bytes"]) / max(1, g_tun["rx_packets"] - g_tun0["rx_packets"])
    # The client's datagrams on its underlay: UDP GSO runs leave as one skb each.
    per_send = (c_eth["tx_bytes"] - c_eth0["tx_bytes"]) / max(1, c_eth["tx_packets"] - c_eth0["tx_packets"])
    assert per_read > 2000, per_read
    assert per_write > 2000, per_write
    assert per_send > 2000, per_send


def test_udp_gso_refused_falls_back_per_destination(offloaded: tuple[Topology, str]) -> None:
    """A route whose MTU is below one datagram (a narrow path): the kernel refuses ``UDP_SEGMENT``
    (``EINVAL``) and the client sends to that destination one datagram at a time (IP fragments)."""
    topo, proxy = offloaded
    ns = topo.client_ns(0)
    gw = topo.ip("gw")
    via = json.loads(sh("ip", "-j", "route", "get", gw, ns=ns))[0]["gateway"]
    sh("ip", "route", "add", f"{gw}/32", "via", via, "dev", "eth0", "mtu", "lock", "1300", ns=ns)
    try:
        _transfers(topo, proxy)
        assert "UDP GSO refused towards" in topo.procs["client"].text()
    finally:
        sh("ip", "route", "del", f"{gw}/32", ns=ns, check=False)


def test_fallback_without_offloads_carries_the_same() -> None:
    with Topology(gateway_env=OFF, client_env=OFF) as topo:
        proxy = _start(topo)
        for name in ("gateway", "client"):
            text = topo.procs[name].text()
            assert "offloads off (FIREZONE_TUN_OFFLOAD)" in text and "UDP offloads off" in text
        g0 = _link_stats(topo.ns["gw"], "tun-firezone")
        _transfers(topo, proxy)
        g = _link_stats(topo.ns["gw"], "tun-firezone")
        assert (g["rx_bytes"] - g0["rx_bytes"]) / max(1, g["rx_packets"] - g0["rx_packets"]) <= 1280
