"""The stateful harness of issue 8: one gateway world, a reference model, transitions and invariants.

Theory of operation
-------------------
A :class:`Harness` owns a :class:`~sim.gateway_world.GatewayWorld` (portal, relays, the gateway, 1-3
clients, resources, upstream DNS) and a :class:`~sim.reference.ReferenceModel`. A run is a list of
:class:`Step` values (plain data: a transition kind and small integer arguments, JSON round-trip), so the
same program can come from Hypothesis (``tests/sim/test_stateful.py``), from a seed
(:func:`random_program`) or from a file (``firezone-sim replay``).

:meth:`Harness.apply` runs one step: it first lets time pass until no authorisation expiry is close
(:meth:`ReferenceModel.certain`), updates the model (model first, as Firezone's ``tunnel_test``), acts on
the world, runs it for the step's settle time, then checks the invariants on everything that happened
during the step: every expected reply exactly once and nothing else at any client, exact arrival counts
at the resources, every arrival inside a live authorisation and its filters (security, zero tolerance),
DNS answers equal to the model's, upstream queries only when predicted, connections up within
:data:`CONNECT_BOUND`, goodbyes exactly when a client lost its last authorisation, and no ERROR log. The
driving contract is checked by the world itself on every call (a breach raises). A failed check raises
:class:`InvariantError` naming the step and what differed.

Key events (relay fallback, rekey, NAT expiry, SERVFAIL, REFUSED, ICMP prohibited, reconnect after an
outage) and transition kinds are counted in :attr:`Harness.coverage` for the coverage gate.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from devpeers.client_types import (
    DnsAnswer,
    DomainStatusReceived,
    GoodbyeReceived,
    Received,
)
from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.entropy import SeededEntropy
from gateway_core.node.connection import PathKind
from gateway_core.portal.model import CidrResource, Filter, FilterProtocol
from gateway_core.wire.ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP
from sim.gateway_world import (
    CIDR_FILTERS,
    CIDR_RESOURCE,
    DNS_PATTERN,
    DNS_RESOURCE,
    WEB_V4,
    ZONE,
    GatewayWorld,
    build_gateway_world,
)
from sim.pcap import PcapWriter
from sim.reference import Outcome, ReferenceModel, ResourceSpec
from sim.stateful_expect import expect_dns, expect_packet
from sim.stateful_topology import CONTROL_SETTLE, DNS_SETTLE, InvariantError, TopologyTransitions
from sim.trace import Trace
from sim.world import World

CONNECT_BOUND: Duration = secs(15)
"""A connection must be up this long after the step that (re)created it ends: ICE over relays converges
in a few seconds of virtual time; 15 s also covers a TURN allocation retried once."""
PROBE_SETTLE: Duration = millis(1500)
"""Replies of one probe arrive within ~0.3 s here (10 ms links, 2 relay hops, DNS-resource setup)."""
MAX_RELAYS = 3
"""Keep the relay set small: enough to lose one and fall back to another."""
RESOURCES = {"web": CIDR_RESOURCE, "app": DNS_RESOURCE}
FILTER_CHOICES: tuple[tuple[str, ...], ...] = (
    CIDR_FILTERS,
    (),
    ("icmp",),
    ("tcp/80", "udp/7"),
    ("udp/1-65535",),
)
"""Filter sets the CIDR resource cycles through (the world's own, none, ICMP only, ...)."""
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

# Transition kinds and weights: traffic dominates, as in Firezone's tunnel_test (10 per packet kind).
WEIGHTS: dict[str, int] = {
    "ping_cidr": 8,
    "udp_cidr": 8,
    "tcp_cidr": 5,
    "probe_dns_resource": 8,
    "dns_query": 6,
    "grant": 6,
    "revoke": 3,
    "update_expiry": 3,
    "let_expire": 2,
    "update_filters": 3,
    "upstream_down": 1,
    "upstream_up": 2,
    "restart_gateway": 1,
    "portal_outage": 1,
    "relay_add": 1,
    "relay_remove": 1,
    "relay_reboot": 1,
    "relay_rotate": 1,
    "roam": 1,
    "partition_direct": 1,
    "idle": 1,
}
KINDS = tuple(k for k, w in WEIGHTS.items() if w)

KEY_EVENTS = (
    "relay_fallback",
    "rekey",
    "nat_expiry",
    "servfail",
    "refused",
    "icmp_prohibited",
    "reconnect_after_outage",
)


@dataclass(frozen=True, slots=True)
class Step:
    """One transition: ``kind`` and small arguments (client index, choice indices)."""

    kind: str
    client: int = 0
    a: int = 0
    b: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> Step:
        return Step(str(d["kind"]), int(d.get("client", 0)), int(d.get("a", 0)), int(d.get("b", 0)))


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """The initial world of one example."""

    seed: int
    clients: int = 1
    relays: int = 2
    relay_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Program:
    world: WorldSpec
    steps: list[Step] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps(
            {"world": self.world.to_json(), "steps": [s.to_json() for s in self.steps]}, sort_keys=True
        )

    @staticmethod
    def loads(text: str) -> Program:
        d = json.loads(text)
        w = d["world"]
        spec = WorldSpec(int(w["seed"]), int(w["clients"]), int(w["relays"]), bool(w["relay_only"]))
        return Program(spec, [Step.from_json(s) for s in d["steps"]])


class _ErrorLog(logging.Handler):
    """Collects ERROR records of every component, and counts the NAT-expiry debug line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []
        self.nat_expired = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors.append(f"{record.name}: {record.getMessage()}")
        elif record.msg == "NAT session expired: %r":
            self.nat_expired += 1


_NAT_LOGGER = "gateway_core.policy.nat"


class Harness(TopologyTransitions):
    """See the module docstring."""

    def __init__(
        self, spec: WorldSpec, *, trace: Trace | None = None, pcap: PcapWriter | None = None
    ) -> None:
        self.spec = spec
        world = World(spec.seed, trace=trace, pcap=pcap)
        self.gw: GatewayWorld = build_gateway_world(
            spec.seed, clients=spec.clients, relays=spec.relays, relay_only=spec.relay_only, world=world
        )
        self.world = world
        self.coverage: Counter[str] = Counter()
        self.steps_done = 0
        self.checks = 0
        self.log = _ErrorLog()
        root = logging.getLogger()
        root.addHandler(self.log)
        self._root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        nat = logging.getLogger(_NAT_LOGGER)
        self._nat_level = nat.level
        nat.setLevel(logging.DEBUG)
        specs = {
            "web": ResourceSpec("web", "cidr", "172.20.0.0/16", "web", open_udp=(7,), open_tcp=(80,)),
            "app": ResourceSpec("app", "dns", DNS_PATTERN, "app", open_udp=(7,), open_tcp=(80, 443)),
        }
        self.model = ReferenceModel(spec.clients, specs, ZONE, world.clock.epoch_unix_ns, CIDR_FILTERS)
        self._relays: dict[str, uuid.UUID] = {
            name: uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5720F00 + i)
            for i, name in enumerate(self.gw.relay_names)
        }
        self._next_relay = spec.relays
        self._next_roam = 0
        self._restarts = 0
        self._seq = [0] * spec.clients
        self._sport = [20000] * spec.clients
        self._goodbyes_expected = [0] * spec.clients
        self._peer = [False] * spec.clients
        self._joined = 0
        self.closed = False
        if not self.gw.start():
            raise InvariantError("the gateway did not join the portal within 5 s")
        self._joined = self.gw.gateway.counters.snapshot().get("portal_joined", 0)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        logging.getLogger().removeHandler(self.log)
        logging.getLogger().setLevel(self._root_level)
        logging.getLogger(_NAT_LOGGER).setLevel(self._nat_level)

    # --- what may happen next (drawn from the model only) -----------------------------------------------

    def enabled(self) -> list[tuple[str, int]]:
        """The transition kinds that make sense now, with their weights."""
        relays = len(self._relays)
        out = []
        for kind, w in WEIGHTS.items():
            if not w:
                continue
            if kind == "relay_remove" and relays <= 1:
                continue
            if kind == "relay_add" and relays >= MAX_RELAYS:
                continue
            if kind == "upstream_down" and not self.model.upstream_ok:
                continue
            if kind == "upstream_up" and self.model.upstream_ok:
                continue
            if kind == "partition_direct" and self.spec.relay_only:
                continue
            out.append((kind, w))
        return out

    # --- running one step -----------------------------------------------------------------------------

    def apply(self, step: Step) -> None:
        if step.kind not in WEIGHTS:
            raise ValueError(f"unknown transition {step.kind!r}")
        self.steps_done += 1
        self.coverage[f"transition:{step.kind}"] += 1
        self._leave_uncertainty()
        self.world.trace.emit({"t": int(self.world.now), "ev": "action", "what": f"step {step}"})
        client = step.client % self.spec.clients
        getattr(self, f"_do_{step.kind}")(step, client)
        self._leave_uncertainty()
        self._check_global(step)

    def _leave_uncertainty(self) -> None:
        while not self.model.certain(self.world.now):
            nxt = self.model.next_expiry(self.world.now)
            target = (
                self.world.now + secs(1) if nxt is None else max(nxt + secs(3), self.world.now + millis(100))
            )
            self.world.run_until(Instant(target))

    def _client(self, i: int) -> Any:
        return self.gw.clients[i]

    # --- traffic ------------------------------------------------------------------------------------------

    def _next_sport(self, c: int) -> int:
        self._sport[c] = 20000 + (self._sport[c] + 1 - 20000) % 19000
        return self._sport[c]

    def _next_seq(self, c: int) -> int:
        self._seq[c] = (self._seq[c] + 1) % 0x10000
        return self._seq[c]

    def _probe(
        self, c: int, resource: str, proto: str, dst: IPAddress, port: int, prelude: list[DnsAnswer]
    ) -> None:
        now = self.world.now
        pred = self.model.predict_packet(c, resource, proto, port, now)
        if pred.outcome is not Outcome.NOTHING or (c, resource) in self.model.routes:
            pass
        if not self.model.has_peer(c, now) and (c, resource) in self.model.routes:
            # A client without a connection buffers packets until it has one (as Firezone's does);
            # a later grant would flush them: only probe clients the gateway keeps.
            self.coverage["probe_skipped_no_peer"] += 1
            return
        mark = self._mark()
        cl = self._client(c)
        seq = sport = 0
        payload = f"p{c}-{self.steps_done}".encode()
        if proto == "icmp":
            seq = self._next_seq(c)
            self.gw.drive(c, lambda cc, t: cc.send_icmp(t, dst, seq))
        elif proto == "udp":
            sport = self._next_sport(c)
            self.gw.drive(c, lambda cc, t: cc.send_udp(t, dst, port, payload, sport=sport))
        else:
            sport = self._next_sport(c)
            self.gw.drive(c, lambda cc, t: cc.send_tcp_request(t, dst, port, payload, sport=sport))
        self.world.run_for(PROBE_SETTLE)
        got = self._since(mark)
        mine = [r for r in got[c] if not isinstance(r, DomainStatusReceived | GoodbyeReceived)]
        for p in prelude:
            match = [r for r in mine if isinstance(r, DnsAnswer) and r == p]
            if len(match) != 1:
                raise InvariantError(f"local DNS answer {p} seen {len(match)} times")
            mine.remove(match[0])
        expect_packet(self.coverage, c, pred, proto, dst, port, seq, sport, payload, mine)
        self._no_other_client_records(c, got)
        self._check_arrivals(mark, {resource: pred.arrivals}, c)
        self._check_upstream(mark, [])
        _ = cl

    def _do_ping_cidr(self, step: Step, c: int) -> None:
        self._probe(c, "web", "icmp", WEB_V4, 0, [])

    def _do_udp_cidr(self, step: Step, c: int) -> None:
        ports = CIDR_PORTS["udp"]
        self._probe(c, "web", "udp", WEB_V4, ports[step.a % len(ports)], [])

    def _do_tcp_cidr(self, step: Step, c: int) -> None:
        ports = CIDR_PORTS["tcp"]
        self._probe(c, "web", "tcp", WEB_V4, ports[step.a % len(ports)], [])

    def _do_probe_dns_resource(self, step: Step, c: int) -> None:
        if not self.model.live(c, "app", self.world.now):
            # Without a live authorisation the client waits for a domain status that never comes and
            # holds the packets (a later grant would flush them): negative reachability of the DNS
            # resource is covered by the security check on every arrival instead.
            self.coverage["probe_skipped_no_route"] += 1
            return
        v6 = bool(step.b % 2)
        rtype = "AAAA" if v6 else "A"
        mark = len(self._client(c).received)
        self.gw.drive(c, lambda cc, t: cc.query_dns(t, "app.corp.test", rtype))
        answers = [r for r in self._client(c).received[mark:] if isinstance(r, DnsAnswer)]
        if len(answers) != 1 or answers[0].rcode != "NOERROR" or len(answers[0].records) != 4:
            raise InvariantError(f"local {rtype} answer for app.corp.test: {answers}")
        proxies = self._client(c).proxy_ips("app.corp.test")
        dst = proxies[4 + step.b // 2 % 4] if v6 else proxies[step.b // 2 % 4]
        kinds = ("icmp", "udp", "tcp")
        proto = kinds[step.a % 3]
        ports = APP_PORTS.get(proto, (0,))
        port = ports[(step.a // 3) % len(ports)]
        # The local answer was recorded before the probe's mark; nothing else is in the prelude.
        self._probe(c, "app", proto, dst, port, [])

    def _do_dns_query(self, step: Step, c: int) -> None:
        name, rtype, via = DNS_QUERIES[step.a % len(DNS_QUERIES)]
        now = self.world.now
        pred = self.model.predict_dns(c, name, rtype, via, now)
        if pred.source == "gateway" and not self.model.has_peer(c, now):
            self.coverage["probe_skipped_no_peer"] += 1
            return
        if pred.source == "gateway" and not any(cc == c for (cc, _) in self.model.routes) and not via:
            return
        mark = self._mark()
        gid = self.gw.gateway_id() if via else None
        self.gw.drive(c, lambda cc, t: cc.query_dns(t, name, rtype, via=gid))
        self.world.run_for(DNS_SETTLE if not self.model.upstream_ok else PROBE_SETTLE)
        got = self._since(mark)
        mine = [r for r in got[c] if not isinstance(r, DomainStatusReceived | GoodbyeReceived)]
        expect_dns(self.coverage, c, name, rtype, pred, mine)
        self._no_other_client_records(c, got)
        self._check_arrivals(mark, {}, c)
        self._check_upstream(mark, [(name, rtype)] if pred.upstream else [])

    # --- portal actions -----------------------------------------------------------------------------------

    def _grant(self, c: int, resource: str) -> None:
        self.model.grant(self.world.now, c, resource)
        if resource == "app":
            # A new flow for a DNS resource: the client sets its proxy-IP NAT up again (buffering until
            # Active) rather than trusting a gateway state that may have lapsed with the old flow.
            self._forget_nat_of(c, self.gw.gateway_id())
        res = self.gw.grant(c, RESOURCES[resource])
        if not res.get("ok"):
            raise InvariantError(f"the portal refused the grant of {resource} to client-{c}: {res}")

    def _forget_nat_of(self, c: int, gid: str) -> None:
        cl = self._client(c)

        def forget(now: Instant) -> None:
            _forget_nat(cl, gid)

        self.world.drive(self.gw.client_hosts[c], forget)

    def _do_grant(self, step: Step, c: int) -> None:
        self._grant(c, ("web", "app")[step.a % 2])
        self.world.run_for(CONTROL_SETTLE)

    def _do_revoke(self, step: Step, c: int) -> None:
        resource = ("web", "app")[step.a % 2]
        forget = bool(step.b % 2)
        self.model.revoke(self.world.now, c, resource, forget)
        self.gw.signalling.revoke(self.gw.client_ids[c], RESOURCES[resource], forget=forget)
        self.world.run_for(CONTROL_SETTLE)

    def _do_update_expiry(self, step: Step, c: int) -> None:
        resource = ("web", "app")[step.a % 2]
        if self.model.current(c, resource) is None:
            return
        secs_ahead = (10, 60, 900)[step.b % 3]
        at = self.gw.portal.unix_now + secs_ahead
        self.model.update_expiry(self.world.now, c, resource, at)
        self.gw.signalling.update_expiry(self.gw.client_ids[c], RESOURCES[resource], at)
        self.world.run_for(CONTROL_SETTLE)

    def _do_let_expire(self, step: Step, c: int) -> None:
        """Expire one authorisation soon and let it happen (an expiry update into the near future)."""
        resource = ("web", "app")[step.a % 2]
        if self.model.current(c, resource) is None:
            return
        at = self.gw.portal.unix_now + 3
        self.model.update_expiry(self.world.now, c, resource, at)
        self.gw.signalling.update_expiry(self.gw.client_ids[c], RESOURCES[resource], at)
        self.world.run_for(CONTROL_SETTLE)

    def _do_update_filters(self, step: Step, c: int) -> None:
        filters = FILTER_CHOICES[step.a % len(FILTER_CHOICES)]
        self.model.set_filters(self.world.now, filters)
        res = self.gw.portal.config.resource(CIDR_RESOURCE)
        assert isinstance(res, CidrResource)
        parsed = tuple(_filter(f) for f in filters)
        self.gw.signalling.update_resource(replace(res, filters=parsed))
        self.world.run_for(CONTROL_SETTLE)

    # --- reconnection (what Firezone's client does when a connection fails) -------------------------------

    def _reconnect_all(self, force: bool = False, only: int | None = None) -> None:
        gid = self.gw.gateway_id()
        for c in range(self.spec.clients):
            if only is not None and c != only:
                continue
            if not self.model.has_peer(c, self.world.now):
                continue
            if force or not self._connected(c, gid):
                self.coverage["reconnects"] += 1
                for r in ("web", "app"):
                    if self.model.live(c, r, self.world.now):
                        self._grant(c, r)
        self.world.run_for(CONTROL_SETTLE)

    def _connected(self, c: int, gid: str) -> bool:
        """Both ends hold a working connection (the client's view alone can be stale after a failure)."""
        conn = self.gw.gateway.node.connections.get(str(self.gw.client_ids[c]))
        return self._client(c).is_connected(gid) and conn is not None and conn.peer_socket is not None

    # --- invariants ---------------------------------------------------------------------------------------

    def _mark(self) -> tuple[list[int], int, int, int]:
        return (
            [len(c.received) for c in self.gw.clients],
            len(self.gw.web.received),
            len(self.gw.app.received),
            len(self.gw.upstream.queries),
        )

    def _since(self, mark: tuple[list[int], int, int, int]) -> list[list[Received]]:
        return [c.received[m:] for c, m in zip(self.gw.clients, mark[0], strict=True)]

    def _no_other_client_records(self, c: int, got: list[list[Received]]) -> None:
        for i, recs in enumerate(got):
            if i == c:
                continue
            other = [r for r in recs if not isinstance(r, GoodbyeReceived)]
            if other:
                raise InvariantError(f"client-{i} received packets nobody asked for: {other}")

    def _check_arrivals(
        self, mark: tuple[list[int], int, int, int], expected: dict[str, int], c: int
    ) -> None:
        for name, server, start in (("web", self.gw.web, mark[1]), ("app", self.gw.app, mark[2])):
            new = server.received[start:]
            want = expected.get(name, 0)
            if len(new) != want:
                raise InvariantError(f"{len(new)} packets reached {name}, the model expects {want}: {new}")

    def _check_upstream(self, mark: tuple[list[int], int, int, int], expected: list[tuple[str, str]]) -> None:
        got = [(q.name, q.rtype) for q in self.gw.upstream.queries[mark[3] :]]
        if got != expected:
            raise InvariantError(f"the upstream DNS server was asked {got}, the model expects {expected}")

    def _check_global(self, step: Step) -> None:
        """After every step: security over all arrivals, connections, goodbyes, key events, no ERROR."""
        self.checks += 1
        now = self.world.now
        tunnel: dict[IPAddress, int] = {}
        for i, cl in enumerate(self.gw.clients):
            tunnel[cl.tunnel_v4] = i
            tunnel[cl.tunnel_v6] = i
        for name, server in (("web", self.gw.web), ("app", self.gw.app)):
            for a in server.received:
                who = tunnel.get(a.src)
                proto = {PROTO_ICMP: "icmp", PROTO_ICMPV6: "icmp", PROTO_UDP: "udp", PROTO_TCP: "tcp"}.get(
                    a.proto, "other"
                )
                port = a.dport if proto in ("udp", "tcp") else 0
                if who is None or not self.model.may_reach(who, name, proto, port, a.at):
                    raise InvariantError(f"SECURITY: {a} reached {name} outside a live authorisation/filter")
        gid = self.gw.gateway_id()
        for c in range(self.spec.clients):
            peer = self.model.has_peer(c, now)
            if self._peer[c] and not peer:  # the gateway removed the client: one goodbye
                self._goodbyes_expected[c] += 1
            self._peer[c] = peer
            if peer and not self._connected(c, gid):
                end = now + CONNECT_BOUND
                self._reconnect_all(only=c)
                while not self._connected(c, gid) and self.world.now < end:
                    self.world.run_for(millis(50))
                if not self._connected(c, gid):
                    raise InvariantError(f"client-{c} not connected {CONNECT_BOUND // 10**9} s after {step}")
            bye = sum(isinstance(r, GoodbyeReceived) for r in self._client(c).received)
            if bye != self._goodbyes_expected[c]:
                raise InvariantError(
                    f"client-{c} received {bye} goodbyes, the model expects {self._goodbyes_expected[c]}"
                )
        if self.log.errors:
            raise InvariantError(f"ERROR logged: {self.log.errors}")
        self._key_events()

    def _key_events(self) -> None:
        gw = self.gw.gateway
        for conn in gw.node.connections.values():
            ps = conn.peer_socket
            if ps is not None and ps.kind is not PathKind.PEER_TO_PEER:
                self.coverage["event:relay_fallback"] += 1
            if conn.tunnel.stats.snapshot().get("handshakes_as_responder", 0) >= 2:
                self.coverage["event:rekey"] += 1
        if self.log.nat_expired:
            self.coverage["event:nat_expiry"] += self.log.nat_expired
            self.log.nat_expired = 0

    # --- summary ------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, int]:
        out = {"steps": self.steps_done, "invariant_checks": self.checks}
        st = self.world.stats.snapshot()
        out["packets_sent"] = st.get("sent", 0)
        out["packets_delivered"] = st.get("delivered", 0)
        for k in sorted(st):
            if k.startswith("drop."):
                out[f"net.{k}"] = st[k]
        for k, v in sorted(self.gw.gateway.stats().items()):
            if k.startswith("drop.") or ".drop." in k:
                out[f"gateway.{k}"] = v
        return out


def _forget_nat(client: Any, gateway: str) -> None:
    for key in [k for k in client._nat if k[0] == gateway]:
        del client._nat[key]


def _filter(text: str) -> Filter:
    kind, _, ports = text.partition("/")
    proto = FilterProtocol(kind)
    if proto is FilterProtocol.ICMP:
        return Filter(proto)
    lo, _, hi = ports.partition("-")
    return Filter(proto, int(lo), int(hi or lo))


def draw_step(entropy: SeededEntropy, harness: Harness) -> Step:
    """One transition drawn by weight from what is enabled (for seeded programs)."""
    options = harness.enabled()
    total = sum(w for _, w in options)
    x = entropy.randbelow(total)
    for kind, w in options:
        if x < w:
            return Step(kind, entropy.randbelow(3), entropy.randbelow(64), entropy.randbelow(64))
        x -= w
    raise AssertionError("unreachable")


def world_from_seed(seed: int) -> WorldSpec:
    e = SeededEntropy(seed).fork("stateful-world")
    return WorldSpec(seed, 1 + e.randbelow(3), 1 + e.randbelow(2), e.randbelow(4) == 0)


def initial_steps(spec: WorldSpec) -> list[Step]:
    """Every example starts with client 0 holding both resources (so traffic steps have work to do)."""
    return [Step("grant", 0, 0), Step("grant", 0, 1)]


def run_program(
    program: Program,
    *,
    trace: Trace | None = None,
    pcap: PcapWriter | None = None,
    progress: Any = None,
) -> Harness:
    """Run ``program`` (initial world + steps) and return the harness (closed); raises on a failed check."""
    h = Harness(program.world, trace=trace, pcap=pcap)
    try:
        for i, step in enumerate(program.steps):
            h.apply(step)
            if progress is not None:
                progress(i + 1, len(program.steps), h)
    finally:
        h.close()
    return h


def run_seeded(
    seed: int,
    steps: int,
    *,
    trace: Trace | None = None,
    pcap: PcapWriter | None = None,
    progress: Any = None,
    program: Program | None = None,
) -> Harness:
    """A program drawn from ``seed`` (world and ``steps`` weighted transitions) run at once; the steps
    taken are appended to ``program`` if given (so a failure can be saved and replayed)."""
    spec = world_from_seed(seed)
    prog = program if program is not None else Program(spec)
    prog.world = spec
    h = Harness(spec, trace=trace, pcap=pcap)
    e = SeededEntropy(seed).fork("program")
    try:
        todo = initial_steps(spec)
        for i in range(steps):
            step = todo[i] if i < len(todo) else draw_step(e, h)
            prog.steps.append(step)
            h.apply(step)
            if progress is not None:
                progress(i + 1, steps, h)
    finally:
        h.close()
    return h
