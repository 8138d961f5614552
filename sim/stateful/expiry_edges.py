"""The ``expiry_edge`` step of the stateful harness: authorisation expiry at the exact tick of the sweep.

Theory of operation. The gateway removes expired authorisations in a sweep on a grid of
:data:`~sim.reference.SWEEP` (1 s, Firezone's ``EXPIRE_RESOURCES_INTERVAL`` in
``rust/connlib/tunnel/src/gateway.rs``) that starts at the gateway's first timeout, which its constructor
takes (``docs/design/policy.md``): ticks at ``created + k s``, ``k >= 1``, where ``created`` is when the
world made the current gateway (:attr:`GatewayWorld.gateway_created`). An authorisation expiring at ``E``
(whole Unix seconds) is allowed while ``expires_at > now`` (``client_on_gateway.rs``), so it is removed by
the first tick at or after ``E`` (:func:`sweep_tick`) and not before: packets pass until that tick and are
refused from it on. The drawn steps predict expiry within the model's window ``[E, E + SWEEP)``; this step
predicts the tick itself, so a sweep one interval late (or one made between ticks) fails. In the first
gateway's grid the ticks fall on whole Unix seconds (the world's epoch is one), so the tick is ``E`` itself
(the comparison at the exact nanosecond of the expiry counts); after a gateway restart the grid is shifted
and the tick lies strictly after ``E``.

A step on client ``c`` (``a`` even; ``c`` holds the CIDR resource ``web`` and the DNS resource ``app``,
which never expires, so its connection stays; not the Internet resource, which would cover the web host):

1. ``c`` is authorised for ``web`` again, now with an expiry (the portal's policy gets ``expires_in`` of
   :data:`LEAD_S` seconds): the re-authorisation replaces the expiry the gateway holds (decision 0041); a
   train of UDP probes to the web host's echo port crosses the tick that removes it, each probe predicted
   before or after the tick (:meth:`ReferenceModel.predict_across` with a one-nanosecond window: uncertain
   only when a probe's packets may pass the gateway within a link delay of the tick);
2. new authorisations with an expiry each, ``web`` again and ``inet`` :data:`LATER_S` seconds later (two
   expiries of one client, swept at two ticks): a train to the Internet host crosses ``web``'s tick (all
   answered: the sweep removes only what expired, and the client's next expiry is kept) and one crosses
   ``inet``'s own tick.

With ``a`` odd, ``c`` first sends a packet the filters refuse (counted by its policy), then its only
resource (``web``) expires, and the gateway removes ``c`` at the tick (and says goodbye), while the other
client's train to the web host crosses that tick: every probe of it is answered (removing one client leaves
the other's addresses routed). ``c`` is then authorised again at once (a new policy for the same client:
the policy's counters, which never go down, keep the removed one's).

The policy's ``expires_in`` is restored afterwards (later grants never expire, as the model assumes). The
step has weight 0 (never drawn); :func:`expiry_program` walks it (``make test``, ``make mutation``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from devportal.portal import DevPortal
from gateway_core.addr import IPAddress
from sim.gateway_world import INET_V4
from sim.reference import NS, SWEEP
from sim.stateful.access import RESOURCES, Access
from sim.stateful.invariants import Invariants
from sim.stateful.probes import Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import CONTROL_SETTLE, Handler, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

LEAD_S = 3
"""Seconds from the re-authorisation to ``web``'s expiry (the portal's hop and the train's first probes
fit before it)."""
LATER_S = 4
"""Seconds between ``web``'s and ``inet``'s expiry (the first train has settled before the second)."""
BEFORE = 1_200_000_000
"""A train starts this long (ns) before its tick..."""
AFTER = 1_300_000_000
"""...and ends this long after it: a sweep one interval late would still let the last probes through."""
ECHO = 7
REFUSED = 9
"""A UDP port the CIDR resource's filters refuse (the gateway answers ICMP prohibited and counts it)."""


