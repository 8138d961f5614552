"""Soak: many clients joining, roaming, being revoked and expiring for hours, with the memory watched.

Theory of operation: :func:`run_soak` builds the gateway world of the scale scenario
(:func:`sim.gateway_world.build_gateway_world`, ``clients`` clients, 2 relays; nobody granted yet) and
gives every client the same life, one :data:`CYCLE` long, over and over, client ``i`` starting
``i * CYCLE / N`` later than client 0 so that at any moment the clients are spread over every phase:

===========  ============================================================================================
offset       what happens to the client
===========  ============================================================================================
0            joins: the portal grants it the CIDR and the DNS resource; it pings ``web`` and the DNS
             resource's proxy IP (through the gateway's DNS-resource NAT)
CYCLE/5      roams: a new underlay address (never used before) and a new WireGuard key, as snownet's
             ``Node::reset``; the portal learns the key and grants again; it pings again
2 CYCLE/5    the portal revokes both resources: the gateway says goodbye and forgets the client
CYCLE/2      joins again, the CIDR resource with an expiry a tenth of a cycle ahead; it pings
CYCLE/2 +    the authorisation expires (the gateway's 1 s sweep removes it); the DNS resource is then
CYCLE/10     revoked, so the client is gone from the gateway until its next cycle
===========  ============================================================================================

Memory: :mod:`tracemalloc` traces allocations; after the warm-up (:data:`WARMUP`, at least one cycle:
every client has been through every phase, and every state that is bounded by time has
reached its bound) a sample is taken every cycle, counting the bytes still held that were allocated by
``gateway_core`` code (the gateway, and the clients' nodes, which are the core's ``Node``) and, apart,
by everything. Two parts of the gateway fill up slowly by design and set the warm-up: the TURN channel
bindings of its allocations (a roamed client's new address takes a new channel, which lives
``CHANNEL_LIFETIME`` = 10 min and is then quarantined ``CHANNEL_REBIND_QUARANTINE`` = 5 min,
``gateway_core/turn/channels.py``; an idle record is forgotten at the next bind after that, so the
table holds the last 15 minutes' binds and the channels in use), and the portal
channel's pushes still awaiting a reply (at most ``max_in_flight`` = 256 are remembered,
``gateway_core/portal/outbox.py``).
:class:`SoakResult` keeps the samples; a flat run is one whose
later samples stay within a bound of the first (:func:`growth_ok`). Whatever grows without bound (a
ring that is not one, a table never pruned) grows by the same amount every cycle and fails it.

The simulator's own bookkeeping that grows with the run by design (the network's stale addresses of
roamed clients, the clients' lists of received records, the portal's grant log) is excluded from the
``gateway_core`` figure by construction (allocated elsewhere), and the clients' records, the
resources' records of what they received and the portal's log (which hold objects the core's decoders
made) are cleared at every sample.
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

from gateway_core.clock import Duration, Instant, secs
from sim.gateway_world import CIDR_RESOURCE, DNS_RESOURCE, WEB_V4, GatewayWorld, build_gateway_world
from sim.world import World

CYCLE: Duration = secs(600)
"""One client's life (join, roam, revoke, join with an expiry, expire): 10 simulated minutes, so a
6-hour soak takes every client through 36 lives."""
WARMUP: Duration = secs(1200)
"""Simulated time before the first memory sample: the channel bindings' lifetime and quarantine (15 min,
module docstring) plus a margin for the portal outbox to fill."""
EXPIRES_DIVISOR = 10
"""The second join's authorisation expires a tenth of a cycle after it (60 s of the default cycle)."""
ROAM_V4_BASE = IPv4Address("10.128.0.0")
"""Roamed clients take fresh addresses counting up from here (an address left behind is never reused:
``sim.net``'s stale addresses)."""
GATEWAY_CORE = "*/gateway_core/*"


@dataclass(slots=True)
class SoakResult:
    clients: int
    simulated_ns: int = 0
    samples: list[tuple[int, int, int]] = field(default_factory=list)
    """``(simulated ns, bytes held that gateway_core allocated, bytes held in all)`` at the end of the
    warm-up and after each cycle past it."""
    joins: int = 0
    roams: int = 0
    revokes: int = 0
    expiries: int = 0
    replies: int = 0
    """Echo replies the clients received (from ``web`` and through the proxy IPs)."""

    def core_growth(self) -> int:
        """Bytes (allocated by gateway_core) held at the last sample beyond the first."""
        return self.samples[-1][1] - self.samples[0][1] if len(self.samples) > 1 else 0


def growth_ok(result: SoakResult, per_client: int, relative: float, fixed: int = 0) -> bool:
    """Flat: no later sample holds more than the first plus ``relative`` of it, plus ``per_client``
    bytes per client (the noise of where each client is in its life at the sample), plus ``fixed``
    bytes (state that is bounded by a count and still filling, e.g. the portal outbox's 256)."""
    if len(result.samples) < 2:
        return False
    first = result.samples[0][1]
    bound = first + int(first * relative) + per_client * result.clients + fixed
    return all(core <= bound for _, core, _ in result.samples[1:])


