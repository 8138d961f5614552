"""End to end on real kernels (the topology of :mod:`e2e.topology`): the real ``firezone-gateway`` daemon,
the dev portal, the project's relays and two client hosts running the simulated client's logic over a real
TUN, in network namespaces.

One topology serves the whole module (building it takes a few seconds); the tests run in file order and
each leaves the access it changed as it found it. Every wait polls a condition with a bounded timeout.
``client`` (index 0) may reach the gateway directly; ``client2`` (index 1) has its direct path dropped in
the router, so its tunnel runs over a relay. The portal outage lasts ``E2E_PORTAL_OUTAGE`` seconds (60 by
default, as the issue asks); the whole module stays under about 3 minutes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from e2e import checks
from e2e.demo import connect
from e2e.topology import (
    CIDR_ID,
    CLIENT_IDS,
    DNS_ID,
    HOSTS_ONLY_NAME,
    RELAY_IDS,
    WEB_V4,
    Topology,
    run,
    wait_for,
)
from gateway_io.udp import DEFAULT_PORT

pytestmark = pytest.mark.system

OUTAGE = float(os.environ.get("E2E_PORTAL_OUTAGE", "60"))
"""Seconds the portal stays down in the outage test (the issue's 60 s)."""
REVOCATION_BUDGET = 1.0
"""Revoked access must stop traffic within this many seconds (the issue's 1 s)."""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(gateway_log="info,gateway_io.system_resolver=debug") as t:
        for client in (0, 1):
            connect(t, client)
        try:
            yield t
        finally:
            for name in ("gateway", "client", "client2", "portal"):
                if name in t.procs:
                    print(f"--- {name} log (tail) ---\n{t.procs[name].text()[-2500:]}")


def _assert_all(results: list[checks.Check]) -> None:
    failed = [c.line() for c in results if not c.ok]
    assert not failed, "\n".join(failed)


def _relay_in(topo: Topology) -> dict[int, int]:
    return {i: topo.relay_stats(i).get("in", 0) for i in (1, 2)}


def _relay_grew(topo: Topology, before: dict[int, int], at_least: int) -> int | None:
    """The relay whose counter grew by ``at_least`` since ``before`` (stats are written every second)."""
    now = _relay_in(topo)
    for i in (1, 2):
        if now[i] - before[i] >= at_least:
            return i
    return None


def test_direct_client_reaches_cidr_and_dns_resources_and_is_blocked_outside_the_filters(
    topo: Topology,
) -> None:
    _assert_all(checks.all_checks(topo, 0))


def _kernel_drops(topo: Topology, port: int) -> int:
    """Datagrams the kernel dropped at the gateway's UDP sockets on ``port`` (both families): its socket
    filter's drops and a full receive queue's (``/proc/net/udp``, ``/proc/net/udp6``: the last column)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in run("cat", table, ns=topo.ns["gw"]).stdout.splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                total += int(cols[-1])
    return total


def test_the_gateways_kernel_dropped_nothing_the_clients_and_relays_sent(topo: Topology) -> None:
    """Both clients connected (one directly, one over a relay) and the checks ran: no datagram of theirs
    or of the relays was dropped before the daemon read it. A sender's segmented send puts a handshake
    message and a smaller STUN message in one run; the socket filter once dropped such runs (decision
    0182), and every connection's first handshake with them."""
    assert _kernel_drops(topo, DEFAULT_PORT) == 0


def test_dns_resource_names_resolve_like_the_system_with_a_30s_cache(topo: Topology) -> None:
    """The gateway resolves DNS-resource names with ``getaddrinfo``: a name only its hosts file knows is
    reachable; a name unbound knows is asked upstream once, and asked again within 30 s (the client
    re-sends ``assigned_ips`` when the name is queried again) it comes from the cache: unbound, which logs
    every query, sees no second one."""
    got = checks.curl_name(topo, 0, f"http://{HOSTS_ONLY_NAME}/")
    assert got.ok, got.line()
    assert topo.upstream_queries(HOSTS_ONLY_NAME) == 0
    assert topo.upstream_queries(HOSTS_ONLY_NAME, "AAAA") == 0

    name = "fresh.fz.test"
    assert topo.upstream_queries(name) == 0
    got = checks.curl_name(topo, 0, f"http://{name}/")
    assert got.ok, got.line()
    wait_for("unbound to log the gateway's query", lambda: topo.upstream_queries(name) == 1, timeout=5)
    gateway = topo.procs["gateway"]
    hits_before = gateway.text().count(f"resolved {name} from the cache")
    got = checks.curl_name(topo, 0, f"http://{name}/")
    assert got.ok, got.line()
    wait_for(
        "the gateway to answer the second assigned_ips from its cache",
        lambda: gateway.text().count(f"resolved {name} from the cache") > hits_before,
        timeout=5,
    )
    assert topo.upstream_queries(name) == 1, "the second resolution went upstream"


def test_relay_only_client_does_the_same_over_a_relay(topo: Topology) -> None:
    before = _relay_in(topo)
    _assert_all(checks.all_checks(topo, 1))
    # 20 echo requests and their replies cross a relay (each datagram counted once as it arrives).
    r = run("ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4, ns=topo.client_ns(1))
    assert " 20 received" in r.stdout, r.stdout
    wait_for("the relay counters to show the pings", lambda: _relay_grew(topo, before, 40), timeout=5)


def test_revoked_access_stops_traffic_within_one_second(topo: Topology) -> None:
    assert checks.ping_once(topo, 0)
    assert topo.revoke(0, CIDR_ID)["ok"]
    t0 = time.monotonic()
    try:
        wait_for(
            "traffic to stop after the revocation",
            lambda: not checks.ping_once(topo, 0, wait=0.2),
            timeout=REVOCATION_BUDGET,
            interval=0.0,
        )
        stopped = time.monotonic() - t0
        # And it stays stopped (not a lost packet): three more echo requests go unanswered.
        r = run("ping", "-c", "3", "-i", "0.2", "-W", "1", WEB_V4, ns=topo.client_ns(0))
        assert " 0 received" in r.stdout, r.stdout
        assert stopped <= REVOCATION_BUDGET
    finally:
        assert topo.grant(0, CIDR_ID)["ok"]
    wait_for("access to come back after a new grant", lambda: checks.ping_once(topo, 0))


def test_authorization_expiry_stops_traffic_and_a_new_grant_restores_it(topo: Topology) -> None:
    assert checks.ping_once(topo, 0)
    expires = int(time.time()) + 2
    r = topo.admin("expiry", client=str(CLIENT_IDS[0]), resource=str(CIDR_ID), expires_at=str(expires))
    assert r["ok"], r
    assert checks.ping_once(topo, 0), "access ended before its expiry"
    wait_for("the authorisation to expire", lambda: not checks.ping_once(topo, 0, wait=0.3), timeout=15)
    assert time.time() >= expires - 0.5
    assert topo.grant(0, CIDR_ID)["ok"]
    wait_for("access to come back after a new grant", lambda: checks.ping_once(topo, 0))


def test_gateway_restart_sigterm_exits_0_and_clients_reconnect(topo: Topology) -> None:
    gw = topo.procs["gateway"]
    assert gw.stop(signal.SIGTERM) == 0, gw.text()[-2000:]
    assert not checks.ping_once(topo, 0, wait=0.5)
    topo.start_gateway()
    for client in (0, 1):
        wait_for(f"client {client} to reconnect", lambda c=client: checks.ping_once(topo, c), timeout=30)
    _assert_all([checks.curl_name(topo, 0), checks.dig(topo, 1, "txt.fz.test", "TXT", "firezone e2e")])


def test_traffic_keeps_flowing_while_the_portal_is_down(topo: Topology) -> None:
    ns = topo.client_ns(0)
    count = int(OUTAGE / 0.5)
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.5", "-W", "2", WEB_V4],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        topo.procs["portal"].stop(signal.SIGKILL)
        out, _ = pinger.communicate(timeout=OUTAGE + 30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
        topo.start_portal()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m is not None, out
    sent, got = int(m.group(1)), int(m.group(2))
    assert sent == count and got >= count - 1, out  # at most one echo lost around the kill
    wait_for("the gateway to rejoin the restarted portal", topo.gateway_joined, timeout=60)
    # The new portal run knows no flows: grant again, and the clients keep working through it.
    for client in (0, 1):
        for rid in (CIDR_ID, DNS_ID):
            assert topo.grant(client, rid)["ok"]
    for client in (0, 1):
        wait_for(f"client {client} after the portal came back", lambda c=client: checks.ping_once(topo, c))


def test_relay_killed_traffic_moves_to_the_other_relay(topo: Topology) -> None:
    before = _relay_in(topo)
    r = run("ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4, ns=topo.client_ns(1))
    assert " 20 received" in r.stdout, r.stdout
    used = wait_for("the relay in use", lambda: _relay_grew(topo, before, 40), timeout=5)
    other = 2 if used == 1 else 1
    assert checks.path(topo, 1, relayed=True).ok
    topo.procs[f"relay{used}"].stop(signal.SIGKILL)
    assert topo.admin("relays", offline=str(RELAY_IDS[used - 1]))["ok"]
    wait_for("client2 to work over the other relay", lambda: checks.ping_once(topo, 1), timeout=45)
    before = _relay_in(topo)
    r = run("ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4, ns=topo.client_ns(1))
    assert " 20 received" in r.stdout, r.stdout
    wait_for("the other relay to carry the pings", lambda: _relay_grew(topo, before, 40) == other, timeout=5)
    assert checks.path(topo, 1, relayed=True).ok


def test_coturn_as_the_second_relay_takes_over_when_ours_dies() -> None:
    """relay2 is coturn (TURN REST credentials from the portal): client2, whose direct path is cut, keeps
    working over it once our relay is killed and reported offline."""
    with Topology(coturn=True) as t:
        connect(t, 1)
        assert checks.path(t, 1, relayed=True).ok
        t.procs["relay1"].stop(signal.SIGKILL)
        assert t.admin("relays", offline=str(RELAY_IDS[0]))["ok"]
        wait_for("client2 to work over coturn", lambda: checks.ping_once(t, 1), timeout=45)
        before = _relay_in(t)
        r = run("ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4, ns=t.client_ns(1))
        assert " 20 received" in r.stdout, r.stdout
        wait_for("coturn to carry the pings", lambda: _relay_grew(t, before, 40) == 2, timeout=5)
        assert "via relay2" in t.client_path(1) or "to relay2" in t.client_path(1), t.client_path(1)