def sweep_tick(created: int, expires_at: int, epoch_unix_ns: int) -> int:
    """The world time of the first tick of the sweep grid of a gateway created at ``created`` at or after
    the expiry ``expires_at`` (Unix seconds)."""
    e = expires_at * NS - epoch_unix_ns
    k = max(1, -(-(e - created) // SWEEP))
    return created + k * SWEEP


class ExpiryEdges:
    """See the module docstring."""

    def __init__(self, scene: Scene, access: Access, invariants: Invariants, traffic: Traffic) -> None:
        self.s = scene
        self.access = access
        self.inv = invariants
        self.traffic = traffic

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.EXPIRY_EDGE: self._do_expiry_edge}

    def _do_expiry_edge(self, step: Step, c: int) -> None:
        s = self.s
        if step.a % 2:
            self._removal(c)
            return
        m = s.model
        now = s.world.now
        live = [r for r in ("web", "inet", "app") if m.live(c, r, now)]
        if live != ["web", "app"] or not self.access.connected(c, s.gw.gateway_id()):
            s.coverage["expiry_edge_skipped"] += 1
            return
        # 1. The held ``web`` authorised again, now with an expiry: the re-authorisation replaces it.
        web_at = self._grant_until(c, "web", LEAD_S)
        self._across(c, self.traffic.web_target(0), web_at)
        # 2. New authorisations with an expiry each: ``web`` again and ``inet`` later. The Internet host's
        # train crosses ``web``'s tick (``inet`` stays: the sweep removes only what expired) and its own.
        web_at = self._grant_until(c, "web", LEAD_S)
        inet_at = self._grant_until(c, "inet", LEAD_S + LATER_S)
        self._across(c, INET_V4, web_at)
        self._across(c, INET_V4, inet_at)
        s.coverage["event:expiry_edge"] += 1
        s.world.run_for(CONTROL_SETTLE)

    def _grant_until(self, c: int, resource: str, seconds: int) -> int:
        """``c`` is authorised for ``resource`` (again) by a policy whose flows last ``seconds``; the
        expiry (Unix seconds) the portal gave."""
        s = self.s
        self._set_expires_in(c, resource, seconds)
        s.model.grant(s.world.now, c, resource)
        res = s.gw.grant(c, RESOURCES[resource])
        at = res.get("expires_at")
        assert isinstance(at, int), res
        s.model.update_expiry(s.world.now, c, resource, at)
        self._set_expires_in(c, resource, None)
        return at

    def _removal(self, c: int) -> None:
        """``c``'s only resource expires (the gateway removes ``c``) while the other client's train to the
        web host crosses the tick."""
        s = self.s
        m = s.model
        now = s.world.now
        o = (c + 1) % s.spec.clients
        gid = s.gw.gateway_id()
        only_web = [r for r in ("web", "inet", "app") if m.live(c, r, now)] == ["web"]
        if o == c or not only_web or not m.live(o, "web", now) or not self.access.connected(o, gid):
            s.coverage["expiry_edge_skipped"] += 1
            return
        # A refused packet counted by c's policy first: its counters must outlive it (the gateway's
        # statistics add up those of removed clients, checked after every step).
        web = self.traffic.web_target(0)
        self.traffic.run(Probe(c, "udp", web, REFUSED, m.predict_packet(c, web, "udp", REFUSED, now), "web"))
        self.inv.counters_never_go_down()  # read with the refusal counted
        at = self.access.unix_secs() + LEAD_S
        m.update_expiry(s.world.now, c, "web", at)
        s.gw.signalling.update_expiry(s.gw.client_ids[c], RESOURCES["web"], at)
        self._across(o, web, at)
        # c asks again at once: a new policy for the same client (the removed one's counters stay counted).
        self.access.grant(c, "web")
        s.lost_peer.append(c)  # the goodbye of the removal came before the new grant
        s.coverage["event:expiry_edge_removal"] += 1
        s.world.run_for(CONTROL_SETTLE)

    def _across(self, c: int, dst: IPAddress, expires_at: int) -> None:
        """A train from ``c`` to ``dst`` across the tick that removes an authorisation expiring at
        ``expires_at``: exact on each side of that tick."""
        s = self.s
        m = s.model
        tick = sweep_tick(s.gw.gateway_created, expires_at, m.epoch_unix_ns)
        e = expires_at * NS - m.epoch_unix_ns
        before = m._predict(c, dst, "udp", ECHO, e - 1)
        after = m._predict(c, dst, "udp", ECHO, e + SWEEP)
        self.traffic.train(
            c,
            dst,
            "udp",
            [ECHO],
            tick + AFTER,
            lambda sent, p: m.predict_across(sent, before, after, tick, tick + 1),
            start=tick - BEFORE,
        )

    def _set_expires_in(self, c: int, resource: str, expires_in: int | None) -> None:
        """The portal's policy for (``c``, ``resource``) grants flows for ``expires_in`` seconds (``None``:
        forever)."""
        cid, rid = self.s.gw.client_ids[c], RESOURCES[resource]

        def change(p: DevPortal) -> None:
            cfg = p.config
            policies = tuple(
                replace(x, expires_in=expires_in) if (x.client, x.resource) == (cid, rid) else x
                for x in cfg.policies
            )
            p.config = replace(cfg, policies=policies)

        self.s.gw.signalling.act(change)


def expiry_program() -> Program:
    """Two clients; client 0 holds every resource, client 1 the CIDR resource. The edge on the first
    gateway's grid (ticks on whole seconds), then after a restart (a shifted grid), then client 1's only
    resource expires while client 0 probes the web host."""
    grants = [Step(StepKind.GRANT, 0, r) for r in (0, 1)] + [Step(StepKind.GRANT, 1, 0)]
    again = [Step(StepKind.GRANT, 0, 0)]
    return Program(
        WorldSpec(9, 2, 1),
        [
            *grants,
            Step(StepKind.EXPIRY_EDGE, 0, 0),
            Step(StepKind.RESTART_GATEWAY, 0),
            *again,
            Step(StepKind.EXPIRY_EDGE, 0, 0),
            *again,
            Step(StepKind.EXPIRY_EDGE, 1, 1),
        ],
    )
