"""The stateful harness: one gateway world, a reference model, the steps that act on them, the checks.

Theory of operation
-------------------
A :class:`Harness` builds the world of a :class:`~sim.stateful.program.WorldSpec` (a
:class:`~sim.gateway_world.GatewayWorld`: portal, relays, the gateway, 1-3 clients with their underlay
families, links and NATs, the hosts behind the gateway, upstream DNS) and a
:class:`~sim.reference.ReferenceModel` that knows the world's delay bounds (:func:`bounds_of`), shared with
its parts through a :class:`~sim.stateful.scene.Scene`:

- :class:`~sim.stateful.traffic.Traffic`: probes, DNS queries and trains of probes, checked exactly
  against the model (:mod:`sim.stateful.probes`);
- :class:`~sim.stateful.access.Access`: grants, revocations, expiries, filters, addresses, sites,
  reconnection;
- :class:`~sim.stateful.topology.Topology`: partitions, restarts, portal outage and partition, relays,
  roaming, DNS servers;
- :class:`~sim.stateful.invariants.Invariants`: the checks after every step.

Each part contributes a handler per :class:`~sim.stateful.program.StepKind` it owns; the harness merges
them into one table (every kind has exactly one handler, checked at construction). Every kind can run in
any state (:meth:`Harness.enabled` offers them all), so a run's mix follows the weights.

:meth:`Harness.apply` runs one step: it first lets time pass until no authorisation expiry is close enough
to make a probe uncertain (:meth:`ReferenceModel.quiet`), traces the step, runs its handler (which updates
the model first, as Firezone's ``tunnel_test`` does, then acts on the world and runs it for the step's
settle time), leaves uncertainty again and checks the invariants on everything that happened
(:meth:`Invariants.after_step`). The driving contract is checked by the world itself on every call (a
breach raises). A failed check raises :class:`~sim.stateful.scene.InvariantError` naming the step and what
differed. Step kinds and key events (``KEY_EVENTS``) are counted in :attr:`Harness.coverage`.
"""

from __future__ import annotations

from collections import Counter

from gateway_core.clock import Instant, millis, secs
from sim.gateway_world import (
    APP_V4,
    APP_V6,
    CIDR_ADDRESS,
    CIDR_FILTERS,
    DNS_PATTERN,
    INET_V4,
    LINK,
    WEB_V4,
    WEB_V6,
    WEBDNS_V4,
    WEBDNS_V6,
    ZONE_EXTENDED,
    GatewayWorld,
    build_gateway_world,
)
from sim.net import LinkProfile
from sim.pcap import PcapWriter
from sim.reference import SWEEP, Bounds, HostSpec, ReferenceModel, ResourceSpec
from sim.stateful.access import Access
from sim.stateful.edges import Edges
from sim.stateful.expiry_edges import ExpiryEdges
from sim.stateful.flow_edges import FlowEdges
from sim.stateful.flowlog_edges import FlowLogEdges
from sim.stateful.invariants import ErrorLog, Invariants
from sim.stateful.nat_edges import NatEdges
from sim.stateful.nested_edges import NestedEdges
from sim.stateful.probes import PROBE_SETTLE
from sim.stateful.program import WEIGHTS, Step, StepKind, WorldSpec
from sim.stateful.scene import Handler, InvariantError, Scene
from sim.stateful.topology import Topology
from sim.stateful.traffic import Traffic
from sim.trace import Trace
from sim.world import World

LOSS_PPM = 10_000
"""Lossy worlds lose 1 % of the packets on every client's access link (each way)."""


def client_link(spec: WorldSpec) -> LinkProfile:
    """The clients' access link: :data:`~sim.gateway_world.LINK`, or 20-60 ms with 40 ms of jitter
    (packets overtake each other), plus loss in lossy worlds."""
    if spec.net == "plain":
        return LINK
    latency = millis(20 + 10 * (spec.seed % 5))
    return LinkProfile(latency=latency, jitter=millis(40), loss_ppm=LOSS_PPM if spec.net == "lossy" else 0)


def bounds_of(gw: GatewayWorld, relay_only: bool) -> Bounds:
    """One-way delay bounds from the world's link profiles (relays added later have the same link)."""
    net = gw.world.network

    def span(a: str, b: str) -> tuple[int, int]:
        p = net.path(a, b)
        return p.latency, p.latency + p.jitter

    relay = gw.relay_names[0]
    cg_lo: list[int] = []
    cg_hi: list[int] = []
    for h in gw.client_hosts:
        d_lo, d_hi = span(h.name, "gateway")
        r1_lo, r1_hi = span(h.name, relay)
        r2_lo, r2_hi = span(relay, "gateway")
        cg_lo.append(r1_lo + r2_lo if relay_only else min(d_lo, r1_lo + r2_lo))
        cg_hi.append(max(d_hi, r1_hi + r2_hi))
    gr = [span("gateway", n) for n in ("web", "app", "inet", "webdns")]
    pg = span("portal", "gateway")
    return Bounds(min(cg_lo), max(cg_hi), min(g[0] for g in gr), max(g[1] for g in gr), pg[0], pg[1])


