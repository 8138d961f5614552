"""The ``nested_edge`` step of the stateful harness: CIDR resources inside each other, with other filters.

Theory of operation. Firezone's gateway gives every network of a client's CIDR resources the union of the
filters of all the client's resources whose networks contain it, and a packet gets the filters of the
longest network that holds its destination (``recalculate_cidr_filters`` in
``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``, the longest-prefix lookup of its
``IpNetworkTable``; a resource without filters makes every network inside it permit-all). The world has
one CIDR resource (``web``, :data:`~sim.gateway_world.CIDR_ADDRESS` with its filters); a ``nested_edge``
step adds, for client ``c`` which holds ``web``, the resources of :data:`NESTED` to the portal, grants them
(the client routes them to the gateway), probes the addresses of :data:`CASES` (each predicted by
:func:`allows`, from the filters above, not from the gateway's code; what an allowed packet gets is what
the host there answers), revokes the host route (``reject_access``) and probes again (the /24's filters
now decide for the web host), then revokes the rest and removes the routes (the world is as before).
A disjoint network (:data:`DISJOINT`) of a prefix length between the others is held too: a filter table
must look its levels up without finding it.

The step has weight 0 (never drawn); :func:`nested_program` walks it (``make test``, ``make mutation``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import TYPE_CHECKING

from devpeers.client import DevClient
from devportal.config import PolicyConfig
from devportal.portal import DevPortal
from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.clock import Instant
from gateway_core.portal.model import CidrResource
from sim.gateway_world import CIDR_ADDRESS, CIDR_FILTERS, WEB_V4, WEBDNS_V4
from sim.reference import Outcome, Prediction
from sim.stateful.access import _filter
from sim.stateful.invariants import Invariants
from sim.stateful.probes import Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import CONTROL_SETTLE, Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

INNER = uuid.UUID("5e1f7e57-0bad-4c0d-8e5e-0000000a0024")
HOST = uuid.UUID("5e1f7e57-0bad-4c0d-8e5e-0000000a0032")
DISJOINT = uuid.UUID("5e1f7e57-0bad-4c0d-8e5e-0000000a0020")
NESTED: tuple[tuple[uuid.UUID, str, tuple[str, ...]], ...] = (
    (INNER, "172.20.0.0/24", ("udp/9",)),
    (HOST, f"{WEB_V4}/32", ("tcp/443", "tcp/444")),
    (DISJOINT, "10.99.0.0/20", ("tcp/1",)),
)
"""Resource id, network and filters: a /24 inside ``web``'s /16 with another UDP port, a host route to the
web host inside both with two adjacent TCP ports, and a /20 elsewhere (no host: it is only held)."""
OUTSIDE_24 = IPv4Address("172.20.1.10")
"""Inside ``web``'s /16, outside the /24: no host lives there (an allowed packet goes nowhere)."""
CASES: tuple[tuple[IPAddress, str, int], ...] = (
    (WEB_V4, "tcp", 443),  # the host route's filter only
    (WEB_V4, "tcp", 444),
    (WEB_V4, "tcp", 445),  # nobody's
    (WEB_V4, "udp", 9),  # the /24's, inherited by the host route
    (WEB_V4, "udp", 7),  # the /16's, inherited by both
    (WEB_V4, "tcp", 80),
    (WEBDNS_V4, "udp", 9),  # the /24's
    (WEBDNS_V4, "tcp", 443),  # the host route's only: refused here
    (WEBDNS_V4, "udp", 53),  # nobody's: refused
    (OUTSIDE_24, "udp", 9),  # only the /16 holds it: refused
    (OUTSIDE_24, "udp", 7),  # allowed, no host
)


def allows(held: list[tuple[IPNetwork, tuple[str, ...]]], dst: IPAddress, proto: str, port: int) -> bool:
    """Whether the gateway lets ``proto``/``port`` to ``dst`` through for a client holding the CIDR
    resources ``held`` (network, filters): the rule of the module docstring."""
    holding = [n for n, _ in held if n.version == dst.version and dst in n]
    if not holding:
        return False
    best = max(holding, key=lambda n: n.prefixlen)
    lists = [f for n, f in held if n.version == best.version and best.subnet_of(n)]  # type: ignore[arg-type]
    if any(not f for f in lists):
        return True
    for filters in lists:
        for text in filters:
            kind, _, ports = text.partition("/")
            if kind == proto == "icmp":
                return True
            lo, _, hi = ports.partition("-")
            if kind == proto and int(lo) <= port <= int(hi or lo):
                return True
    return False


