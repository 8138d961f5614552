"""DNS fairness under floods, on real kernels (``e2e.topology``, the real daemon with its default limits;
decision 0111): one client flooding the forwarder, or anyone flooding the DNS port with malformed
queries, leaves the other clients' SRV/TXT lookups answered.

These are bounded system tests with measured thresholds, as the issue asks: every flood is bounded in
count and time (a few seconds), and the thresholds are generous (at least 90 % of the other client's
lookups answered, each lookup allowed 2 s and one try, up to 20 lookups) so that a busy CI machine does not
fail them,
while the behaviour before decision 0111 (0 of 10 answered during a malformed flood in the review) would.
The module builds its own topology (a few seconds).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import checks
from e2e.topology import Topology, run
from tests.system.underlay import attacked_topology, gateway_tunnel_addresses, nft_counters

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
SRV_NAME, SRV_ANSWER = "_http._tcp.fz.test", "10 5 80 web.fz.test."
LOOKUPS = 20
"""SRV lookups the other client makes during a flood."""
TUNNEL_FLOOD_RATE = 2000
"""Malformed queries a second that one client pushes through its tunnel: 20 times the per-client rate,
and within what the gateway absorbs on a busy 2-core machine. An open-loop flood faster than the gateway
can decrypt fills the kernel's shared UDP socket buffer, whose drops no per-client rule reaches (decision
0111, consequences); that is not what this test measures."""
FLOOD_SECONDS = 6
"""Upper bound of every flood (it also stops after its datagram count)."""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with attacked_topology() as t:
        yield t


def lookups_during(
    topo: Topology, clients: tuple[int, ...], flood: subprocess.Popen[str]
) -> list[tuple[int, int]]:
    """``(answered, asked)`` per client: SRV lookups, taking turns, while ``flood`` runs (at most
    :data:`LOOKUPS` each)."""
    answered, asked = [0] * len(clients), [0] * len(clients)
    while min(asked) < LOOKUPS and flood.poll() is None:
        for i, client in enumerate(clients):
            r = run("dig", "+short", "+time=2", "+tries=1", SRV_NAME, "SRV", ns=topo.client_ns(client))
            asked[i] += 1
            answered[i] += SRV_ANSWER in r.stdout
    return list(zip(answered, asked, strict=True))


def finish(flood: subprocess.Popen[str]) -> str:
    try:
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 60)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    return out


def test_one_client_flooding_the_forwarder_leaves_the_other_answered(topo: Topology) -> None:
    """Client 1 runs dnsperf at full speed (200 queries in flight) through its tunnel; beyond its rate
    (100 a second, bursts of 200) the gateway answers it SERVFAIL at once; client 2's lookups are
    answered meanwhile."""
    data = topo.workdir / "flood-queries.txt"
    data.write_text(f"{SRV_NAME} SRV\ntxt.fz.test TXT\n")
    argv = [
        "dnsperf",
        "-s",
        "100.100.111.1",
        "-d",
        str(data),
        "-l",
        str(FLOOD_SECONDS),
        "-q",
        "200",
        "-t",
        "2",
    ]
    flood = subprocess.Popen(
        ["ip", "netns", "exec", topo.client_ns(0), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    [(answered, asked)] = lookups_during(topo, (1,), flood)
    out = finish(flood)
    assert asked >= 5, f"the flood ended before the lookups could run:\n{out}"
    assert answered >= 0.9 * asked, f"{answered}/{asked} answered during the flood"
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    servfail = re.search(r"SERVFAIL (\d+)", out)
    assert servfail is not None and int(servfail.group(1)) > completed // 2, out  # rate-limited
    noerror = int(re.search(r"NOERROR (\d+)", out).group(1))  # type: ignore[union-attr]
    assert noerror <= 200 + 100 * (FLOOD_SECONDS + 3), out  # the burst, then 100 a second
    assert checks.dig(topo, 0, SRV_NAME, "SRV", SRV_ANSWER).ok  # and the flooder is served again after


@pytest.mark.parametrize("version", [4, 6])
def test_a_malformed_flood_from_the_underlay_starves_nobody(topo: Topology, version: int) -> None:
    """The review's flood (twelve kinds of malformed query at full rate to :53535) from the router with
    a route to the tunnel address: dropped at the door (our table's input rule counts it), and both
    clients' lookups are answered during it."""
    target = str(gateway_tunnel_addresses(topo)[version])
    before = nft_counters(topo)["input:0" if version == 4 else "input:1"]
    argv = [sys.executable, "-m", "tests.system.dns_flood", target, "53535", "--seconds", str(FLOOD_SECONDS)]
    argv += ["--count", "5000000"]  # (the time bounds it: a Python loop sends a few 100k a second)
    flood = subprocess.Popen(
        ["ip", "netns", "exec", topo.ns["inet"], *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    results = lookups_during(topo, (0, 1), flood)
    out = finish(flood)
    sent = int(re.search(r"sent (\d+)", out).group(1))  # type: ignore[union-attr]
    for answered, asked in results:
        assert asked >= 3 and answered >= 0.9 * asked, (results, out)
    dropped = nft_counters(topo)["input:0" if version == 4 else "input:1"] - before
    assert dropped >= 0.9 * sent, (dropped, sent)


def test_a_malformed_flood_through_a_tunnel_leaves_the_other_client_answered(topo: Topology) -> None:
    """Client 1 floods its own stub (:data:`TUNNEL_FLOOD_RATE`) with queries whose question is whole but
    whose records are broken: its stub forwards them through the tunnel, the gateway's listener passes them
    to the forwarder, which drops them (a few microseconds each, no answer). Client 2's lookups are
    answered meanwhile."""
    argv = [sys.executable, "-m", "tests.system.dns_flood", "100.100.111.1", "53", "--tunnel"]
    argv += ["--seconds", str(FLOOD_SECONDS), "--rate", str(TUNNEL_FLOOD_RATE)]
    flood = subprocess.Popen(
        ["ip", "netns", "exec", topo.client_ns(0), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    [(answered, asked)] = lookups_during(topo, (1,), flood)
    out = finish(flood)
    assert asked >= 3 and answered >= 0.9 * asked, (answered, asked, out)
    forwarded = topo.client_status(0).get("counters", {}).get("dns_forwarded", 0)
    assert forwarded > TUNNEL_FLOOD_RATE, topo.client_status(0)  # the flood did go through the tunnel
    assert checks.dig(topo, 0, SRV_NAME, "SRV", SRV_ANSWER).ok