class Harness:
    """See the module docstring."""

    def __init__(
        self, spec: WorldSpec, *, trace: Trace | None = None, pcap: PcapWriter | None = None
    ) -> None:
        world = World(spec.seed, trace=trace, pcap=pcap)
        gw = build_gateway_world(
            spec.seed,
            clients=spec.clients,
            relays=spec.relays,
            relay_only=spec.relay_only,
            world=world,
            client_link=client_link(spec),
            client_stack=spec.stack,
            relay_v6=spec.stack != "v4",
            extended=True,
            nat=spec.nat if spec.stack != "v6" else "none",
        )
        self.log = ErrorLog()
        self.log.install()
        specs = {
            "web": ResourceSpec("web", "cidr", CIDR_ADDRESS),
            "app": ResourceSpec("app", "dns", DNS_PATTERN),
            "inet": ResourceSpec("inet", "internet", ""),
        }
        hosts = {
            "web": HostSpec("web", (WEB_V4, WEB_V6), open_udp=(7,), open_tcp=(80,)),
            "webdns": HostSpec("webdns", (WEBDNS_V4, WEBDNS_V6), open_udp=(53,)),
            "app": HostSpec("app", (APP_V4, APP_V6), open_udp=(7,), open_tcp=(80, 443)),
            "inet": HostSpec("inet", (INET_V4,), open_udp=(7,), open_tcp=(80, 443)),
        }
        model = ReferenceModel(
            spec.clients,
            specs,
            hosts,
            ZONE_EXTENDED,
            world.clock.epoch_unix_ns,
            bounds_of(gw, spec.relay_only),
            CIDR_FILTERS,
            lossy=spec.net == "lossy",
        )
        self.scene = Scene(spec, world, gw, model)
        self.access = Access(self.scene)
        self.invariants = Invariants(self.scene, self.access, self.log)
        self.traffic = Traffic(self.scene, self.invariants)
        self.access.traffic = self.traffic
        self.topology = Topology(self.scene, self.access, self.invariants.restarted)
        self.edges = Edges(self.scene, self.invariants, self.traffic)
        self.flow_edges = FlowEdges(self.scene, self.traffic)
        self.nat_edges = NatEdges(self.scene, self.invariants, self.traffic)
        self.expiry_edges = ExpiryEdges(self.scene, self.access, self.invariants, self.traffic)
        self.nested_edges = NestedEdges(self.scene, self.invariants, self.traffic)
        self.flowlog_edges = FlowLogEdges(self.scene, self.access, self.traffic)
        self.handlers: dict[StepKind, Handler] = {}
        for part in (
            self.traffic.handlers(),
            self.access.handlers(),
            self.topology.handlers(),
            self.edges.handlers(),
            self.flow_edges.handlers(),
            self.nat_edges.handlers(),
            self.expiry_edges.handlers(),
            self.nested_edges.handlers(),
            self.flowlog_edges.handlers(),
        ):
            for kind, handler in part.items():
                if kind in self.handlers:
                    raise AssertionError(f"two handlers for the step kind {kind}")
                self.handlers[kind] = handler
        missing = [k for k in StepKind if k not in self.handlers]
        if missing:
            raise AssertionError(f"no handler for the step kinds {missing}")
        self.closed = False
        if not gw.start():
            self.close()
            raise InvariantError("the gateway did not join the portal within 5 s")

    @property
    def spec(self) -> WorldSpec:
        return self.scene.spec

    @property
    def world(self) -> World:
        return self.scene.world

    @property
    def gw(self) -> GatewayWorld:
        return self.scene.gw

    @property
    def model(self) -> ReferenceModel:
        return self.scene.model

    @property
    def coverage(self) -> Counter[str]:
        return self.scene.coverage

    @property
    def steps_done(self) -> int:
        return self.scene.steps_done

    @property
    def checks(self) -> int:
        """How many times the invariants were checked (once per step)."""
        return self.invariants.count

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.log.uninstall()

    # --- what may happen next (drawn from the model only) -----------------------------------------------

    def enabled(self) -> list[tuple[StepKind, int]]:
        """The step kinds that can be drawn, with their weights (in the order of :data:`WEIGHTS`): every
        kind with a weight, whatever the state (each handler does something meaningful in any state)."""
        return [(kind, w) for kind, w in WEIGHTS.items() if w]

    # --- running one step -----------------------------------------------------------------------------

    def apply(self, step: Step) -> None:
        handler = self.handlers.get(step.kind)
        if handler is None:
            raise ValueError(f"unknown transition {step.kind!r}")
        scene = self.scene
        scene.steps_done += 1
        scene.coverage[f"transition:{step.kind}"] += 1
        scene.disturbed.clear()
        scene.lost_peer.clear()
        self._leave_uncertainty()
        scene.world.trace.emit({"t": int(scene.world.now), "ev": "action", "what": f"step {step}"})
        handler(step, step.client % scene.spec.clients)
        self._leave_uncertainty()
        self.invariants.after_step(step)

    def _leave_uncertainty(self) -> None:
        """Let time pass until no expiry is close enough to make a probe's outcome uncertain."""
        world, model = self.scene.world, self.scene.model
        horizon = PROBE_SETTLE + secs(6)  # a probe, or a DNS query waiting for the 5 s upstream timeout
        while not model.quiet(world.now, horizon):
            nxt = model.next_expiry(world.now)
            target = world.now + secs(1) if nxt is None else nxt + SWEEP + model.bounds.gr_max + millis(1)
            world.run_until(Instant(max(target, world.now + millis(1))))

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
