"""The gateway world at scale: N clients, each pinging the CIDR resource once a second and using the DNS
resource, for a measured stretch of simulated time.

Theory of operation: :func:`build_scale_world` builds :func:`~sim.gateway_world.build_gateway_world` with
``clients`` clients and ``relays`` relays, joins the gateway to the portal, grants every client the CIDR
resource ``web`` and the DNS resource ``**.corp.test`` and runs until every client is connected (the
*set-up*, timed apart). :func:`run_scale` then runs ``duration`` of simulated time in which each client

- pings ``web`` (172.20.0.10) once a second (:data:`PING_EVERY`); the clients' pings are spread evenly
  over the second (client ``i`` at ``i * 1 s / N``), as real clients are not synchronised;
- resolves ``app.corp.test`` (A, answered by the client with proxy IPs) and pings the first proxy IP
  every :data:`RESOLVE_EVERY` (the first time at its first ping): the proxy IP goes through the
  DNS-resource NAT of the gateway, set up by the client's ``assigned_ips``.

Each client's traffic is one self-rescheduling world action (not one queued action per ping), so the
event queue holds O(N) entries whatever the duration. The result (:class:`ScaleResult`) counts the echo
replies and gives simulated seconds per real second of the measured stretch; :func:`scale_summary`
prints it. ``firezone-sim run --scenario gateway --clients N --duration S`` runs this, and
``bench/bench_sim_speed.py`` measures it (the standard scenario is 10 clients, 2 relays, 10 minutes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from devpeers.client import DevClient
from devpeers.client_types import EchoReply
from gateway_core.clock import Duration, Instant, millis, secs
from sim.gateway_world import (
    APP_V4,
    CIDR_RESOURCE,
    DNS_RESOURCE,
    WEB_V4,
    GatewayWorld,
    build_gateway_world,
)
from sim.world import World

PING_EVERY: Duration = secs(1)
"""Each client's application traffic: one ICMP echo to the CIDR resource per second (the issue's
standard scenario)."""
RESOLVE_EVERY: Duration = secs(30)
"""Each client resolves the DNS resource's name again and pings its proxy IP this often: an application
resolving a name whose TTL ran out (a repeated query re-sends ``assigned_ips``, as Firezone's client
does), without letting the DNS part dominate the ping traffic."""
CONNECT_BUDGET: Duration = secs(60)
"""Virtual time to connect every client: a few seconds each at most, in parallel; a minute flags a stuck
one even with a thousand clients signalling through one portal."""
APP_NAME = "app.corp.test"


@dataclass(frozen=True, slots=True)
class ScaleResult:
    clients: int
    relays: int
    simulated_ns: int
    """Simulated time of the measured stretch (after every client connected)."""
    real_s: float
    """Real (wall-clock) seconds of the measured stretch."""
    cpu_s: float
    """CPU seconds of this process in the measured stretch (what a busy shared machine does not inflate)."""
    setup_real_s: float
    """Real seconds to build the world and connect every client."""
    setup_simulated_ns: int
    pings: int
    """Echo requests the clients sent to ``web`` in the measured stretch."""
    replies: int
    """Echo replies from ``web`` they received in it."""
    proxy_pings: int
    proxy_replies: int
    delivered: int
    """Packets the network delivered in the measured stretch."""

    @property
    def speed(self) -> float:
        """Simulated seconds per real second of the measured stretch."""
        return self.simulated_ns / 1e9 / self.real_s if self.real_s > 0 else float("inf")

    @property
    def cpu_speed(self) -> float:
        """Simulated seconds per CPU second of the measured stretch."""
        return self.simulated_ns / 1e9 / self.cpu_s if self.cpu_s > 0 else float("inf")


class _Traffic:
    """The measured stretch's traffic: one self-rescheduling action per client."""

    def __init__(self, gw: GatewayWorld) -> None:
        self.gw = gw
        self.seq = [0] * len(gw.clients)
        self.pings = 0
        self.proxy_pings = 0

    def start(self, until: Instant) -> None:
        world = self.gw.world
        n = len(self.gw.clients)
        for i in range(n):
            world.at(Instant(world.now + i * PING_EVERY // n), self._tick(i, until))

    def _tick(self, i: int, until: Instant) -> Callable[[], None]:
        world = self.gw.world

        def tick() -> None:
            k = self.seq[i]
            self.seq[i] = k + 1
            self.gw.drive(i, lambda c, now: self._ping(c, now, k))
            if k * PING_EVERY % RESOLVE_EVERY == 0:
                self.gw.drive(i, self._resolve_and_ping)
            nxt = world.now + PING_EVERY
            if nxt < until:
                world.at(Instant(nxt), tick)

        return tick

    def _ping(self, c: DevClient, now: Instant, k: int) -> None:
        self.pings += 1
        c.send_icmp(now, WEB_V4, (k + 1) & 0xFFFF)

    def _resolve_and_ping(self, c: DevClient, now: Instant) -> None:
        c.query_dns(now, APP_NAME, "A")
        self.proxy_pings += 1
        c.send_icmp(now, c.proxy_ips(APP_NAME)[0], (self.proxy_pings) & 0xFFFF)


class OverBudget(RuntimeError):
    """The set-up did not finish within the real-time budget (a slow simulator, not a failure of the
    world): says how far it got."""


def build_scale_world(
    seed: int,
    clients: int,
    relays: int = 2,
    world: World | None = None,
    budget_s: float | None = None,
) -> GatewayWorld:
    """The world with every client granted both resources and connected (raises if one does not within
    :data:`CONNECT_BUDGET` of simulated time, :class:`OverBudget` past ``budget_s`` real seconds)."""
    stop = None if budget_s is None else time.perf_counter() + budget_s
    gw = build_gateway_world(seed, clients=clients, relays=relays, world=world)
    if not gw.start():
        raise RuntimeError("the gateway did not join the portal")
    for i in range(clients):
        gw.grant(i, CIDR_RESOURCE)
        gw.grant(i, DNS_RESOURCE)
    end = Instant(gw.world.now + CONNECT_BUDGET)
    gid = gw.gateway_id()
    for i, c in enumerate(gw.clients):
        while not c.is_connected(gid):
            if gw.world.now >= end:
                raise RuntimeError(f"client-{i} did not connect within the budget")
            if stop is not None and time.perf_counter() > stop:
                raise OverBudget(
                    f"set-up over its {budget_s:g} s real-time budget: {i} of {clients} clients connected"
                    f" after {gw.world.now / 1e9:.2f} s simulated"
                )
            gw.world.run_for(millis(10))
    return gw


def run_scale(
    seed: int,
    clients: int,
    duration: Duration,
    relays: int = 2,
    world: World | None = None,
    budget_s: float | None = None,
) -> tuple[GatewayWorld, ScaleResult]:
    """Build (timed as set-up) and run ``duration`` of the scale scenario (timed as the measured stretch).

    With ``budget_s`` the set-up raises :class:`OverBudget` past that many real seconds, and the measured
    stretch stops at the first whole simulated second past them (the result then covers the simulated
    time actually run: ``simulated_ns < duration``)."""
    t0 = time.perf_counter()
    gw = build_scale_world(seed, clients, relays, world, budget_s)
    setup = time.perf_counter() - t0
    w = gw.world
    start = w.now
    before = _counts(gw)
    delivered0 = w.stats.snapshot().get("delivered", 0)
    traffic = _Traffic(gw)
    until = Instant(start + duration)
    traffic.start(until)
    t1, c1 = time.perf_counter(), time.process_time()
    if budget_s is None:
        w.run_until(until)
    else:
        stop = t1 + budget_s
        while w.now < until and time.perf_counter() < stop:
            w.run_until(Instant(min(until, w.now + secs(1))))
    real, cpu = time.perf_counter() - t1, time.process_time() - c1
    after = _counts(gw)
    return gw, ScaleResult(
        clients=clients,
        relays=relays,
        simulated_ns=w.now - start,
        real_s=real,
        cpu_s=cpu,
        setup_real_s=setup,
        setup_simulated_ns=int(start),
        pings=traffic.pings,
        replies=after[0] - before[0],
        proxy_pings=traffic.proxy_pings,
        proxy_replies=after[1] - before[1],
        delivered=w.stats.snapshot().get("delivered", 0) - delivered0,
    )


def _counts(gw: GatewayWorld) -> tuple[int, int]:
    """Echo replies received from ``web`` and from ``app`` (through its proxy IPs), over all clients."""
    web = app = 0
    for c in gw.clients:
        for r in c.received:
            if isinstance(r, EchoReply):
                if r.src == WEB_V4:
                    web += 1
                else:
                    app += 1
    return web, app


def scale_summary(r: ScaleResult) -> str:
    return "\n".join(
        [
            f"gateway scale scenario: {r.clients} clients, {r.relays} relays",
            f"  set-up (join, grant, connect every client): {r.setup_simulated_ns / 1e9:.2f} s simulated"
            f" in {r.setup_real_s:.2f} s real",
            f"  measured: {r.simulated_ns / 1e9:g} s simulated in {r.real_s:.2f} s real: "
            f"{r.speed:,.1f} simulated seconds per real second"
            f" ({r.cpu_speed:,.1f} per CPU second)",
            f"  pings to {WEB_V4}: {r.pings} sent, {r.replies} answered; "
            f"to {APP_NAME} ({APP_V4} behind proxy IPs): {r.proxy_pings} sent, {r.proxy_replies} answered",
            f"  packets delivered: {r.delivered:,}",
        ]
    )
