"""Nothing from the underlay reaches the tunnel side uninvited (decision 0110): the attacks of the security
review, repeated from the router namespace of the real-kernel topology (``e2e.topology``) against the
real daemon, IPv4 and IPv6, while the clients' own traffic keeps flowing.

The router is the attacker: it gets IPv6 to the gateway and routes to the tunnel ranges and the LAN behind
the gateway through the gateway's underlay addresses (:func:`tests.system.underlay.attacker_routes`).
Every absence is checked with a capture or a socket at the place the attack would show up, and every
capture ends with a positive control whose packets cross the same path after the attack's did, so an
empty capture means "not delivered" and not "not captured yet". One test removes the nftables table for a
moment to show that the attack path is real and that the listeners' device binding holds on its own.
The module builds its own topology (a few seconds) and stops the gateway last, to check that it removes
its table on the way out.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import dns.message
import pytest

from e2e import checks
from e2e.topology import CLIENT_TUNNEL, WEB_V4, Topology, run, sh, wait_for
from gateway_core.addr import IPAddress
from gateway_core.wire.ipbuild import build_icmp_echo, build_udp_packet
from tests.system.io_netns import inside
from tests.system.underlay import (
    attacked_topology,
    capture,
    gateway_tunnel_addresses,
    nft_counters,
    spoof,
    v4,
    v6,
)

pytestmark = pytest.mark.system

DNS_PORT = 53535
ATTACK_PORT = 44444
"""Source port of the spoofed queries: outside the dev client's stub-forwarding ports (30000-39999), so a
delivered answer would reach its TUN unchanged (and be seen)."""
ECHO_ID = 0x4242
"""Identifier of the spoofed echo requests (16962 in tcpdump's output)."""
CLIENT_V4, CLIENT_V6 = v4(CLIENT_TUNNEL[0][0]), v6(CLIENT_TUNNEL[0][1])
SRV = dns.message.make_query("_http._tcp.fz.test", "SRV").to_wire()


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with attacked_topology() as t:
        yield t


@pytest.fixture(scope="module")
def gw_tun(topo: Topology) -> dict[int, IPAddress]:
    return gateway_tunnel_addresses(topo)


def _control_ping(topo: Topology) -> None:
    """The positive control: the client's own ping through the tunnel is answered."""
    assert checks.ping(topo, 0, count=2).ok


def test_the_daemon_installed_its_table_for_both_families(
    topo: Topology, gw_tun: dict[int, IPAddress]
) -> None:
    listing = sh("nft", "list", "table", "inet", "firezone-gateway", ns=topo.ns["gw"])
    for ip in gw_tun.values():
        assert f"daddr {ip} counter" in listing, listing
    for proto in ("ipv4", "ipv6"):
        assert f'oifname "tun-firezone" meta nfproto {proto} jump into_tunnel' in listing, listing
    assert "fib saddr . iif oif missing counter" in listing


@pytest.mark.parametrize("version", [4, 6])
def test_dns_and_ping_to_the_tunnel_address_from_the_underlay_get_no_answer(
    topo: Topology, gw_tun: dict[int, IPAddress], version: int
) -> None:
    inet, target = topo.ns["inet"], str(gw_tun[version])
    before = nft_counters(topo)
    icmp = "icmp" if version == 4 else "icmp6"
    with capture(inet, "r-gw", f"host {target} or {icmp}") as cap:
        udp = run("dig", "+time=1", "+tries=1", f"@{target}", "-p", str(DNS_PORT), "fz.test", "SRV", ns=inet)
        tcp = run("dig", "+tcp", "+time=1", "+tries=1", f"@{target}", "-p", str(DNS_PORT), "fz.test", ns=inet)
        ping = run("ping", f"-{version}", "-c", "1", "-W", "1", target, ns=inet)
        # Control: the gateway's underlay address answers the router (so replies would be seen).
        under = topo.ip("gw") if version == 4 else "fd10:201:4::2"
        assert run("ping", f"-{version}", "-c", "1", "-W", "2", under, ns=inet).returncode == 0
    assert udp.returncode != 0 and "timed out" in udp.stdout, udp.stdout
    assert tcp.returncode != 0, tcp.stdout
    assert ping.returncode != 0, ping.stdout
    assert cap.matching(f"{under} > ", "echo reply"), cap.lines  # the control was seen
    assert not cap.matching(f"{target}.{DNS_PORT} >"), cap.lines  # no DNS answer, no TCP reset
    assert not cap.matching(f"{target} > ", "echo reply"), cap.lines
    assert not cap.matching("unreachable"), cap.lines  # not even "port unreachable"
    after = nft_counters(topo)
    assert after["input:0" if version == 4 else "input:1"] > before["input:0" if version == 4 else "input:1"]


@pytest.mark.parametrize("version", [4, 6])
def test_a_query_spoofing_a_clients_tunnel_address_is_neither_forwarded_nor_answered(
    topo: Topology, gw_tun: dict[int, IPAddress], version: int
) -> None:
    client = CLIENT_V4 if version == 4 else CLIENT_V6
    query = build_udp_packet(client, gw_tun[version], ATTACK_PORT, DNS_PORT, SRV)
    with (
        capture(topo.ns["gw"], "tun-firezone", f"udp port {DNS_PORT}") as on_tun,
        capture(topo.client_ns(0), "tun-fzclient", "udp") as at_client,
    ):
        spoof(topo.ns["inet"], [query], gw_tun[version])
        # Control: a forwarded query of the client's own goes through the same listener and back.
        assert checks.dig(topo, 0, "_http._tcp.fz.test", "SRV", "10 5 80 web.fz.test.").ok
    assert on_tun.matching(f"{gw_tun[4]}.{DNS_PORT} > "), on_tun.lines  # the control's answer
    assert not on_tun.matching(f".{ATTACK_PORT}"), on_tun.lines  # nothing answered the spoofed query
    assert not at_client.matching(f".{ATTACK_PORT}"), at_client.lines


@pytest.mark.parametrize("version", [4, 6])
def test_a_local_process_gets_no_answer_from_the_tunnel_address(
    topo: Topology, gw_tun: dict[int, IPAddress], version: int
) -> None:
    """The kernel counts a host-local packet for the tunnel address as arriving over the TUN (so the
    device binding lets it in); the input rule drops it: only the TUN reaches the tunnel addresses."""
    gw = topo.ns["gw"]
    before = nft_counters(topo)
    r = run("dig", "+time=1", "+tries=1", f"@{gw_tun[version]}", "-p", str(DNS_PORT), "fz.test", ns=gw)
    assert r.returncode != 0 and "timed out" in r.stdout, r.stdout
    key = "input:0" if version == 4 else "input:1"
    assert nft_counters(topo)[key] > before[key]


@pytest.mark.parametrize(
    ("version", "source"),
    [(4, "resource"), (4, "gateway"), (6, "gateway")],
    ids=["v4-from-resource", "v4-from-gateway-tunnel-address", "v6-from-gateway-tunnel-address"],
)
def test_spoofed_packets_towards_a_client_are_not_delivered(
    topo: Topology, gw_tun: dict[int, IPAddress], version: int, source: str
) -> None:
    """An echo request from the underlay claiming to come from a resource (the review's attack) or from
    the gateway's own tunnel address (which the core passes to any client: its DNS answers come from
    there) must not reach the client's tunnel."""
    client = CLIENT_V4 if version == 4 else CLIENT_V6
    src = v4(WEB_V4) if source == "resource" else gw_tun[version]
    echo = build_icmp_echo(src, client, ECHO_ID, 1, b"underlay attack")
    before = nft_counters(topo)
    with capture(topo.client_ns(0), "tun-fzclient", "icmp or icmp6") as cap:
        spoof(topo.ns["inet"], [echo], client)
        _control_ping(topo)
    assert cap.matching(f"{WEB_V4} > {CLIENT_V4}", "echo reply"), cap.lines  # the control
    assert not cap.matching(f"id {ECHO_ID}"), cap.lines
    if source == "resource":  # (a local address as source is a martian: IPv4 drops it before forwarding)
        assert nft_counters(topo)["into_tunnel:0"] > before["into_tunnel:0"]  # dropped: spoofed source


def test_a_spoofed_reply_into_a_clients_flow_is_dropped_and_the_real_reply_passes(topo: Topology) -> None:
    """The client's UDP flow to the resource is masqueraded; a datagram from the underlay that claims to
    be the resource's reply (same addresses and ports: conntrack calls it established) is dropped by the
    strict reverse-path rule, while the resource's real reply reaches the client's socket."""
    with inside(topo.client_ns(0)):
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with inside(topo.ns["web"]):
        resource = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with app, resource:
        app.bind(("0.0.0.0", 0))
        app.settimeout(5)
        resource.bind((WEB_V4, 5201))  # udp/5201 is in the CIDR resource's filters
        resource.settimeout(5)
        app.sendto(b"hello", (WEB_V4, 5201))
        data, (masq_ip, masq_port) = resource.recvfrom(100)
        assert data == b"hello" and masq_ip == "172.20.1.1"  # masqueraded on the gateway's LAN side
        before = nft_counters(topo)
        fake = build_udp_packet(v4(WEB_V4), v4(masq_ip), 5201, masq_port, b"spoofed")
        spoof(topo.ns["inet"], [fake], v4(masq_ip))
        resource.sendto(b"real", (masq_ip, masq_port))
        got = [app.recvfrom(100)[0]]
        app.setblocking(False)
        while True:  # whatever else is queued already (the spoofed copies went first)
            try:
                got.append(app.recvfrom(100)[0])
            except BlockingIOError:
                break
    assert got == [b"real"], got
    assert nft_counters(topo)["into_tunnel:0"] >= before["into_tunnel:0"] + 3


def test_each_layer_holds_alone_and_the_attack_path_is_real(
    topo: Topology, gw_tun: dict[int, IPAddress]
) -> None:
    """With our table removed for a moment: the spoofed echo of the review is delivered again (the path is
    real, the table is what stops it), and a query from the underlay reaches the host but no listener (the
    kernel answers "port unreachable": the listeners are bound to the TUN device)."""
    gw = topo.ns["gw"]
    saved = sh("nft", "-s", "list", "table", "inet", "firezone-gateway", ns=gw)
    sh("nft", "delete", "table", "inet", "firezone-gateway", ns=gw)
    try:
        echo = build_icmp_echo(v4(WEB_V4), CLIENT_V4, ECHO_ID, 7, b"underlay attack")
        with capture(topo.client_ns(0), "tun-fzclient", "icmp") as at_client:
            spoof(topo.ns["inet"], [echo], CLIENT_V4)
            _control_ping(topo)
        assert at_client.matching(f"{WEB_V4} > {CLIENT_V4}", f"id {ECHO_ID}"), at_client.lines
        inet = topo.ns["inet"]
        with capture(inet, "r-gw", "icmp") as at_router:
            udp = run("dig", "+time=1", "+tries=1", f"@{gw_tun[4]}", "-p", str(DNS_PORT), "fz.test", ns=inet)
        assert udp.returncode != 0
        assert at_router.matching(f"{gw_tun[4]} > ", "port", "unreachable"), at_router.lines
    finally:
        subprocess.run(
            ["ip", "netns", "exec", gw, "nft", "-f", "-"], input=saved, text=True, check=True, timeout=30
        )
    assert "firezone-gateway" in sh("nft", "list", "tables", ns=gw)


def test_the_clients_traffic_still_flows_with_the_guard(topo: Topology) -> None:
    for client in (0, 1):
        results = [
            checks.ping(topo, client),
            checks.curl_name(topo, client),
            checks.curl_name(topo, client, family=6),
            checks.dig(topo, client, "_http._tcp.fz.test", "SRV", "10 5 80 web.fz.test."),
            checks.dig(topo, client, "txt.fz.test", "TXT", '"v=spf1 -all" "firezone e2e"'),
        ]
        failed = [c.line() for c in results if not c.ok]
        assert not failed, "\n".join(failed)


def test_the_daemon_deletes_its_table_when_it_stops(topo: Topology) -> None:
    gw = topo.procs["gateway"]
    assert "firezone-gateway" in sh("nft", "list", "tables", ns=topo.ns["gw"])
    assert gw.stop() == 0, gw.text()[-2000:]
    wait_for(
        "the table to be gone",
        lambda: "firezone-gateway" not in sh("nft", "list", "tables", ns=topo.ns["gw"]),
        timeout=5,
    )
