"""Scenario tests through the whole gateway in the simulator, each by seed.

Portal (devportal in the stub), relays, the Gateway facade in its host, simulated clients, resources and
an upstream DNS server in one world (:mod:`sim.gateway_world`). Each test asserts what the client
received *and* what reached the resources (nothing outside a live authorisation and its filters).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from devpeers.client_types import (
    DnsAnswer,
    DomainStatusReceived,
    EchoReply,
    GoodbyeReceived,
    IcmpErrorReceived,
    TcpReceived,
    UdpReceived,
)
from gateway_core.clock import Instant, millis, secs
from gateway_core.node.connection import PathKind
from gateway_core.portal.model import CidrResource, Filter, FilterProtocol
from gateway_core.wire.ip import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, build_udp_packet
from sim.gateway_scenario import GatewayScenario, build_gateway_scenario, scenario_summary
from sim.gateway_world import (
    APP_V4,
    APP_V6,
    CIDR_RESOURCE,
    DNS_RESOURCE,
    INET_V4,
    INTERNET_RESOURCE,
    WEB_V4,
    GatewayWorld,
    build_gateway_world,
)
from sim.trace import Trace
from sim.world import World

SEEDS = [1, 2, 3]
ROOT = Path(__file__).resolve().parents[2]
RUN_ARGS = (
    "run",
    "--seed",
    "3",
    "--scenario",
    "gateway",
    "--duration",
    "5",
    "--trace",
    "t.jsonl",
    "--pcap",
    "t.pcap",
)


def _ready(seed: int, *resources: object, **kw: object) -> GatewayWorld:
    gw = build_gateway_world(seed, **kw)  # type: ignore[arg-type]
    assert gw.start()
    for r in resources:
        gw.grant(0, r)  # type: ignore[arg-type]
    assert gw.run_until_connected(0)
    return gw


def _after(gw: GatewayWorld, t: int) -> list[object]:
    return [r for r in gw.clients[0].received if r.at >= t]


def _ping(gw: GatewayWorld, seq: int) -> Callable[[], None]:
    return lambda: gw.drive(0, lambda c, now: c.send_icmp(now, WEB_V4, seq))


def _ignore(_: object) -> None:
    return None


@pytest.mark.parametrize("seed", SEEDS)
def test_cidr_resource_filters(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE)
    start = gw.world.now
    gw.drive(0, lambda c, now: c.send_icmp(now, WEB_V4, 1))
    gw.drive(0, lambda c, now: c.send_udp(now, WEB_V4, 7, b"allowed", sport=41000))
    gw.drive(0, lambda c, now: c.send_udp(now, WEB_V4, 9, b"filtered", sport=41001))
    gw.drive(0, lambda c, now: c.send_udp(now, WEB_V4, 5000, b"closed", sport=41002))
    gw.drive(0, lambda c, now: c.send_tcp_request(now, WEB_V4, 80, b"GET /", sport=41003))
    gw.drive(0, lambda c, now: c.send_tcp_request(now, WEB_V4, 22, b"ssh", sport=41004))
    gw.world.run_for(secs(1))
    got = _after(gw, start)
    assert [(r.src, r.seq) for r in got if isinstance(r, EchoReply)] == [(WEB_V4, 1)]
    assert [(r.sport, r.dport, r.payload) for r in got if isinstance(r, UdpReceived)] == [
        (7, 41000, b"allowed")
    ]
    errors = sorted(
        ((r.icmp_type, r.code, r.inner_dport) for r in got if isinstance(r, IcmpErrorReceived)),
        key=lambda e: e[2],
    )
    # Port 9 and TCP 22 are outside the filters: ICMP prohibited (3/13) from the gateway, for the
    # resource's address. Port 5000 is allowed but closed: port unreachable (3/3) from the resource.
    assert errors == [(3, 13, 9), (3, 13, 22), (3, 3, 5000)]
    tcp = [r for r in got if isinstance(r, TcpReceived)]
    assert [(r.flags, r.payload) for r in tcp] == [(TCP_SYN | TCP_ACK, b""), (TCP_ACK, b"re:GET /")]
    # Security: the filtered packets never reached the resource.
    ports = sorted({(a.proto, a.dport) for a in gw.web.received if a.proto in (PROTO_UDP, PROTO_TCP)})
    assert ports == [(PROTO_TCP, 80), (PROTO_UDP, 7), (PROTO_UDP, 5000)]
    assert gw.gateway.stats()["drop.filtered"] == 2


@pytest.mark.parametrize("seed", SEEDS)
def test_dns_resource_with_nat(seed: int) -> None:
    gw = _ready(seed, DNS_RESOURCE)
    c = gw.clients[0]
    start = gw.world.now
    gw.drive(0, lambda c, now: c.query_dns(now, "app.corp.test", "A"))
    gw.drive(0, lambda c, now: c.query_dns(now, "app.corp.test", "AAAA"))
    proxies = c.proxy_ips("app.corp.test")
    v4, v6 = proxies[0], proxies[4]
    gw.drive(0, lambda c, now: c.send_icmp(now, v4, 1))
    gw.drive(0, lambda c, now: c.send_icmp(now, v6, 2))
    gw.drive(0, lambda c, now: c.send_udp(now, proxies[2], 7, b"via nat", sport=42000))
    gw.drive(0, lambda c, now: c.send_tcp_request(now, proxies[1], 443, b"hello", sport=42001))
    gw.world.run_for(secs(2))
    got = _after(gw, start)
    status = [r for r in got if isinstance(r, DomainStatusReceived)]
    assert [(s.domain, s.status, s.resource) for s in status] == [("app.corp.test", "Active", DNS_RESOURCE)]
    # Replies come back from the proxy IPs the client used (translated back by the gateway).
    assert sorted((str(r.src), r.seq) for r in got if isinstance(r, EchoReply)) == sorted(
        [(str(v4), 1), (str(v6), 2)]
    )
    assert [(r.src, r.sport, r.dport, r.payload) for r in got if isinstance(r, UdpReceived)] == [
        (proxies[2], 7, 42000, b"via nat")
    ]
    tcp = [r for r in got if isinstance(r, TcpReceived)]
    assert [(r.src, r.sport, r.payload) for r in tcp][-1] == (proxies[1], 443, b"re:hello")
    # The resource saw the real addresses, from the client's tunnel addresses.
    assert {a.dst for a in gw.app.received} == {APP_V4, APP_V6}
    assert {a.src for a in gw.app.received} == {c.tunnel_v4, c.tunnel_v6}
    assert not gw.web.received


@pytest.mark.parametrize("seed", SEEDS)
def test_srv_and_txt_forwarded_and_answered(seed: int) -> None:
    gw = _ready(seed, DNS_RESOURCE)
    start = gw.world.now
    gw.drive(0, lambda c, now: c.query_dns(now, "_sip._tcp.corp.test", "SRV"))
    gw.drive(0, lambda c, now: c.query_dns(now, "info.corp.test", "TXT"))
    gw.drive(0, lambda c, now: c.query_dns(now, "outside.example", "TXT", via=gw.gateway_id()))
    gw.drive(0, lambda c, now: c.query_dns(now, "nothing.corp.test", "TXT"))
    gw.world.run_for(secs(1))
    answers = {(r.name, r.rtype): r for r in _after(gw, start) if isinstance(r, DnsAnswer)}
    assert answers[("_sip._tcp.corp.test", "SRV")].records == ("10 5 5060 app.corp.test.",)
    assert answers[("_sip._tcp.corp.test", "SRV")].source == "gateway"
    assert answers[("info.corp.test", "TXT")].records == ('"hello from the upstream"', '"second string"')
    assert answers[("nothing.corp.test", "TXT")].rcode == "NXDOMAIN"  # the upstream's answer, forwarded
    assert answers[("nothing.corp.test", "TXT")].source == "gateway"
    # A name outside the client's resources is refused by the gateway, never asked upstream.
    assert answers[("outside.example", "TXT")].rcode == "REFUSED"
    asked = sorted((q.name, q.rtype) for q in gw.upstream.queries)
    assert asked == [("_sip._tcp.corp.test", "SRV"), ("info.corp.test", "TXT"), ("nothing.corp.test", "TXT")]


@pytest.mark.parametrize("seed", SEEDS)
def test_access_revoked_mid_flow(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE, DNS_RESOURCE)
    for i in range(20):
        gw.world.after(millis(250 * i), _ping(gw, i))
    revoke_at = Instant(gw.world.now + secs(2) + millis(100))
    gw.world.at(revoke_at, lambda: _ignore(gw.revoke(0, CIDR_RESOURCE)))
    gw.world.run_for(secs(6))
    replies = [r for r in gw.clients[0].received if isinstance(r, EchoReply)]
    assert 6 <= len(replies) <= 9  # the pings of the first ~2 s
    # One one-way portal hop (<= 30 ms here) after the revocation nothing reaches web any more...
    assert all(a.at <= revoke_at + millis(50) for a in gw.web.received)
    # ... and the gateway answers what the client still sends with ICMP prohibited.
    late = [r for r in gw.clients[0].received if isinstance(r, IcmpErrorReceived) and r.at > revoke_at]
    assert late and all((r.icmp_type, r.code) == (3, 13) for r in late)
    assert all(r.at < revoke_at + millis(200) for r in replies)


@pytest.mark.parametrize("seed", SEEDS)
def test_authorisation_expires(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE, expires_in=8)
    granted_unix = gw.portal.unix_now
    for i in range(40):
        gw.world.after(millis(300 * i), _ping(gw, i))
    gw.world.run_for(secs(13))
    expiry_ns = (granted_unix + 8) * 1_000_000_000 - gw.world.clock.epoch_unix_ns
    replies = [r for r in gw.clients[0].received if isinstance(r, EchoReply)]
    assert replies and all(r.at <= expiry_ns + secs(1) + millis(200) for r in replies)
    assert max(r.at for r in replies) >= expiry_ns - secs(1)  # it worked until (about) the expiry
    # The 1 s sweep removes the expired authorisation: nothing reaches web after it.
    assert all(a.at <= expiry_ns + secs(1) + millis(100) for a in gw.web.received)
    # The client had no resource left: the gateway removed it and said goodbye.
    assert any(isinstance(r, GoodbyeReceived) for r in gw.clients[0].received)


@pytest.mark.parametrize("seed", SEEDS)
def test_relay_only_path(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE, relay_only=True)
    conn = next(iter(gw.gateway.node.connections.values()))
    assert conn.peer_socket is not None and conn.peer_socket.kind is not PathKind.PEER_TO_PEER
    start = gw.world.now
    for i in range(5):
        _ping(gw, i)()
        gw.world.run_for(millis(400))
    assert [r.seq for r in _after(gw, start) if isinstance(r, EchoReply)] == [0, 1, 2, 3, 4]
    drops = gw.world.stats.counters
    assert drops["drop.partition"] > 0  # the direct path was tried and is cut


def test_spoofed_source_is_prohibited_and_never_reaches_the_resource() -> None:
    gw = _ready(5, CIDR_RESOURCE)
    spoof = build_udp_packet(IPv4Address("100.64.9.9"), WEB_V4, 1234, 7, b"spoof")
    gw.drive(0, lambda c, now: c.send_raw(now, gw.gateway_id(), spoof))
    gw.world.run_for(secs(1))
    assert not [a for a in gw.web.received if a.src == ip_address("100.64.9.9")]
    assert gw.gateway.stats().get("drop.spoofed_source", 0) == 1


def _digest(seed: int) -> str:
    lines: list[str] = []
    trace = Trace()
    trace.listeners.append(lambda r: lines.append(json.dumps(r, sort_keys=True)))
    world = World(seed, trace=trace)
    gw = build_gateway_scenario(world, GatewayScenario(duration=secs(6), revoke_at=secs(4)))
    world.run_until(Instant(secs(6)))
    lines.append(scenario_summary(gw))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_the_gateway_scenario_is_deterministic_by_seed() -> None:
    assert _digest(4) == _digest(4)
    assert _digest(4) != _digest(5)


def test_gateway_scenario_traces_are_identical_across_processes(tmp_path: Path) -> None:
    """``firezone-sim run --scenario gateway``: same seed, two processes with random hash seeds."""
    outs = []
    for sub in ("1", "2"):
        (tmp_path / sub).mkdir()
        outs.append(
            subprocess.run(
                [sys.executable, "-m", "sim", *RUN_ARGS],
                cwd=tmp_path / sub,
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "random"},
            ).stdout
        )
    a, b = (tmp_path / "1" / "t.jsonl").read_bytes(), (tmp_path / "2" / "t.jsonl").read_bytes()
    assert len(a) > 10_000 and a == b
    assert (tmp_path / "1" / "t.pcap").read_bytes() == (tmp_path / "2" / "t.pcap").read_bytes()
    assert outs[0] == outs[1] and "EchoReply" in outs[0] and "gateway drops:" in outs[0]


@pytest.mark.parametrize("seed", [1, 2])
def test_two_clients_are_isolated(seed: int) -> None:
    gw = build_gateway_world(seed, clients=2)
    assert gw.start()
    for i in (0, 1):
        gw.grant(i, CIDR_RESOURCE)
        gw.grant(i, DNS_RESOURCE)
    assert gw.run_until_connected(0) and gw.run_until_connected(1)
    for i in (0, 1):
        gw.drive(i, lambda c, now: c.query_dns(now, "app.corp.test", "A"))
        gw.drive(i, lambda c, now, i=i: c.send_icmp(now, c.proxy_ips("app.corp.test")[0], 10 + i))
        gw.drive(i, lambda c, now, i=i: c.send_udp(now, WEB_V4, 7, f"from {i}".encode()))
    gw.world.run_for(secs(1))
    gw.revoke(1, CIDR_RESOURCE)
    gw.world.run_for(millis(100))
    t = gw.world.now
    for i in (0, 1):
        gw.drive(i, lambda c, now, i=i: c.send_udp(now, WEB_V4, 7, f"again {i}".encode()))
    gw.world.run_for(secs(1))
    for i, c in enumerate(gw.clients):
        echoes = [r.seq for r in c.received if isinstance(r, EchoReply)]
        assert echoes == [10 + i]  # each client gets its own reply, through its own NAT
        udp = [r.payload for r in c.received if isinstance(r, UdpReceived)]
        assert udp == ([b"from 0", b"again 0"] if i == 0 else [b"from 1"])
    late = [a for a in gw.web.received if a.at > t]
    assert [a.src for a in late] == [gw.clients[0].tunnel_v4]  # client 1's packet stopped at the gateway


@pytest.mark.parametrize("seed", [1, 2])
def test_resource_updated_changes_filters(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE)
    gw.drive(0, lambda c, now: c.send_udp(now, WEB_V4, 7, b"before", sport=43000))
    gw.world.run_for(secs(1))
    res = gw.portal.config.resource(CIDR_RESOURCE)
    assert isinstance(res, CidrResource)
    gw.signalling.update_resource(replace(res, filters=(Filter(FilterProtocol.ICMP),)))
    gw.world.run_for(millis(200))
    t = gw.world.now
    gw.drive(0, lambda c, now: c.send_udp(now, WEB_V4, 7, b"after", sport=43001))
    gw.drive(0, lambda c, now: c.send_icmp(now, WEB_V4, 3))
    gw.world.run_for(secs(1))
    got = _after(gw, t)
    assert [(r.icmp_type, r.code, r.inner_dport) for r in got if isinstance(r, IcmpErrorReceived)] == [
        (3, 13, 7)
    ]
    assert [r.seq for r in got if isinstance(r, EchoReply)] == [3]
    assert [a.proto for a in gw.web.received if a.at > t] == [1]


@pytest.mark.parametrize("seed", SEEDS)
def test_relay_only_survives_losing_the_relay_in_use(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE, relay_only=True)
    conn = next(iter(gw.gateway.node.connections.values()))
    assert conn.peer_socket is not None and conn.peer_socket.kind is not PathKind.PEER_TO_PEER
    # The relay in use is the gateway's (its relayed address is the source) or the client's (the
    # destination): since the client allocates before its flows, the client's relayed address towards the
    # gateway's own address usually answers first.
    ends = {conn.peer_socket.source.ip, conn.peer_socket.dest.ip}
    lost = next(n for n in gw.relay_names if gw.world.hosts[n].ipv4 in ends)
    used = gw.world.hosts[lost].ipv4
    relay_id = next(r.id for r in gw.portal.config.relays if any(a.ip == used for a in r.addrs))
    start = gw.world.now
    for i in range(40):
        gw.world.after(millis(250 * i), _ping(gw, i))

    def lose() -> None:
        gw.world.remove_host(lost)
        gw.signalling.relays_presence([relay_id])

    gw.world.after(secs(3), lose)
    gw.world.run_for(secs(11))
    got = [r for r in _after(gw, start) if isinstance(r, EchoReply)]
    lost_at = start + secs(3)
    assert any(r.at < lost_at for r in got)
    resumed = [r for r in got if r.at > lost_at]
    assert resumed and resumed[0].at < lost_at + secs(3)  # back within a few seconds, through the other relay
    assert [r.seq for r in resumed][-5:] == [35, 36, 37, 38, 39]
    now_conn = next(iter(gw.gateway.node.connections.values()))
    assert now_conn.peer_socket is not None
    assert used not in {now_conn.peer_socket.source.ip, now_conn.peer_socket.dest.ip}


@pytest.mark.parametrize("seed", [1, 2])
def test_internet_resource(seed: int) -> None:
    gw = _ready(seed, INTERNET_RESOURCE)
    start = gw.world.now
    gw.drive(0, lambda c, now: c.send_icmp(now, INET_V4, 1))
    gw.drive(0, lambda c, now: c.send_udp(now, INET_V4, 7, b"anything goes", sport=44000))
    gw.drive(0, lambda c, now: c.send_udp(now, WEB_V4, 7, b"web too", sport=44001))  # any address
    gw.world.run_for(secs(1))
    got = _after(gw, start)
    assert [(r.src, r.seq) for r in got if isinstance(r, EchoReply)] == [(INET_V4, 1)]
    assert sorted(r.payload for r in got if isinstance(r, UdpReceived)) == [b"anything goes", b"web too"]
    assert len(gw.inet.received) == 2 and len(gw.web.received) == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_expiry_update_extends_access(seed: int) -> None:
    gw = _ready(seed, CIDR_RESOURCE, expires_in=5)
    client_id = gw.client_ids[0]
    gw.signalling.update_expiry(client_id, CIDR_RESOURCE, gw.portal.unix_now + 60)
    for i in range(30):
        gw.world.after(millis(300 * i), _ping(gw, i))
    gw.world.run_for(secs(10))
    assert [r.seq for r in gw.clients[0].received if isinstance(r, EchoReply)] == list(range(30))
    assert not any(isinstance(r, GoodbyeReceived) for r in gw.clients[0].received)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_new_dns_answer_makes_the_gateway_resolve_again(seed: int) -> None:
    gw = _ready(seed, DNS_RESOURCE)
    gw.drive(0, lambda c, now: c.query_dns(now, "app.corp.test", "A"))
    gw.drive(0, lambda c, now: c.send_icmp(now, c.proxy_ips("app.corp.test")[0], 1))
    gw.world.run_for(secs(1))
    gw.drive(0, lambda c, now: c.query_dns(now, "app.corp.test", "A"))  # Confirmed -> Recreating -> sent
    gw.world.run_for(secs(1))
    gw.drive(0, lambda c, now: c.send_icmp(now, c.proxy_ips("app.corp.test")[0], 2))
    gw.world.run_for(secs(1))
    resolves = [cmd for _, cmd in gw.gateway_host.log if type(cmd).__name__ == "ResolveDomain"]
    assert len(resolves) == 2
    status = [r for r in gw.clients[0].received if isinstance(r, DomainStatusReceived)]
    assert [s.status for s in status] == ["Active", "Active"]
    assert [r.seq for r in gw.clients[0].received if isinstance(r, EchoReply)] == [1, 2]
