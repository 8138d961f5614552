"""Traffic steps of the stateful harness: probes to the CIDR and DNS resources, and DNS queries.

Theory of operation: a probe asks the model what must happen (:meth:`ReferenceModel.predict_packet` or
:meth:`ReferenceModel.predict_dns`), takes a :class:`~sim.stateful.invariants.Mark`, makes one client send
one packet or query, runs the world for the probe's settle time, and then checks exactly what the client
received (:mod:`sim.stateful.expect`), that no other client received anything, how many packets reached
each resource and what the upstream DNS server was asked. Probes the model cannot predict honestly (a
client the gateway does not keep, which would buffer the packet) are skipped and counted.
"""

from __future__ import annotations

from devpeers.client_types import DnsAnswer, DomainStatusReceived, GoodbyeReceived
from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, millis
from sim.gateway_world import WEB_V4
from sim.stateful.expect import expect_dns, expect_packet
from sim.stateful.invariants import Invariants
from sim.stateful.program import Step, StepKind
from sim.stateful.scene import DNS_SETTLE, Handler, InvariantError, Scene

PROBE_SETTLE: Duration = millis(1500)
"""Replies of one probe arrive within ~0.3 s here (10 ms links, 2 relay hops, DNS-resource setup)."""
CIDR_PORTS = {"udp": (7, 9, 5003), "tcp": (80, 22)}
APP_PORTS = {"udp": (7, 9), "tcp": (80, 443, 22)}
DNS_QUERIES: tuple[tuple[str, str, bool], ...] = (
    ("_sip._tcp.corp.test", "SRV", False),
    ("info.corp.test", "TXT", False),
    ("nothing.corp.test", "TXT", False),
    ("outside.example", "TXT", True),
    ("app.corp.test", "A", False),
    ("app.corp.test", "AAAA", False),
)
"""(name, type, via the gateway whatever the name): forwarded SRV/TXT, NXDOMAIN, REFUSED, local answers."""


class Traffic:
    """See the module docstring."""

    def __init__(self, scene: Scene, invariants: Invariants) -> None:
        self.s = scene
        self.inv = invariants
        self._seq = [0] * scene.spec.clients
        self._sport = [20000] * scene.spec.clients

    def handlers(self) -> dict[StepKind, Handler]:
        return {
            StepKind.PING_CIDR: self._do_ping_cidr,
            StepKind.UDP_CIDR: self._do_udp_cidr,
            StepKind.TCP_CIDR: self._do_tcp_cidr,
            StepKind.PROBE_DNS_RESOURCE: self._do_probe_dns_resource,
            StepKind.DNS_QUERY: self._do_dns_query,
        }

    def _next_sport(self, c: int) -> int:
        self._sport[c] = 20000 + (self._sport[c] + 1 - 20000) % 19000
        return self._sport[c]

    def _next_seq(self, c: int) -> int:
        self._seq[c] = (self._seq[c] + 1) % 0x10000
        return self._seq[c]

    def _probe(self, c: int, resource: str, proto: str, dst: IPAddress, port: int) -> None:
        s = self.s
        now = s.world.now
        pred = s.model.predict_packet(c, resource, proto, port, now)
        if not s.model.has_peer(c, now) and (c, resource) in s.model.routes:
            # A client without a connection buffers packets until it has one (as Firezone's does);
            # a later grant would flush them: only probe clients the gateway keeps.
            s.coverage["probe_skipped_no_peer"] += 1
            return
        mark = self.inv.mark()
        seq = sport = 0
        payload = f"p{c}-{s.steps_done}".encode()
        if proto == "icmp":
            seq = self._next_seq(c)
            s.gw.drive(c, lambda cc, t: cc.send_icmp(t, dst, seq))
        elif proto == "udp":
            sport = self._next_sport(c)
            s.gw.drive(c, lambda cc, t: cc.send_udp(t, dst, port, payload, sport=sport))
        else:
            sport = self._next_sport(c)
            s.gw.drive(c, lambda cc, t: cc.send_tcp_request(t, dst, port, payload, sport=sport))
        s.world.run_for(PROBE_SETTLE)
        got = self.inv.since(mark)
        mine = [r for r in got[c] if not isinstance(r, DomainStatusReceived | GoodbyeReceived)]
        expect_packet(s.coverage, c, pred, proto, dst, port, seq, sport, payload, mine)
        self.inv.nothing_for_others(c, got)
        self.inv.arrivals(mark, {resource: pred.arrivals})
        self.inv.upstream(mark, [])

    def _do_ping_cidr(self, step: Step, c: int) -> None:
        self._probe(c, "web", "icmp", WEB_V4, 0)

    def _do_udp_cidr(self, step: Step, c: int) -> None:
        ports = CIDR_PORTS["udp"]
        self._probe(c, "web", "udp", WEB_V4, ports[step.a % len(ports)])

    def _do_tcp_cidr(self, step: Step, c: int) -> None:
        ports = CIDR_PORTS["tcp"]
        self._probe(c, "web", "tcp", WEB_V4, ports[step.a % len(ports)])

    def _do_probe_dns_resource(self, step: Step, c: int) -> None:
        s = self.s
        if not s.model.live(c, "app", s.world.now):
            # Without a live authorisation the client waits for a domain status that never comes and
            # holds the packets (a later grant would flush them): negative reachability of the DNS
            # resource is covered by the security check on every arrival instead.
            s.coverage["probe_skipped_no_route"] += 1
            return
        v6 = bool(step.b % 2)
        rtype = "AAAA" if v6 else "A"
        client = s.client(c)
        before = len(client.received)
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, "app.corp.test", rtype))
        answers = [r for r in client.received[before:] if isinstance(r, DnsAnswer)]
        if len(answers) != 1 or answers[0].rcode != "NOERROR" or len(answers[0].records) != 4:
            raise InvariantError(f"local {rtype} answer for app.corp.test: {answers}")
        proxies = client.proxy_ips("app.corp.test")
        dst = proxies[4 + step.b // 2 % 4] if v6 else proxies[step.b // 2 % 4]
        proto = ("icmp", "udp", "tcp")[step.a % 3]
        ports = APP_PORTS.get(proto, (0,))
        port = ports[(step.a // 3) % len(ports)]
        # The local answer is recorded before the probe takes its mark: the probe sees only the flow.
        self._probe(c, "app", proto, dst, port)

    def _do_dns_query(self, step: Step, c: int) -> None:
        s = self.s
        name, rtype, via = DNS_QUERIES[step.a % len(DNS_QUERIES)]
        now = s.world.now
        pred = s.model.predict_dns(c, name, rtype, via, now)
        if pred.source == "gateway" and not s.model.has_peer(c, now):
            s.coverage["probe_skipped_no_peer"] += 1
            return
        if pred.source == "gateway" and not any(cc == c for (cc, _) in s.model.routes) and not via:
            return
        mark = self.inv.mark()
        gid = s.gw.gateway_id() if via else None
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, name, rtype, via=gid))
        s.world.run_for(DNS_SETTLE if not s.model.upstream_ok else PROBE_SETTLE)
        got = self.inv.since(mark)
        mine = [r for r in got[c] if not isinstance(r, DomainStatusReceived | GoodbyeReceived)]
        expect_dns(s.coverage, c, name, rtype, pred, mine)
        self.inv.nothing_for_others(c, got)
        self.inv.arrivals(mark, {})
        self.inv.upstream(mark, [(name, rtype)] if pred.upstream else [])
