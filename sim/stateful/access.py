"""Portal actions of the stateful harness (grant, revoke, expiry updates, filter changes) and the clients'
reconnection.

Theory of operation: every action updates the reference model first, then asks the portal to do the
same (:class:`~sim.client_portal.ClientSignalling`) and lets the world settle for :data:`CONTROL_SETTLE`.
:meth:`Access.reconnect_all` is what Firezone's client does when a connection failed: it asks the portal
for its live authorisations again, which makes the portal re-send the connection's setup to both ends;
the topology steps and the connection check after every step use it.
"""

from __future__ import annotations

from dataclasses import replace

from gateway_core.clock import Instant
from gateway_core.portal.model import CidrResource, Filter, FilterProtocol
from sim.gateway_world import CIDR_FILTERS, CIDR_RESOURCE, DNS_RESOURCE
from sim.stateful.program import Step, StepKind
from sim.stateful.scene import CONTROL_SETTLE, Handler, InvariantError, Scene

RESOURCES = {"web": CIDR_RESOURCE, "app": DNS_RESOURCE}
"""The model's resource names and the portal's resource ids."""
FILTER_CHOICES: tuple[tuple[str, ...], ...] = (
    CIDR_FILTERS,
    (),
    ("icmp",),
    ("tcp/80", "udp/7"),
    ("udp/1-65535",),
)
"""Filter sets the CIDR resource cycles through (the world's own, none, ICMP only, ...)."""


class Access:
    """See the module docstring."""

    def __init__(self, scene: Scene) -> None:
        self.s = scene

    def handlers(self) -> dict[StepKind, Handler]:
        return {
            StepKind.GRANT: self._do_grant,
            StepKind.REVOKE: self._do_revoke,
            StepKind.UPDATE_EXPIRY: self._do_update_expiry,
            StepKind.LET_EXPIRE: self._do_let_expire,
            StepKind.UPDATE_FILTERS: self._do_update_filters,
        }

    # --- shared with the other parts ----------------------------------------------------------------------

    def grant(self, c: int, resource: str) -> None:
        s = self.s
        s.model.grant(s.world.now, c, resource)
        if resource == "app":
            # A new flow for a DNS resource: the client sets its proxy-IP NAT up again (buffering until
            # Active) rather than trusting a gateway state that may have lapsed with the old flow.
            self.forget_nat_of(c, s.gw.gateway_id())
        res = s.gw.grant(c, RESOURCES[resource])
        if not res.get("ok"):
            raise InvariantError(f"the portal refused the grant of {resource} to client-{c}: {res}")

    def forget_nat_of(self, c: int, gid: str) -> None:
        """Client ``c`` starts its DNS-resource NAT requests towards gateway ``gid`` over."""
        cl = self.s.client(c)

        def forget(now: Instant) -> None:
            cl.forget_domain_nat(gid)

        self.s.world.drive(self.s.gw.client_hosts[c], forget)

    def reconnect_all(self, force: bool = False, only: int | None = None) -> None:
        """Every client (or client ``only``) that should have a connection and has none (or every one,
        with ``force``) asks for its live authorisations again; then the world settles."""
        s = self.s
        gid = s.gw.gateway_id()
        for c in range(s.spec.clients):
            if only is not None and c != only:
                continue
            if not s.model.has_peer(c, s.world.now):
                continue
            if force or not self.connected(c, gid):
                s.coverage["reconnects"] += 1
                for r in ("web", "app"):
                    if s.model.live(c, r, s.world.now):
                        self.grant(c, r)
        s.world.run_for(CONTROL_SETTLE)

    def connected(self, c: int, gid: str) -> bool:
        """Both ends hold a working connection (the client's view alone can be stale after a failure)."""
        conn = self.s.gw.gateway.node.connections.get(str(self.s.gw.client_ids[c]))
        return self.s.client(c).is_connected(gid) and conn is not None and conn.peer_socket is not None

    # --- steps --------------------------------------------------------------------------------------------

    def _do_grant(self, step: Step, c: int) -> None:
        self.grant(c, ("web", "app")[step.a % 2])
        self.s.world.run_for(CONTROL_SETTLE)

    def _do_revoke(self, step: Step, c: int) -> None:
        s = self.s
        resource = ("web", "app")[step.a % 2]
        forget = bool(step.b % 2)
        s.model.revoke(s.world.now, c, resource, forget)
        s.gw.signalling.revoke(s.gw.client_ids[c], RESOURCES[resource], forget=forget)
        s.world.run_for(CONTROL_SETTLE)

    def _do_update_expiry(self, step: Step, c: int) -> None:
        resource = ("web", "app")[step.a % 2]
        if self.s.model.current(c, resource) is None:
            return
        self._expire_at(c, resource, self.s.gw.portal.unix_now + (10, 60, 900)[step.b % 3])

    def _do_let_expire(self, step: Step, c: int) -> None:
        """Expire one authorisation soon and let it happen (an expiry update into the near future)."""
        resource = ("web", "app")[step.a % 2]
        if self.s.model.current(c, resource) is None:
            return
        self._expire_at(c, resource, self.s.gw.portal.unix_now + 3)

    def _expire_at(self, c: int, resource: str, at: int) -> None:
        s = self.s
        s.model.update_expiry(s.world.now, c, resource, at)
        s.gw.signalling.update_expiry(s.gw.client_ids[c], RESOURCES[resource], at)
        s.world.run_for(CONTROL_SETTLE)

    def _do_update_filters(self, step: Step, c: int) -> None:
        s = self.s
        filters = FILTER_CHOICES[step.a % len(FILTER_CHOICES)]
        s.model.set_filters(s.world.now, filters)
        res = s.gw.portal.config.resource(CIDR_RESOURCE)
        assert isinstance(res, CidrResource)
        s.gw.signalling.update_resource(replace(res, filters=tuple(_filter(f) for f in filters)))
        s.world.run_for(CONTROL_SETTLE)


def _filter(text: str) -> Filter:
    kind, _, ports = text.partition("/")
    proto = FilterProtocol(kind)
    if proto is FilterProtocol.ICMP:
        return Filter(proto)
    lo, _, hi = ports.partition("-")
    return Filter(proto, int(lo), int(hi or lo))
