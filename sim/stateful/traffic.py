"""Traffic steps of the stateful harness: probes to the resources, to foreign and own addresses, DNS.

Theory of operation: a probe step asks the model what must happen (:meth:`ReferenceModel.predict_packet`
and its siblings), takes a :class:`~sim.stateful.invariants.Mark`, makes one client send one packet (or a
few DNS queries at once), runs the world for the settle time, and checks exactly what every client
received and what reached every host behind the gateway (:mod:`sim.stateful.probes`) and what the
upstream DNS server was asked. Ports are drawn where filters have edges: the first and last port of every
range of the CIDR resource's filters and the ports just outside them, besides the hosts' open ports and
random ones. A client the gateway does not keep would hold its packets until it has a connection; after
such a probe the harness drops them (the application gave up), so a later grant flushes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address

from devpeers.client_types import (
    DnsAnswer,
    DomainStatusReceived,
    GoodbyeReceived,
    IcmpErrorReceived,
    Received,
)
from gateway_core.addr import IPAddress
from gateway_core.clock import Instant, millis
from sim.gateway_world import INET_V4, WEB_V4, WEB_V6, WEBDNS_V4, WEBDNS_V6
from sim.reference import DnsPrediction, Outcome, Prediction
from sim.stateful.edges import DropReasonCheck
from sim.stateful.expect import expect_dns
from sim.stateful.invariants import Invariants
from sim.stateful.probes import PROBE_SETTLE, Probe, Prober
from sim.stateful.program import Step, StepKind, mix64
from sim.stateful.scene import DNS_SETTLE, Handler, InvariantError, Scene

OPEN_PORTS = {"udp": (7, 9), "tcp": (80, 443)}
"""Ports the hosts behind the gateway answer on, and ones they do not."""
DNS_QUERIES: tuple[tuple[str, str, bool], ...] = (
    ("_sip._tcp.corp.test", "SRV", False),
    ("info.corp.test", "TXT", False),
    ("nothing.corp.test", "TXT", False),
    ("outside.example", "TXT", True),
    ("app.corp.test", "A", False),
    ("app.corp.test", "AAAA", False),
    ("outside.example", "A", False),
    ("nowhere.example", "A", False),
)
"""(name, type, via the gateway whatever the name): forwarded SRV/TXT, NXDOMAIN, REFUSED, local answers,
and names outside the DNS resources (the client's own DNS server)."""
DNS_NAMES = (
    "app.corp.test",
    "app.corp.test",
    "app.corp.test",
    "v4only.corp.test",
    "v6only.corp.test",
    "nxname.corp.test",
)
"""Names of the DNS resource a probe goes to (each gets its own proxy IPs and NAT request): one with
addresses of both families, one with each family only, one the gateway cannot resolve."""
NO_HOST_V4 = IPv4Address("172.20.0.99")
"""An address inside the CIDR resource where no host lives: allowed packets go nowhere."""
FOREIGN_V4 = IPv4Address("203.0.113.199")
FOREIGN_V6 = IPv6Address("2001:db8:99::1")
"""Addresses no resource covers and no host owns."""
TRAIN_INTERVAL = millis(100)
"""One probe of a train every 100 ms (several across the 1 s expiry sweep and each portal hop)."""
SPOOFED_V4 = IPv4Address("100.64.1.250")
SPOOFED_V6 = IPv6Address("fd00:2021:1111::1:fa")
"""Tunnel addresses no client has: a client sending from them is spoofing."""


def port_edges(filters: tuple[str, ...], proto: str) -> list[int]:
    """The first and last port of every ``proto`` range and the ports just outside (1..65535)."""
    out: list[int] = []
    for f in filters:
        kind, _, ports = f.partition("/")
        if kind != proto or not ports:
            continue
        lo, _, hi = ports.partition("-")
        a, b = int(lo), int(hi or lo)
        for p in (a - 1, a, b, b + 1):
            if 1 <= p <= 65535 and p not in out:
                out.append(p)
    return out


class Traffic:
    """See the module docstring."""

    def __init__(self, scene: Scene, invariants: Invariants) -> None:
        self.s = scene
        self.inv = invariants
        self.prober = Prober(scene)
        self.drops = DropReasonCheck(scene)
        self.proxy_map: dict[tuple[int, IPAddress], IPAddress] = {}
        """(client, proxy IP) -> the real address its packets reached: must never change."""

    def handlers(self) -> dict[StepKind, Handler]:
        return {
            StepKind.PING_CIDR: self._do_ping_cidr,
            StepKind.UDP_CIDR: self._do_udp_cidr,
            StepKind.TCP_CIDR: self._do_tcp_cidr,
            StepKind.PROBE_DNS_RESOURCE: self._do_probe_dns_resource,
            StepKind.DNS_QUERY: self._do_dns_query,
            StepKind.PROBE_FOREIGN: self._do_probe_foreign,
            StepKind.PROBE_INTERNET: self._do_probe_internet,
        }

    # --- one probe, checked ---------------------------------------------------------------------------

    def run(self, p: Probe) -> Probe:
        """Send ``p`` now, settle, check it and everything else that happened meanwhile."""
        s = self.s
        self.prober.prepare(p)
        mark = self.inv.mark()
        counted = self.drops.before(p)
        self.prober.send(p)
        s.world.run_for(PROBE_SETTLE)
        self._finish([p], mark, [])
        self.drops.after(p, counted)
        return p

    def finish(self, probes: list[Probe], mark: object) -> None:
        """Check ``probes`` (sent since ``mark``, the world run) and everything else since ``mark``."""
        self._finish(probes, mark, [])

    def _finish(self, probes: list[Probe], mark: object, upstream: list[tuple[str, str]]) -> None:
        from sim.stateful.invariants import Mark

        assert isinstance(mark, Mark)
        got = self.inv.since(mark)
        self.prober.collect(probes, got, self.inv.arrivals_since(mark))
        for p in probes:
            self.prober.check(p)
        self.inv.upstream(mark, upstream)
        for c in sorted({p.c for p in probes}):
            if not self.s.model.has_peer(c, self.s.world.now):
                # The packets wait for a connection that does not come: the application gives up.
                self.s.client(c).discard_pending()

    settle = PROBE_SETTLE

    def train(
        self,
        c: int,
        dst: IPAddress,
        proto: str,
        ports: list[int],
        end: int,
        predict: Callable[[int, int], Prediction],
        start: int | None = None,
    ) -> list[Probe]:
        """Probes from ``c`` to ``dst`` every :data:`TRAIN_INTERVAL` from ``start`` (default: now) to
        ``end``, cycling through ``ports``; ``predict(sent, port)`` is each one's prediction. Scheduled
        world actions (the change the train crosses) run meanwhile; everything is checked at the end."""
        s = self.s
        mark = self.inv.mark()
        t = s.world.now if start is None else max(start, s.world.now)
        probes: list[Probe] = []
        i = 0
        host = self.host_for(dst)
        while t <= end:
            port = ports[i % len(ports)]
            p = self.prober.prepare(Probe(c, proto, dst, port, predict(t, port), host))
            self.prober.send_at(Instant(t), p)
            probes.append(p)
            t += TRAIN_INTERVAL
            i += 1
        s.world.run_until(Instant(end + PROBE_SETTLE))
        self._finish(probes, mark, [])
        return probes

    def train_target(self, c: int, resource: str, k: int) -> tuple[IPAddress, str, list[int]]:
        """Where a train across a change of ``resource`` goes: the web host (or the Internet host)."""
        dst = INET_V4 if resource == "inet" else self.web_target(0)
        if k % 2 == 0:
            return dst, "icmp", [0]
        return dst, "udp", self.edge_ports(self.s.model.filters) or [7]

    def edge_ports(self, *filter_sets: tuple[str, ...]) -> list[int]:
        """The UDP edges of the given filter sets, with port 7 (echo) first."""
        out = [7]
        for filters in filter_sets:
            for p in port_edges(filters, "udp"):
                if p not in out:
                    out.append(p)
        return out

    def web_target(self, k: int) -> IPAddress:
        """An address inside (usually) the CIDR resource: the web host, the DNS server there, no host."""
        net = self.s.model.web_network()
        if net.version == 6:
            return (WEB_V6, WEB_V6, WEBDNS_V6)[k % 3]
        return (WEB_V4, WEB_V4, WEB_V4, WEBDNS_V4, NO_HOST_V4)[k % 5]

    def host_for(self, dst: IPAddress) -> str | None:
        h = self.s.model.host_of(dst)
        return None if h is None else h.name

    def pick_port(self, proto: str, a: int, b: int) -> int:
        """A destination port: a filter edge, an open port, or a random one (from the step's arguments)."""
        edges = port_edges(self.s.model.filters, proto)
        choice = a % 4
        if choice in (0, 1) and edges:
            self.s.coverage["event:filter_edge_probed"] += 1
            port = edges[(b + a // 4) % len(edges)]
        elif choice == 2:
            ports = OPEN_PORTS[proto]
            port = ports[b % len(ports)]
        else:
            port = 1 + mix64(a * 64 + b) % 65535
        # UDP 53 is the DNS server's: a probe's payload is no DNS message (DNS queries have a step).
        return 52 if proto == "udp" and port == 53 else port

    def probe_web(self, c: int, proto: str, port: int, k: int) -> None:
        s = self.s
        dst = self.web_target(k)
        pred = s.model.predict_packet(c, dst, proto, port, s.world.now)
        self.run(Probe(c, proto, dst, port, pred, self.host_for(dst)))

    # --- steps ----------------------------------------------------------------------------------------

    def _do_ping_cidr(self, step: Step, c: int) -> None:
        self.probe_web(c, "icmp", 0, step.a)

    def _do_udp_cidr(self, step: Step, c: int) -> None:
        self.probe_web(c, "udp", self.pick_port("udp", step.a, step.b), step.b // 4)

    def _do_tcp_cidr(self, step: Step, c: int) -> None:
        self.probe_web(c, "tcp", self.pick_port("tcp", step.a, step.b), step.b // 4)

    def _do_probe_dns_resource(self, step: Step, c: int) -> None:
        """A packet to a proxy IP of a name of the DNS resource, after the client's own A or AAAA answer
        (mostly ``app.corp.test``; sometimes a name with addresses of one family only)."""
        s = self.s
        if (c, "app") not in s.model.routes:
            s.coverage["probe_skipped_no_route"] += 1  # the client answers NXDOMAIN: no proxy IP
            return
        name = DNS_NAMES[step.b // 8 % len(DNS_NAMES)]
        v6 = bool(step.b % 2)
        rtype = "AAAA" if v6 else "A"
        client = s.client(c)
        before = len(client.received)
        s.gw.drive(c, lambda cc, t: cc.query_dns(t, name, rtype))
        answers = [r for r in client.received[before:] if isinstance(r, DnsAnswer)]
        if len(answers) != 1 or answers[0].rcode != "NOERROR" or len(answers[0].records) != 4:
            raise InvariantError(f"local {rtype} answer for {name}: {answers}")
        proxies = client.proxy_ips(name)
        dst = proxies[4 + step.b // 2 % 4] if v6 else proxies[step.b // 2 % 4]
        proto = ("icmp", "udp", "tcp")[step.a % 3]
        port = 0 if proto == "icmp" else OPEN_PORTS[proto][step.a // 3 % 2] if step.a % 7 else 9
        now = s.world.now
        s.model.nat_query(c, name)
        if not s.model.live(c, "app", now):
            s.coverage["event:dns_resource_unauthorised"] += 1
        pred = s.model.predict_packet(c, dst, proto, port, now, name)
        s.model.nat_probe(c, name)
        p = self.run(Probe(c, proto, dst, port, pred, "app"))
        s.model.nat_settle(c, name, now)
        real = set(s.model.resolved(name, 4) + s.model.resolved(name, 6))
        for a in p.arrivals:
            if a.dst not in real:
                raise InvariantError(f"{p.what}: reached {a.dst}, not an address {name} resolves to")
            seen = self.proxy_map.setdefault((c, dst), a.dst)
            if seen != a.dst:
                raise InvariantError(f"{p.what}: proxy IP {dst} maps to {a.dst} now, to {seen} before")

    def _do_probe_foreign(self, step: Step, c: int) -> None:
        """Straight into the tunnel: the gateway's own address, another client's, a spoofed source, an
        address no resource covers."""
        s = self.s
        now = s.world.now
        v6 = bool(step.b % 2)
        choice = step.a % 5
        ips = s.gw.gateway.peers.gateway_ips
        gw_tunnel = None if ips is None else ips[1] if v6 else ips[0]
        if choice in (0, 1) and gw_tunnel is not None:
            proto = "icmp" if choice == 0 else "udp"
            port = 0 if proto == "icmp" else 1 + mix64(step.b) % 53000
            pred = s.model.predict_gateway_address(c, proto, port, now)
            s.coverage["event:gateway_tunnel_address"] += 1
            self.run(Probe(c, proto, gw_tunnel, port, pred, None, raw=True))
            return
        if choice == 2:
            other = (c + 1) % s.spec.clients
            if other == c:
                dst: IPAddress = SPOOFED_V6 if v6 else SPOOFED_V4
            else:
                dst = s.client(other).tunnel_v6 if v6 else s.client(other).tunnel_v4
            pred = s.model.predict_prohibited_or_nothing(c, now)
            s.coverage["event:foreign_destination"] += 1
            self.run(Probe(c, "icmp", dst, 0, pred, None, raw=True))
            return
        if choice == 3:
            src = SPOOFED_V6 if v6 else SPOOFED_V4
            dst = WEB_V6 if v6 else WEB_V4
            before = s.gw.gateway.stats().get("drop.spoofed_source", 0)
            s.coverage["event:spoofed_source"] += 1
            peer = s.model.has_peer(c, now)
            pred = Prediction.exact(Outcome.NOTHING, 0)
            self.run(Probe(c, "udp", dst, 7, pred, "web", raw=True, src=src))
            after = s.gw.gateway.stats().get("drop.spoofed_source", 0)
            if peer and not s.model.lossy and after != before + 1:
                raise InvariantError(
                    f"a spoofed packet from client-{c}: drop.spoofed_source {before} -> {after}"
                )
            return
        dst = (FOREIGN_V6 if v6 else FOREIGN_V4) if step.b % 4 < 2 else INET_V4
        proto = ("icmp", "udp")[step.b // 4 % 2]
        port = 0 if proto == "icmp" else 7
        s.coverage["event:foreign_destination"] += 1
        pred = s.model.predict_raw(c, dst, proto, port, now)
        self.run(Probe(c, proto, dst, port, pred, self.host_for(dst), raw=True))

    def _do_probe_internet(self, step: Step, c: int) -> None:
        """A packet to a host on the Internet, through the client's routing (the Internet resource); half
        the time from a client that holds it, if one does."""
        s = self.s
        holders = [i for i in range(s.spec.clients) if s.model.live(i, "inet", s.world.now)]
        if holders and c not in holders and step.b % 2 == 0:
            c = holders[step.a % len(holders)]
        proto = ("icmp", "udp", "tcp")[step.a % 3]
        port = 0 if proto == "icmp" else OPEN_PORTS[proto][step.b % 2] if step.b % 5 else 9
        if proto == "udp" and port == 53:
            port = 7
        pred = s.model.predict_packet(c, INET_V4, proto, port, s.world.now)
        if s.model.live(c, "inet", s.world.now):
            s.coverage["event:internet_resource"] += 1
        self.run(Probe(c, proto, INET_V4, port, pred, "inet"))

    def _do_dns_query(self, step: Step, c: int) -> None:
        """One to three queries at once (distinct names and types; those for the gateway over UDP or TCP),
        each checked against the model; at most one goes through the tunnel to the client's own DNS
        server."""
        s = self.s
        now = s.world.now
        n = 1 + step.b % 3
        cl = s.client(c)
        server = cl.dns_servers[0] if cl.dns_servers else None
        gid = s.gw.gateway_id()
        mark = self.inv.mark()
        direct: list[tuple[str, str, DnsPrediction]] = []
        tunnel: tuple[str, str, DnsPrediction, Prediction] | None = None
        upstream: list[tuple[str, str]] = []
        for i in range(n):
            name, rtype, via = DNS_QUERIES[(step.a + 3 * i) % len(DNS_QUERIES)]
            if any((name, rtype) == (x[0], x[1]) for x in direct) or (tunnel and tunnel[:2] == (name, rtype)):
                continue
            routed = server is not None and s.model.client_route(c, server) is not None
            mine = [r for r in s.model.dns_resources(name) if (c, r) in s.model.routes]
            if not mine and not via and routed:
                if tunnel is not None:
                    continue
                assert server is not None
                answer, pred = s.model.predict_dns_server(c, server, name, rtype, now)
                tunnel = (name, rtype, answer, pred)
            else:
                pred_dns = s.model.predict_dns(c, name, rtype, via, now)
                direct.append((name, rtype, pred_dns))
                if pred_dns.upstream:
                    upstream.append((name, rtype))
            tcp = bool((step.b // 3 + i) % 2)  # half of the queries for the gateway go over TCP
            if tcp and (via or mine):
                s.coverage["event:dns_over_tcp"] += 1
            s.gw.drive(
                c,
                lambda cc, t, nm=name, rt=rtype, v=via, tc=tcp: cc.query_dns(
                    t, nm, rt, via=gid if v else None, tcp=tc
                ),
            )
            if mine and not via and rtype in ("A", "AAAA"):
                s.model.nat_query(c, name)  # the client asks its NAT request again
                s.model.nat_settle(c, name, now)
        s.world.run_for(DNS_SETTLE if not s.model.upstream_ok else PROBE_SETTLE)
        got = self.prober.without_late_records(self.inv.since(mark))  # (a late record is never a DNS answer)
        answers = [r for r in got[c] if isinstance(r, DnsAnswer)]
        for name, rtype, pred_dns in direct:
            expect_dns(
                s.coverage,
                c,
                name,
                rtype,
                pred_dns,
                [r for r in answers if (r.name, r.rtype) == (name, rtype)],
                lossy=s.model.lossy,
            )
        others = [r for r in got[c] if not isinstance(r, DnsAnswer | DomainStatusReceived | GoodbyeReceived)]
        new = self.inv.arrivals_since(mark)
        fresh = self.prober.without_late_arrivals(new)
        for host in ("web", "app", "inet"):
            if fresh.get(host):
                raise InvariantError(f"{host} received packets during a DNS query: {fresh[host]}")
        arrived = len(new.get("webdns", []))
        if tunnel is None:
            if others or arrived:
                raise InvariantError(f"client-{c} DNS queries: unexpected {others}, {arrived} at webdns")
        else:
            name, rtype, answer, pred = tunnel
            asked = [r for r in answers if (r.name, r.rtype) == (name, rtype)]
            self._check_tunnel_query(c, name, rtype, answer, pred, asked, others, arrived)
        self.inv.nothing_for_others(c, got)
        self.inv.upstream(mark, upstream)
        if not s.model.has_peer(c, s.world.now):
            s.client(c).discard_pending()

    def _check_tunnel_query(
        self,
        c: int,
        name: str,
        rtype: str,
        answer: DnsPrediction,
        pred: Prediction,
        mine: list[DnsAnswer],
        others: Sequence[Received],
        arrived: int,
    ) -> None:
        """A query sent through the tunnel to the client's DNS server: an ordinary UDP packet to port 53."""
        server = self.s.client(c).dns_servers[0]
        for alt in pred.alternatives:
            if alt.arrivals != arrived:
                continue
            if alt.outcome is Outcome.REPLY and not others and len(mine) == 1:
                expect_dns(self.s.coverage, c, name, rtype, answer, mine)
                return
            if alt.outcome is Outcome.NOTHING and not others and not mine:
                return
            if alt.outcome is Outcome.PROHIBITED and not mine and len(others) == 1:
                err = others[0]
                code = (1, 1) if server.version == 6 else (3, 13)
                if (
                    isinstance(err, IcmpErrorReceived)
                    and (err.icmp_type, err.code) == code
                    and err.inner_dst == server
                ):
                    self.s.coverage["event:icmp_prohibited"] += 1
                    return
        raise InvariantError(
            f"client-{c} DNS {name} {rtype} to {server} through the tunnel: expected {pred.alternatives} "
            f"({answer}), got {mine} {others} and {arrived} arrivals"
        )
