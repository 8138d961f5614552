"""The dual-stack underlay (:mod:`e2e.topology`): at the same time, ``client`` reaches the gateway over IPv4
only (direct) and ``client3``, whose underlay is IPv6 only, reaches it over IPv6 (its direct path and
relay1 are cut in the router, so its tunnel runs through relay2, coturn, on coturn's IPv6 address).

Relay-only over IPv6: on coturn's host the IPv4 side of its relayed addresses (ports 49152-65535, where
coturn relays from) is dropped, so every path ``client3`` can have uses an IPv6 relayed address of coturn
(its own towards the gateway's IPv6 host address, or the gateway's when the gateway picked coturn for the
connection). coturn grants it in the same ALLOCATE as the IPv4 one (decision 0171).

Checked from the clients' side (their status: nominated path and the ICE candidates of both sides), on
the relay's host (ip6tables counts the datagrams that reach coturn over IPv6 and those through its IPv6
relayed addresses) and with ordinary programs through both tunnels at once (ping, curl by name, dig).
Every wait is a polled, bounded condition.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from e2e import checks
from e2e.demo import connect
from e2e.topology import WEB_V4, Topology, run, sh, wait_for

pytestmark = pytest.mark.system

V4_CLIENT, V6_CLIENT = 0, 2
RELAYED_PORTS = "49152:65535"
"""coturn's relayed ports in the topology (``min-port``/``max-port`` of ``e2e.topology.COTURN``)."""


def _relay_only_over_ipv6(topo: Topology) -> None:
    """On coturn's host: drop the IPv4 side of its relayed addresses; count the IPv6 side (both directions).
    Appended after the topology's own counting rules, which :meth:`Topology.relay_stats` reads first."""
    ns = topo.ns["relay2"]
    for tool, target in (("iptables", ["-j", "DROP"]), ("ip6tables", [])):
        sh(tool, "-w", "-A", "INPUT", "-p", "udp", "--dport", RELAYED_PORTS, *target, ns=ns)
        sh(tool, "-w", "-A", "OUTPUT", "-p", "udp", "--sport", RELAYED_PORTS, *target, ns=ns)


def _relayed6(topo: Topology) -> int:
    """Datagrams through coturn's IPv6 relayed addresses so far (in and out)."""
    total = 0
    for chain, opt in (("INPUT", "dpts:"), ("OUTPUT", "spts:")):
        out = sh("ip6tables", "-w", "-L", chain, "-v", "-x", "-n", ns=topo.ns["relay2"])
        total += sum(int(line.split()[0]) for line in out.splitlines() if f"{opt}{RELAYED_PORTS}" in line)
    return total


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(coturn=True) as t:
        _relay_only_over_ipv6(t)
        for client in (V4_CLIENT, V6_CLIENT):
            connect(t, client)
        relay6 = f"relay [{t.ip6('relay2')}]:"
        try:
            # "connected" may show before ICE gathered: wait for the IPv6-only client's own candidates.
            # The client samples the connection's relay from all its allocations, as snownet does; when it
            # samples relay1, which it cannot reach, its relayed candidates come only once that allocation
            # is given up (8 s) and the connection re-homed, possibly more than once when a new grant
            # brings relay1 back: the bound allows for several such rounds on a loaded machine. Its host
            # candidate comes with relay2's first answer whichever relay the connection is homed on (it
            # once came only with a new connection, and this wait timed out with relayed candidates only).
            try:
                wait_for(
                    "client3's host and IPv6 relayed candidates",
                    lambda: (
                        any(c.startswith("host") for c in _local(t))
                        and any(c.startswith(relay6) for c in _local(t))
                    ),
                    timeout=90,
                )
            except AssertionError as e:
                paths = t.client_status(V6_CLIENT).get("paths")
                raise AssertionError(f"{e}; client3's paths: {paths}") from e
            yield t
        finally:
            for name in ("gateway", "client", "client3", "relay2"):
                print(f"--- {name} log (tail) ---\n{t.procs[name].text()[-2000:]}")


def _local(topo: Topology) -> list[str]:
    """The IPv6-only client's own ICE candidates (empty until it has a connection)."""
    paths = topo.client_status(V6_CLIENT).get("paths", {})
    return [c for p in paths.values() for c in p.get("local", [])]


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


def test_the_ipv6_only_client_holds_and_uses_coturns_ipv6_relayed_address(topo: Topology) -> None:
    relay6 = f"relay [{topo.ip6('relay2')}]:"
    local = _local(topo)
    # Its allocation on coturn, asked over IPv6, holds coturn's IPv6 relayed address beside the IPv4 one
    # (the gateway's relayed candidates are those of the relay it picked for the connection, either one).
    assert any(c.startswith(relay6) for c in local), local
    assert any(c.startswith(f"relay {topo.ip('relay2')}:") for c in local), local
    assert topo.client_path(V6_CLIENT).startswith(("via relay2", "to relay2"))
    # The IPv4 side of coturn's relay is dropped: the pings go through its IPv6 relayed addresses (at least
    # the request and the reply of each).
    before = _relayed6(topo)
    r = run("ping", "-c", "20", "-i", "0.05", "-W", "2", WEB_V4, ns=topo.client_ns(V6_CLIENT))
    assert " 20 received" in r.stdout, r.stdout
    wait_for("coturn's IPv6 relayed addresses to carry the pings", lambda: _relayed6(topo) - before >= 40, 5)


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
