"""The dual-stack underlay (:mod:`e2e.topology`): at the same time, ``client`` reaches the gateway over IPv4
only (direct) and ``client3``, whose underlay is IPv6 only, reaches it over IPv6 (its direct path and
relay1 are cut in the router, so its tunnel runs through relay2, coturn, on coturn's IPv6 address).

Checked from the clients' side (their status: nominated path and the ICE candidates of both sides), on
the relay's host (ip6tables counts the datagrams that reach coturn over IPv6) and with ordinary programs
through both tunnels at once (ping, curl by name, dig). Every wait is a polled, bounded condition.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from e2e import checks
from e2e.demo import connect
from e2e.topology import WEB_V4, Topology, run, wait_for

pytestmark = pytest.mark.system

V4_CLIENT, V6_CLIENT = 0, 2


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(coturn=True) as t:
        for client in (V4_CLIENT, V6_CLIENT):
            connect(t, client)
        try:
            yield t
        finally:
            for name in ("gateway", "client", "client3", "relay2"):
                print(f"--- {name} log (tail) ---\n{t.procs[name].text()[-2000:]}")


def _paths(topo: Topology, client: int) -> dict[str, object]:
    (p,) = topo.client_status(client)["paths"].values()
    return p  # type: ignore[no-any-return]


def test_the_ipv6_only_client_has_no_ipv4_and_reaches_the_gateway_through_corturns_ipv6_side(
    topo: Topology,
) -> None:
    ns = topo.client_ns(V6_CLIENT)
    assert run("ip", "-4", "addr", "show", "dev", "eth0", ns=ns).stdout.strip() == ""
    assert topo.ip6("client3") in run("ip", "-6", "addr", "show", "dev", "eth0", ns=ns).stdout
    p = _paths(topo, V6_CLIENT)
    local, remote = p["local"], p["remote"]
    assert isinstance(local, list) and isinstance(remote, list)
    assert [c for c in local if c.startswith("host")] == [f"host [{topo.ip6('client3')}]:52625"]
    # The gateway's candidates for it: IPv6 host, server-reflexive and relayed ones among them.
    gw6 = f"[{topo.ip6('gw')}]:52625"
    assert f"host {gw6}" in remote and f"srflx {gw6}" in remote
    assert any(c.startswith("relay ") for c in remote)  # (its family: that of the relay the gateway chose)
    assert topo.client_path(V6_CLIENT).startswith(("via relay2", "to relay2"))
    before = topo.relay_stats(2).get("in6", 0)
    r = run("ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4, ns=ns)
    assert " 20 received" in r.stdout, r.stdout
    wait_for(
        "coturn to count the pings over IPv6", lambda: topo.relay_stats(2).get("in6", 0) - before >= 20, 5
    )


def test_the_ipv4_only_client_goes_direct_over_ipv4_at_the_same_time(topo: Topology) -> None:
    ns = topo.client_ns(V4_CLIENT)
    assert run("ip", "-6", "addr", "show", "dev", "eth0", ns=ns).stdout.strip() == ""
    p = _paths(topo, V4_CLIENT)
    assert p["kind"] == "peer_to_peer" and p["dest"] == f"{topo.ip('gw')}:52625"
    local = p["local"]
    assert isinstance(local, list) and [c for c in local if c.startswith("host")] == [
        f"host {topo.ip('client')}:52625"
    ]
    # Both tunnels at once: two pings running side by side.
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", topo.client_ns(c), "ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4],
            stdout=subprocess.PIPE,
            text=True,
        )
        for c in (V4_CLIENT, V6_CLIENT)
    ]
    outs = [proc.communicate(timeout=30)[0] for proc in procs]
    assert all(" 20 received" in out for out in outs), outs
    assert topo.client_status(V6_CLIENT).get("connected")


@pytest.mark.parametrize("client", [V4_CLIENT, V6_CLIENT])
def test_every_check_of_the_demo_passes_for_both(topo: Topology, client: int) -> None:
    failed = [c.line() for c in checks.all_checks(topo, client) if not c.ok]
    assert not failed, "\n".join(failed)
