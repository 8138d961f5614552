"""The gateway facade in the simulator: joins the stub portal, applies init, answers authorize_flow."""

from __future__ import annotations

import uuid
from collections import deque
from ipaddress import IPv4Address

import dns.message
import dns.rrset

from devportal.config import EXAMPLE_CONFIG
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.commands import Command, Transmit
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import ForwardDnsQuery
from gateway_core.dns.servers import BindDnsServers, RetryDnsServerBind
from gateway_core.gateway_types import ResolveDomain
from gateway_core.interface import ConfigureInterface
from gateway_core.portal.model import ResolveRequest
from gateway_core.wire.ipbuild import build_udp_packet
from sim.host import Host
from sim.hosts.gateway import SimResolver, build_gateway_world
from sim.world import World

CLIENT = uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24")
CIDR = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")


def test_gateway_joins_configures_and_authorizes() -> None:
    w = World(1)
    sc = build_gateway_world(w)
    w.run_until(Instant(secs(3)))
    kinds = [type(c) for _, c in sc.host.log]
    assert kinds[:2] == [ConfigureInterface, BindDnsServers]
    st = sc.gateway.stats()
    assert st["gateway.portal_joined"] == 1 and st["gateway.dns_bound"] == 2
    result: list[object] = []
    sc.act(w, lambda p: result.append(p.authorize(CLIENT, CIDR)))
    w.run_until(Instant(secs(6)))
    assert result and result[0]["ok"]  # type: ignore[index]
    assert CLIENT in sc.gateway.peers.clients
    # the portal accepted our flow_authorized (a valid ref) and got candidates
    st = sc.gateway.stats()
    assert st["gateway.portal.AuthorizeFlow"] == 1
    assert st.get("portal.error_replies", 0) == 0


DNS_RES = uuid.UUID("619fbe83-bc95-4635-9a08-68da9a944c88")
UPSTREAM = SocketAddr(IPv4Address("192.0.2.53"), 53)


class _UpstreamDns:
    """A recursive resolver in the site: answers every query with one SRV record."""

    def __init__(self) -> None:
        self.out: deque[Command] = deque()
        self.queries = 0

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> None:
        q = dns.message.from_wire(payload)
        self.queries += 1
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "SRV", "0 0 80 www.httpbin."))
        self.out.append(Transmit(local, remote, r.to_wire()))

    def handle_timeout(self, now: Instant) -> None:
        return None

    def poll_timeout(self) -> Deadline | None:
        return None

    def poll_command(self) -> Command | None:
        return self.out.popleft() if self.out else None


def test_legacy_request_connection_resolves_in_the_sim_and_srv_is_forwarded_upstream() -> None:
    w = World(2)
    cfg = EXAMPLE_CONFIG + f'\n[[policies]]\nclient = "{CLIENT}"\nresource = "{DNS_RES}"\n'
    resolver = SimResolver({"api.httpbin": (IPv4Address("10.0.0.7"),)})
    sc = build_gateway_world(w, config_text=cfg, resolver=resolver, upstream_dns=UPSTREAM)
    upstream = _UpstreamDns()
    w.add_host(Host("dns", upstream, ipv4=UPSTREAM.ip, udp_ports=(53,)))
    w.run_until(Instant(secs(2)))
    domain = ResolveRequest("api.httpbin", (IPv4Address("100.96.0.1"),))
    sc.act(w, lambda p: p.request_connection(CLIENT, DNS_RES, domain))
    w.run_until(Instant(secs(3)))
    assert any(isinstance(c, ResolveDomain) for _, c in sc.host.log)
    policy = sc.gateway.peers.clients[CLIENT]
    nat = policy.nat.translations[IPv4Address("100.96.0.1")]
    assert nat.resolved_ip == IPv4Address("10.0.0.7")
    st = sc.gateway.stats()
    assert st["gateway.portal.RequestConnection"] == 1 and st.get("portal.error_replies", 0) == 0
    # an SRV query arrives on the gateway's DNS server from the client's tunnel address
    server = next(iter(sorted(sc.host.dns_servers, key=lambda a: a.ip.version)))
    query = dns.message.make_query("api.httpbin", "SRV").to_wire()
    src = SocketAddr(policy.client_v4, 5353)
    packet = build_udp_packet(src.ip, server.ip, src.port, server.port, query)
    w.drive(sc.host, lambda now: sc.host._to_kernel(now, packet))
    w.run_until(Instant(secs(4)))
    assert upstream.queries == 1
    assert any(isinstance(c, ForwardDnsQuery) for _, c in sc.host.log)
    st = sc.gateway.stats()
    assert st["dns.dns_forwarded"] == 1
    # the answer went back towards the client, whose connection never came up (no client in this world)
    assert st["drop.no_connection"] >= 1


def test_failed_dns_bind_is_retried_in_the_sim() -> None:
    w = World(3)
    sc = build_gateway_world(w)
    sc.host.fail_binds = {6: 2}
    w.run_until(Instant(secs(5)))
    retries = [c for _, c in sc.host.log if isinstance(c, RetryDnsServerBind)]
    assert len(retries) == 2 and all(r.address.ip.version == 6 for r in retries)
    assert {a.ip.version for a in sc.host.dns_servers} == {4, 6}
    st = sc.gateway.stats()
    assert st["gateway.dns_bind_failed"] == 2 and st["gateway.dns_bound"] == 2
    assert sc.host.exited is None