class NestedEdges:
    """See the module docstring."""

    def __init__(self, scene: Scene, invariants: Invariants, traffic: Traffic) -> None:
        self.s = scene
        self.inv = invariants
        self.traffic = traffic

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.NESTED_EDGE: self._do_nested_edge}

    def _do_nested_edge(self, step: Step, c: int) -> None:
        s = self.s
        m = s.model
        now = s.world.now
        if (
            not m.live(c, "web", now)
            or m.live(c, "inet", now)
            or m.web_network() != ip_network(CIDR_ADDRESS)
            or m.filters != CIDR_FILTERS
        ):
            s.coverage["nested_edge_skipped"] += 1
            return
        held: list[tuple[IPNetwork, tuple[str, ...]]] = [(ip_network(CIDR_ADDRESS), CIDR_FILTERS)]
        self._add_to_portal(c)
        for rid, net, filters in NESTED:
            res = s.gw.grant(c, rid)
            if not res.get("ok"):
                raise InvariantError(f"the portal refused the grant of {net} to client-{c}: {res}")
            held.append((ip_network(net), filters))
        s.world.run_for(CONTROL_SETTLE)
        self._probe_all(c, held)
        s.gw.signalling.revoke(s.gw.client_ids[c], HOST)
        s.world.drive(s.gw.client_hosts[c], _remove_route(s.client(c), HOST))
        s.world.run_for(CONTROL_SETTLE)
        self._probe_all(c, [h for h in held if h[0] != IPv4Network(f"{WEB_V4}/32")])
        for rid, _, _ in NESTED:
            if rid != HOST:
                s.gw.signalling.revoke(s.gw.client_ids[c], rid)
                s.world.drive(s.gw.client_hosts[c], _remove_route(s.client(c), rid))
        s.world.run_for(CONTROL_SETTLE)
        self._probe_all(c, held[:1])
        s.coverage["event:nested_edge"] += 1

    def _probe_all(self, c: int, held: list[tuple[IPNetwork, tuple[str, ...]]]) -> None:
        s = self.s
        m = s.model
        for dst, proto, port in CASES:
            if allows(held, dst, proto, port):
                host = m.host_of(dst)
                a = m._answer(host, proto, port)
                pred = Prediction.exact(a.outcome, a.arrivals)
            else:
                host = m.host_of(dst)
                pred = Prediction.exact(Outcome.PROHIBITED, 0)
            name = None if host is None else host.name
            self.traffic.run(Probe(c, proto, dst, port, pred.lossy() if m.lossy else pred, name))
            # What reached a host passed under the resources held now (the model knows only ``web``).
            self.inv.security(lambda who, d, pr, po, at: who == c and allows(held, d, pr, po))
            s.coverage["event:nested_probe"] += 1

    def _add_to_portal(self, c: int) -> None:
        """The resources of :data:`NESTED` and a policy for client ``c`` each (once)."""
        cid = self.s.gw.client_ids[c]

        def add(p: DevPortal) -> None:
            cfg = p.config
            have = {r.id for r in cfg.resources}
            new = tuple(
                CidrResource(rid, ip_network(net), f"nested-{net}", tuple(_filter(f) for f in filters))
                for rid, net, filters in NESTED
                if rid not in have
            )
            pols = tuple(PolicyConfig(cid, rid, None) for rid, _, _ in NESTED if cfg.policy(cid, rid) is None)
            p.config = replace(cfg, resources=cfg.resources + new, policies=cfg.policies + pols)

        self.s.gw.signalling.act(add)


def _remove_route(client: DevClient, rid: uuid.UUID) -> Callable[[Instant], None]:
    def remove(now: Instant) -> None:
        client.remove_resource(rid)

    return remove


def nested_program() -> Program:
    """One client holding the CIDR resource; the nested resources come and go twice."""
    return Program(
        WorldSpec(10, 1, 1),
        [Step(StepKind.GRANT, 0, 0), Step(StepKind.NESTED_EDGE, 0), Step(StepKind.NESTED_EDGE, 0)],
    )
