"""The pieces of the gateway world on their own: upstream DNS, resources, and the simulated client
against a bare gateway node (no gateway policy), through a real WireGuard tunnel over ICE."""

from __future__ import annotations

import functools
import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from devpeers.client import DevClient
from devpeers.client_resources import PROXY_V4, PROXY_V6
from devpeers.client_types import (
    ClientResource,
    DnsAnswer,
    EchoReply,
    GatewayGrant,
    IcmpErrorReceived,
    SignalIce,
    TcpReceived,
    UdpReceived,
)
from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Command, Transmit, WriteTun
from gateway_core.node.events import NewIceCandidate, NodeEvent
from gateway_core.wire.icmp import parse_icmp_error
from gateway_core.wire.ip import (
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
    parse_icmp,
    parse_ip,
    parse_tcp,
    parse_udp,
)
from gateway_core.wireguard.crypto import public_key
from sim.client_portal import ClientHost
from sim.host import Host
from sim.hosts.connectivity import (
    NODE_PORT,
    NodeEndpoint,
    RelayComponent,
    RelayHost,
    _make_node,
    relay_configs,
)
from sim.hosts.dns_upstream import DnsZone, UpstreamDnsServer
from sim.hosts.resources import ResourceServer
from sim.world import World

ZONE = {
    "a.test": {"A": ["10.0.0.2", "10.0.0.1"], "AAAA": ["2001:db8::1"]},
    "_x._tcp.a.test": {"SRV": ["1 2 3 a.test."]},
    "t.a.test": {"TXT": ['"one"']},
}
C4, C6 = IPv4Address("100.64.0.7"), IPv6Address("fd00:2021:1111::7")
R4, R6 = IPv4Address("172.20.0.10"), IPv6Address("2001:db8:20::10")


# --- upstream DNS -----------------------------------------------------------------------------------------


def _ask(zone: DnsZone, name: str, rtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rtype)
    q.id = 7
    wire, _ = zone.answer(q.to_wire())
    r = dns.message.from_wire(wire)
    assert r.id == 7 and r.flags & dns.flags.QR
    return r