class _Lives:
    """Every client's cycle as self-rescheduling world actions (see the module docstring)."""

    def __init__(self, gw: GatewayWorld, result: SoakResult, until: Instant, cycle: Duration) -> None:
        self.gw = gw
        self.cycle = cycle
        self.expires_after = cycle // EXPIRES_DIVISOR // 1_000_000_000
        self.result = result
        self.until = until
        self.roams = 0
        self.seq = 0

    def start(self) -> None:
        w = self.gw.world
        n = len(self.gw.clients)
        for i in range(n):
            self._at(w.now + i * self.cycle // n, i)

    def _at(self, t: int, i: int) -> None:
        if t >= self.until:
            return
        w = self.gw.world
        cycle = self.cycle
        w.at(Instant(t), lambda: self._join(i, expiring=False))
        w.at(Instant(t + cycle // 5), lambda: self._roam(i))
        w.at(Instant(t + 2 * cycle // 5), lambda: self._revoke(i, CIDR_RESOURCE, DNS_RESOURCE))
        w.at(Instant(t + cycle // 2), lambda: self._join(i, expiring=True))
        expired = t + cycle // 2 + secs(self.expires_after + 5)
        w.at(Instant(expired), lambda: self._revoke(i, DNS_RESOURCE))
        w.at(Instant(t + cycle - 1), lambda: self._at(t + cycle, i))

    def _join(self, i: int, expiring: bool) -> None:
        gw = self.gw
        self.result.joins += 1
        gw.grant(i, CIDR_RESOURCE)
        gw.grant(i, DNS_RESOURCE)
        if expiring:
            at = gw.world.clock.unix_ns() // 1_000_000_000 + self.expires_after
            gw.signalling.update_expiry(gw.client_ids[i], CIDR_RESOURCE, at)
            self.result.expiries += 1
        self._pings_later(i)

    def _pings_later(self, i: int) -> None:
        w = self.gw.world
        for k in range(1, 4):
            w.after(secs(3 * k), lambda: self._ping(i))

    def _ping(self, i: int) -> None:
        self.seq += 1
        seq = self.seq & 0xFFFF

        def send(c: object, now: Instant) -> None:
            from devpeers.client import DevClient

            assert isinstance(c, DevClient)
            c.send_icmp(now, WEB_V4, seq)
            if c.dns_resource_for("app.corp.test") is not None:
                c.query_dns(now, "app.corp.test", "A")
                c.send_icmp(now, c.proxy_ips("app.corp.test")[0], seq)

        self.gw.drive(i, send)

    def _roam(self, i: int) -> None:
        gw = self.gw
        w = gw.world
        self.roams += 1
        self.result.roams += 1
        host = gw.client_hosts[i]
        w.readdress(host, ipv4=ROAM_V4_BASE + self.roams)
        key = w.entropy.fork(f"soak-roam-{self.roams}").random_bytes(32)
        client = gw.clients[i]
        w.drive(host, lambda now: client.reset_connections(now, key))
        cfg = gw.portal.config.client(gw.client_ids[i])
        assert cfg is not None
        gw.signalling.act(lambda p: p.update_client(replace(cfg, public_key=client.public_key)))
        gw.grant(i, CIDR_RESOURCE)
        gw.grant(i, DNS_RESOURCE)
        self._pings_later(i)

    def _revoke(self, i: int, *resources: object) -> None:
        self.result.revokes += 1
        for r in resources:
            self.gw.signalling.revoke(self.gw.client_ids[i], r, forget=True)  # type: ignore[arg-type]


def _held() -> tuple[int, int]:
    gc.collect()
    snap = tracemalloc.take_snapshot()
    core = snap.filter_traces([tracemalloc.Filter(True, GATEWAY_CORE)])
    return sum(s.size for s in core.statistics("filename")), sum(s.size for s in snap.statistics("filename"))


def run_soak(
    seed: int, clients: int, duration: Duration, cycle: Duration = CYCLE, world: World | None = None
) -> SoakResult:
    """Run the soak for ``duration`` of simulated time (the warm-up, then at least one cycle to compare
    with); samples as in the module docstring. A ``cycle`` shorter than the default (at least 100 s: the
    phases need room for ICE, the expiry and the 1 s sweep) makes a quicker soak; the warm-up is
    :data:`WARMUP` rounded up to whole cycles."""
    if cycle < secs(100):
        raise ValueError("a soak cycle needs at least 100 simulated seconds")
    warmup = -(-WARMUP // cycle) * cycle
    if duration < warmup + cycle:
        raise ValueError(f"a soak needs the warm-up ({warmup // secs(1)} s) and a cycle more")
    gw = build_gateway_world(seed, clients=clients, relays=2, world=world)
    if not gw.start():
        raise RuntimeError("the gateway did not join the portal")
    w = gw.world
    result = SoakResult(clients)
    start = w.now
    until = Instant(start + duration)
    _Lives(gw, result, until, cycle).start()
    started = tracemalloc.is_tracing()
    if not started:
        tracemalloc.start()
    try:
        w.run_until(Instant(start + warmup - cycle))
        t = start + warmup
        while t <= until:
            w.run_until(Instant(t))
            for c in gw.clients:
                result.replies += sum(1 for r in c.received if type(r).__name__ == "EchoReply")
                c.received.clear()
                c.events.clear()
            # The simulator's own records of the run (what each resource received, the portal's log):
            # they hold packets the core decoded, which would count as the core's.
            for server in (gw.web, gw.app, gw.inet):
                server.received.clear()
            gw.signalling.log.clear()
            core, total = _held()
            result.samples.append((int(w.now), core, total))
            t += cycle
    finally:
        if not started:
            tracemalloc.stop()
    result.simulated_ns = w.now - start
    return result


def soak_summary(r: SoakResult) -> str:
    lines = [
        f"soak: {r.clients} clients, {r.simulated_ns / 3.6e12:.2f} simulated hours: {r.joins} joins,"
        f" {r.roams} roams, {r.revokes} revocations, {r.expiries} expiries, {r.replies} echo replies",
        "  after each cycle (simulated s: KiB held, allocated by gateway_core / in all):",
    ]
    for t, core, total in r.samples:
        lines.append(f"    {t / 1e9:8.0f}: {core / 1024:10.1f} / {total / 1024:10.1f}")
    lines.append(f"  gateway_core growth from the first sample: {r.core_growth() / 1024:+.1f} KiB")
    return "\n".join(lines)