def test_zone_answers_each_type_and_nxdomain() -> None:
    z = DnsZone(ZONE)
    a = _ask(z, "A.TEST.", "A")
    assert sorted(rd.to_text() for rd in a.answer[0]) == ["10.0.0.1", "10.0.0.2"]
    assert [rd.to_text() for rd in _ask(z, "a.test", "AAAA").answer[0]] == ["2001:db8::1"]
    assert [rd.to_text() for rd in _ask(z, "_x._tcp.a.test", "SRV").answer[0]] == ["1 2 3 a.test."]
    assert [rd.to_text() for rd in _ask(z, "t.a.test", "TXT").answer[0]] == ['"one"']
    nodata = _ask(z, "t.a.test", "A")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert _ask(z, "nope.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert z.resolve("a.test") == (ip_address("10.0.0.1"), ip_address("10.0.0.2"), ip_address("2001:db8::1"))
    assert z.resolve("nope.test") == ()


def test_zone_garbage_gets_formerr_and_never_raises() -> None:
    z = DnsZone(ZONE)
    q = dns.message.make_query("a.test", "A").to_wire()
    for cut in range(len(q)):
        wire, served = z.answer(q[:cut])
        assert served is None and wire[3] & 0x0F == dns.rcode.FORMERR
    _, served = z.answer(q + b"\x00")
    assert served is None  # trailing junk is a malformed message for dnspython


def test_upstream_server_udp_and_raw_ip() -> None:
    srv = UpstreamDnsServer(DnsZone(ZONE))
    q = dns.message.make_query("a.test", "A").to_wire()
    local, remote = SocketAddr(IPv4Address("192.0.2.53"), 53), SocketAddr(IPv4Address("192.0.2.1"), 4000)
    srv.handle_datagram(Instant(5), local, remote, q)
    cmd = srv.poll_command()
    assert isinstance(cmd, Transmit) and cmd.dst == remote and cmd.src == local
    srv.handle_tun_packet(Instant(6), build_udp_packet(remote.ip, local.ip, 4000, 53, q))
    cmd2 = srv.poll_command()
    assert isinstance(cmd2, WriteTun)
    ip = parse_ip(cmd2.packet)
    assert (ip.src, ip.dst, parse_udp(ip.payload).dport) == (local.ip, remote.ip, 4000)
    assert [(s.name, s.rtype, s.rcode) for s in srv.queries] == [("a.test", "A", "NOERROR")] * 2


# --- resources --------------------------------------------------------------------------------------------


def _one(srv: ResourceServer, packet: bytes) -> bytes | None:
    srv.handle_tun_packet(Instant(1), packet)
    cmd = srv.poll_command()
    assert srv.poll_command() is None
    return None if cmd is None else cmd.packet  # type: ignore[attr-defined]


@pytest.mark.parametrize(("client", "resource"), [(C4, R4), (C6, R6)])
def test_resource_echo_udp_and_port_unreachable(client: IPv4Address, resource: IPv4Address) -> None:
    srv = ResourceServer([R4, R6], udp_ports=(7,), tcp_ports=(80,))
    reply = _one(srv, build_icmp_echo(client, resource, 0x1234, 9, b"data"))
    assert reply is not None
    ip = parse_ip(reply)
    icmp = parse_icmp(ip.payload)
    assert (ip.src, ip.dst, icmp.ident, icmp.seq, icmp.payload) == (resource, client, 0x1234, 9, b"data")
    echo = _one(srv, build_udp_packet(client, resource, 4000, 7, b"x"))
    assert echo is not None and parse_udp(parse_ip(echo).payload)[:2] == (7, 4000)
    closed = _one(srv, build_udp_packet(client, resource, 4000, 9, b"x"))
    assert closed is not None
    err = parse_icmp_error(closed)
    assert err is not None
    assert (err.icmp_type, err.code) == ((3, 3) if client.version == 4 else (1, 4))
    assert (err.inner_dst, err.inner_dport) == (resource, 9)
    assert [a.proto for a in srv.received] == ([1] if client.version == 4 else [58]) + [17, 17]


def test_resource_tcp_request_response_and_reset() -> None:
    srv = ResourceServer([R4], tcp_ports=(80,))
    synack = _one(srv, build_tcp_packet(C4, R4, 4000, 80, seq=100, flags=TCP_SYN))
    assert synack is not None
    t = parse_tcp(parse_ip(synack).payload)
    assert t.flags == TCP_SYN | TCP_ACK and t.ack == 101
    data = _one(srv, build_tcp_packet(C4, R4, 4000, 80, b"GET", seq=101, ack=t.seq + 1, flags=TCP_ACK))
    assert data is not None
    d = parse_tcp(parse_ip(data).payload)
    assert d.payload == b"re:GET" and d.ack == 104 and d.seq == t.seq + 1
    assert _one(srv, build_tcp_packet(C4, R4, 4000, 80, seq=104, ack=1, flags=TCP_ACK)) is None
    rst = _one(srv, build_tcp_packet(C4, R4, 4000, 81, seq=5, flags=TCP_SYN))
    assert rst is not None and parse_tcp(parse_ip(rst).payload).flags == TCP_RST | TCP_ACK


def test_resource_drops_foreign_and_malformed_without_raising() -> None:
    srv = ResourceServer([R4])
    assert _one(srv, build_icmp_echo(C4, IPv4Address("172.20.0.99"), 1, 1, b"")) is None
    p = build_udp_packet(C4, R4, 4000, 7, b"abc")
    for cut in range(len(p)):
        srv.handle_tun_packet(Instant(1), p[:cut])
    bad = bytearray(p)
    bad[-1] ^= 0xFF
    assert _one(srv, bytes(bad)) is None
    assert srv.stats.snapshot()["dropped.bad_checksum"] == 1
    assert srv.stats.snapshot()["dropped.not_mine"] == 1
    assert len(srv.received) == 0


# --- the client against a bare gateway node ---------------------------------------------------------------


class _GatewaySignals:
    """The gateway endpoint's candidates go straight to the client (after 30 ms)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.client: ClientHost | None = None

    def send(self, sender: str, to_peer: str, event: NodeEvent) -> None:
        host = self.client
        assert host is not None
        if isinstance(event, NewIceCandidate):
            cand = event.candidate
            self.world.after(
                millis(30),
                lambda: self.world.drive(
                    host, lambda now: host.client.add_remote_candidates(now, "gw", [cand])
                ),
            )


class _TunClientHost(ClientHost):
    """A client host whose TUN device is a list (the dev client process writes to a real one)."""

    def __init__(self, *args: Any, tun: list[bytes], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tun = tun

    def execute(self, now: Instant, command: Command) -> None:
        if isinstance(command, WriteTun):
            self.tun.append(command.packet)
            return
        super().execute(now, command)


def _bare_world(
    seed: int, tun: list[bytes] | None = None
) -> tuple[World, DevClient, ResourceServer, NodeEndpoint]:
    w = World(seed)
    keys = w.entropy.fork("keys")
    gw_priv, cl_priv, psk = keys.random_bytes(32), keys.random_bytes(32), keys.random_bytes(32)
    epoch = w.clock.unix_ns() // 1_000_000_000
    ip = IPv4Address("192.0.2.31")
    server = DevRelay(
        [SocketAddr(ip, 3478)],
        [SocketAddr(ip, 0)],
        "sim-relay-secret",
        w.entropy_for("r"),
        wall_clock_secs=epoch,
    )
    w.add_host(RelayHost("relay-0", RelayComponent(server), ipv4=ip, udp_ports=(3478,)))
    resources = ResourceServer([R4, R6], udp_ports=(7,), tcp_ports=(80,))
    signals = _GatewaySignals(w)
    client_id = str(uuid.UUID(int=7))
    gw = NodeEndpoint("gateway", _make_node(w, "gateway", gw_priv, False), resources, client_id, signals)  # type: ignore[arg-type]
    w.add_host(Host("gateway", gw, ipv4="203.0.113.50", udp_ports=(NODE_PORT,)))
    client = DevClient(
        "c", cl_priv, C4, C6, w.entropy_for("c"), w.now, w.clock.unix_ns(), write_tun=tun is not None
    )

    def to_gateway(cand: str) -> None:
        w.drive("gateway", lambda t: gw.signal(t, client_id, NewIceCandidate(client_id, cand)))

    def on_signal(now: Instant, cmd: SignalIce) -> None:
        for c in cmd.candidates:
            w.after(millis(30), functools.partial(to_gateway, c))

    if tun is None:
        host = ClientHost("client", client, on_signal, ipv4="198.51.100.50")
    else:
        host = _TunClientHost("client", client, on_signal, ipv4="198.51.100.50", tun=tun)
    signals.client = host
    w.add_host(host)
    relays = relay_configs(epoch + 86400, "salt")[:1]
    gw_creds, cl_creds = ("gwuf", "gateway-password-22chr"), ("cluf", "client-password-22chrs")

    def gw_setup(now: Instant) -> None:
        gw.node.update_relays([], relays, now)
        gw.node.upsert_connection(client_id, public_key(cl_priv), psk, gw_creds, cl_creds, now)
        gw._drain(now)

    w.drive("gateway", gw_setup)
    grant = GatewayGrant(
        "gw",
        public_key(gw_priv),
        psk,
        cl_creds,
        gw_creds,
        IPv4Address("100.64.0.1"),
        IPv6Address("fd00:2021:1111::1"),
        tuple(relays),
    )
    w.drive(
        host, lambda now: client.grant(now, grant, ClientResource(uuid.UUID(int=1), "cidr", "172.20.0.0/16"))
    )
    w.drive(
        host,
        lambda now: client.add_resource(ClientResource(uuid.UUID(int=2), "cidr", "2001:db8:20::/64"), "gw"),
    )
    return w, client, resources, gw


def test_client_talks_to_resources_through_a_bare_gateway_node() -> None:
    w, client, resources, _ = _bare_world(11)
    # Sent before the connection is up: kept and flushed on ConnectionEstablished.
    w.drive("client", lambda now: client.send_icmp(now, R4, 1))
    w.run_until(Instant(secs(3)))
    assert client.is_connected("gw")
    w.drive("client", lambda now: client.send_icmp(now, R6, 2))
    w.drive("client", lambda now: client.send_udp(now, R4, 7, b"hello", sport=4444))
    w.drive("client", lambda now: client.send_udp(now, R4, 9, b"closed", sport=4445))
    w.drive("client", lambda now: client.send_tcp_request(now, R4, 80, b"GET /", sport=4446))
    assert not client.send_icmp(w.now, IPv4Address("8.8.8.8"), 3)  # no resource routes it
    w.run_until(Instant(secs(4)))
    got = client.received
    assert [(r.src, r.seq) for r in got if isinstance(r, EchoReply)] == [(R4, 1), (R6, 2)]
    assert [r.payload for r in got if isinstance(r, UdpReceived)] == [b"hello"]
    errs = [r for r in got if isinstance(r, IcmpErrorReceived)]
    assert [(e.icmp_type, e.code, e.inner_dport, e.inner_sport) for e in errs] == [(3, 3, 9, 4445)]
    tcp = [r for r in got if isinstance(r, TcpReceived)]
    assert [r.flags for r in tcp] == [TCP_SYN | TCP_ACK, TCP_ACK] and tcp[1].payload == b"re:GET /"
    assert client.stats.snapshot()["dropped.unroutable"] == 1
    assert {a.dst for a in resources.received} == {R4, R6}


def test_client_with_a_tun_device_hands_decrypted_packets_out_as_write_tun_commands() -> None:
    tun: list[bytes] = []
    w, client, resources, _ = _bare_world(11, tun=tun)
    w.drive("client", lambda now: client.send_icmp(now, R4, 1))
    w.run_until(Instant(secs(3)))
    assert client.is_connected("gw")
    w.drive("client", lambda now: client.send_udp(now, R4, 7, b"hello", sport=4444))
    w.run_until(Instant(secs(4)))
    assert client.received == []  # nothing is parsed: the packets are the TUN's
    replies = [parse_ip(p) for p in tun]
    assert [(ip.src, ip.dst, ip.proto) for ip in replies] == [(R4, C4, 1), (R4, C4, 17)]
    assert parse_icmp(replies[0].payload).seq == 1
    assert parse_udp(replies[1].payload).payload == b"hello"
    assert {a.dst for a in resources.received} == {R4}


def test_client_reset_drops_connections_and_keeps_grants_and_routes() -> None:
    w, client, _, _ = _bare_world(11)
    w.run_until(Instant(secs(3)))
    assert client.is_connected("gw") and "gw" in client.node.connections
    w.drive("client", lambda now: client.reset_connections(now))
    assert not client.is_connected("gw") and client.node.connections == {}
    assert "gw" in client.grants
    assert not client.send_icmp(w.now, IPv4Address("8.8.8.8"), 1)
    assert client.send_icmp(w.now, R4, 2)  # still routed (queued until a connection comes back)


def test_client_allocates_again_on_the_same_relay_list_after_losing_an_allocation() -> None:
    # The same relays with the same credentials (the portal's init, every grant) leave live allocations
    # alone; one the node gave up (it failed while the client was offline) is made again, as Firezone's
    # client hands every relay list to its node (decision 0130).
    w, client, _, _ = _bare_world(11)
    w.run_until(Instant(secs(3)))
    relays = tuple(client.grants["gw"].relays)
    (rid,) = client.node.allocations
    live = client.node.allocations[rid]
    w.drive("client", lambda now: client.set_relays(now, relays))
    assert client.node.allocations[rid] is live
    del client.node.allocations[rid]
    w.drive("client", lambda now: client.set_relays(now, relays))
    assert rid in client.node.allocations and client.node.allocations[rid] is not live


def test_client_forgets_the_domain_nat_of_one_gateway() -> None:
    w = World(3)
    client = DevClient("c", bytes(range(32)), C4, C6, w.entropy_for("c"), w.now, w.clock.unix_ns())
    client.add_resource(ClientResource(uuid.UUID(int=5), "dns", "*.corp.test"), "gw")
    client.add_resource(ClientResource(uuid.UUID(int=6), "dns", "*.other.test"), "gw2")
    assert client.dns_resource_for("app.corp.test") == (
        ClientResource(uuid.UUID(int=5), "dns", "*.corp.test"),
        "gw",
    )
    assert client.dns_resource_for("app.nowhere.test") is None
    client.query_dns(Instant(0), "app.corp.test", "A")
    client.query_dns(Instant(0), "app.other.test", "A")
    client.send_icmp(Instant(0), client.proxy_ips("app.corp.test")[0], 1)
    client.send_icmp(Instant(0), client.proxy_ips("app.other.test")[0], 1)
    assert sorted(client._nat) == [("gw", "app.corp.test"), ("gw2", "app.other.test")]
    client.forget_domain_nat("gw")
    assert sorted(client._nat) == [("gw2", "app.other.test")]


def test_client_assigns_proxy_ips_like_firezone() -> None:
    w = World(3)
    client = DevClient("c", bytes(range(32)), C4, C6, w.entropy_for("c"), w.now, w.clock.unix_ns())
    client.add_resource(ClientResource(uuid.UUID(int=5), "dns", "*.corp.test"), "gw")
    a = client.query_dns(Instant(0), "app.corp.test", "A")
    aaaa = client.query_dns(Instant(0), "App.Corp.Test.", "AAAA")
    other = client.query_dns(Instant(0), "b.corp.test", "A")
    none = client.query_dns(Instant(0), "x.y.corp.test", "A")  # '*' is one label
    assert isinstance(a, DnsAnswer) and isinstance(aaaa, DnsAnswer) and isinstance(other, DnsAnswer)
    assert a.records == ("100.96.0.1", "100.96.0.2", "100.96.0.3", "100.96.0.4")
    assert all(ip_address(x) in PROXY_V6 for x in aaaa.records) and len(aaaa.records) == 4
    assert all(ip_address(x) in PROXY_V4 for x in other.records) and set(other.records).isdisjoint(a.records)
    assert none is not None and none.rcode == "NXDOMAIN"
    assert client.proxy_ips("app.corp.test")[:4] == tuple(ip_address(x) for x in a.records)


def test_client_inbound_never_raises_on_malformed_packets() -> None:
    w, client, _, _ = _bare_world(12)
    w.run_until(Instant(secs(3)))
    gw4 = IPv4Address("100.64.0.1")
    samples = [
        build_icmp_echo(R4, C4, 1, 1, b"x", reply=True),
        build_udp_packet(gw4, C4, 53535, 40000, b"\x00\x01\x81\x80"),
        build_tcp_packet(R4, C4, 80, 40000, b"data", seq=1, ack=2, flags=TCP_ACK),
        build_icmp_echo(C4, R4, 1, 1, b"quoted"),
    ]
    before = len(client.received)
    for p in samples:
        for cut in range(len(p)):
            client._inbound(Instant(secs(3)), "gw", p[:cut])
        client._inbound(Instant(secs(3)), "gw", p + b"trailing")
    rng = w.entropy.fork("fuzz")
    for _ in range(300):
        client._inbound(Instant(secs(3)), "gw", rng.random_bytes(1 + rng.randbelow(80)))
    assert len(client.received) >= before  # recorded what parsed, dropped the rest, raised nothing
    assert client.stats.snapshot().get("dropped.malformed", 0) > 0
