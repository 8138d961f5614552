"""Portal actions of the stateful harness (grants, revocations, expiries, filters, the CIDR resource's
address, sites, a revocation the gateway misses) and the clients' reconnection.

Theory of operation: every action updates the reference model first, then asks the portal to do the
same (:class:`~sim.client_portal.ClientSignalling`) and lets the world settle for :data:`CONTROL_SETTLE`.
A revocation, an expiry and a filter change are made with traffic in flight: a train of probes
(:meth:`Traffic.train`) runs across the moment the gateway learns of the change, each probe predicted
exactly where it is certain and as the alternatives of before / after where the gateway's timing (the
portal hop, the 1 s expiry sweep) leaves it open. :meth:`Access.reconnect_all` is what Firezone's client
does when a connection failed: it asks the portal for its live authorisations again, which makes the
portal re-send the connection's setup to both ends; the topology steps and the connection check after
every step use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from ipaddress import ip_network
from typing import TYPE_CHECKING

from devpeers.client import DevClient
from devpeers.client_types import ClientResource
from gateway_core.clock import Instant, millis
from gateway_core.ice.agent import IceAgent
from gateway_core.node.connection import PeerSocket
from gateway_core.portal.model import CidrResource, Filter, FilterProtocol
from sim.client_portal import SIGNAL_DELAY
from sim.gateway_world import CIDR_FILTERS, CIDR_RESOURCE, DNS_RESOURCE, INTERNET_RESOURCE
from sim.reference import NS, SWEEP
from sim.stateful.program import Step, StepKind, mix64
from sim.stateful.scene import CONTROL_SETTLE, Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

RESOURCES = {"web": CIDR_RESOURCE, "app": DNS_RESOURCE, "inet": INTERNET_RESOURCE}
"""The model's resource names and the portal's resource ids."""
NAMES = ("web", "app", "inet")
INTERESTING_PORTS = (1, 7, 9, 22, 53, 79, 80, 81, 443, 1000, 5000, 5010, 8080, 65535)
"""Range starts for random filters: ports some host answers on and their neighbours, and the extremes."""
SPANS = (0, 0, 1, 2, 10, 100, 1000)
"""Range widths for random filters (0: a single port)."""
CIDR_ADDRESSES = (
    "172.20.0.0/16",
    "172.20.0.0/24",
    "172.20.0.8/29",
    "172.20.0.48/28",
    "172.21.0.0/16",
    "2001:db8:30::/64",
)
"""Addresses the CIDR resource moves between: around the web host (172.20.0.10), around the DNS server
inside it (172.20.0.53), neither, and the IPv6 network of both."""
CHANGE_LEAD = millis(300)
"""A train starts this long before the change it crosses."""


def random_filters(a: int, b: int) -> tuple[str, ...]:
    """A filter set drawn from the step's arguments: empty (permit all) one time in eight, else one to
    three filters of any protocol, single ports and ranges, overlapping or not."""
    x = mix64(a * 64 + b + 0x5EED)
    if x % 8 == 0:
        return ()
    out: list[str] = []
    for i in range(1 + (x >> 3) % 3):
        y = mix64(x + i)
        proto = ("tcp", "udp", "icmp")[y % 3]
        if proto == "icmp":
            f = "icmp"
        else:
            lo = INTERESTING_PORTS[(y >> 2) % len(INTERESTING_PORTS)]
            hi = min(65535, lo + SPANS[(y >> 8) % len(SPANS)])
            f = f"{proto}/{lo}" if hi == lo else f"{proto}/{lo}-{hi}"
        if f not in out:
            out.append(f)
    return tuple(out)


class Access:
    """See the module docstring."""

    def __init__(self, scene: Scene) -> None:
        self.s = scene
        self.traffic: Traffic | None = None
        """Set by the harness once the traffic part exists (trains of probes)."""

    def handlers(self) -> dict[StepKind, Handler]:
        return {
            StepKind.GRANT: self._do_grant,
            StepKind.REVOKE: self._do_revoke,
            StepKind.UPDATE_EXPIRY: self._do_update_expiry,
            StepKind.LET_EXPIRE: self._do_let_expire,
            StepKind.UPDATE_FILTERS: self._do_update_filters,
            StepKind.CHANGE_CIDR_ADDRESS: self._do_change_cidr_address,
            StepKind.MOVE_SITE: self._do_move_site,
        }

    # --- shared with the other parts ----------------------------------------------------------------------

    def grant(self, c: int, resource: str) -> None:
        s = self.s
        if resource in s.model.moved:
            res = s.gw.grant(c, RESOURCES[resource])
            if res.get("ok"):
                raise InvariantError(f"the portal granted {resource}, which is at a site without gateway")
            return
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
        self.s.model.nat_reset(c)

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
                for r in NAMES:
                    if s.model.live(c, r, s.world.now):
                        self.grant(c, r)
        s.world.run_for(CONTROL_SETTLE)

    def connected(self, c: int, gid: str) -> bool:
        """Both ends hold a working connection *and share a WireGuard session*.

        The client's view alone can be stale after a failure: a gateway that gave its side of the
        connection up (a WireGuard handshake over a dead path expires after 15 s) makes a fresh one when
        the portal re-sends the flow, while the client reuses its own and keeps sending on a session the
        gateway no longer has, until its handshake in progress is retransmitted (up to 5 s later), as
        Firezone's client would (``upsert_connection`` in ``rust/connlib/snownet/src/node.rs`` does not
        start a handshake while one is in progress). Data flows only once each side knows the session
        the other sends on.

        Each side must also still send on a pair its ICE agent holds nominated
        (:func:`on_nominated_pair`): a connection keeps its last path after the agent dropped that pair
        (the relay allocation under it was freed, or the peer invalidated the candidate), as snownet's
        does (``ConnectionState`` in ``rust/connlib/snownet/src/node.rs`` changes its ``peer_socket``
        only on a nomination); until the controlling client nominates again, what either side sends
        there is lost. The harness then asks again as for a failed connection; Firezone's client, whose
        connection has not failed, would recover only at its agent's next check (idle timings: 25 s
        apart) or when traffic wakes the connection, losing what was sent meanwhile."""
        gw_conn = self.s.gw.gateway.node.connections.get(str(self.s.gw.client_ids[c]))
        cl = self.s.client(c)
        cl_conn = cl.node.connections.get(gid)
        if not cl.is_connected(gid) or gw_conn is None or cl_conn is None:
            return False
        if not (
            on_nominated_pair(cl_conn.peer_socket, cl_conn.agent)
            and on_nominated_pair(gw_conn.peer_socket, gw_conn.agent)
        ):
            return False
        return sessions_agree(cl_conn.tunnel, gw_conn.tunnel)

    def unix_secs(self) -> int:
        """The wall clock now, in whole Unix seconds (expiries are whole seconds)."""
        return self.s.world.clock.unix_ns() // NS

    def ready_for_train(self, c: int, span: int) -> bool:
        """A train of ``span`` can be predicted: the client is connected and no other expiry is near."""
        s = self.s
        return self.connected(c, s.gw.gateway_id()) and s.model.quiet(s.world.now, span)

    # --- steps --------------------------------------------------------------------------------------------

    def _do_grant(self, step: Step, c: int) -> None:
        resource = NAMES[step.a % 3]
        if resource != "web" or self.traffic is None or resource in self.s.model.moved:
            self.grant(c, resource)
            # The model routes the resource from now on; the client learns of it one portal hop later.
            self.s.world.run_for(SIGNAL_DELAY)
            return
        from sim.stateful.first_packet import grant_with_first_packet

        grant_with_first_packet(self.s, self.traffic, c, lambda: self.grant(c, resource))
        self.s.world.run_for(CONTROL_SETTLE)

    def _do_revoke(self, step: Step, c: int) -> None:
        """``reject_access``; while the client keeps the route, with traffic in flight across it."""
        s = self.s
        resource = NAMES[step.a % 3]
        forget = bool(step.b % 2)
        t = self.traffic
        assert t is not None
        at = Instant(s.world.now + CHANGE_LEAD)
        b = s.model.bounds
        end = at + b.pg_max + b.round_trip_max + CHANGE_LEAD
        live = s.model.live(c, resource, s.world.now)
        if forget or not live or not self.ready_for_train(c, end - s.world.now + t.settle):
            s.model.revoke(s.world.now, c, resource, forget)
            s.gw.signalling.revoke(s.gw.client_ids[c], RESOURCES[resource], forget=forget)
            s.world.run_for(CONTROL_SETTLE)
            return
        dst, proto, ports = t.train_target(c, resource, step.b)
        before = {p: s.model._predict(c, dst, proto, p, s.world.now) for p in ports}
        s.model.revoke(at, c, resource, False)
        after = {p: s.model._predict(c, dst, proto, p, at) for p in ports}
        bye = not s.model.has_peer(c, at)  # the last one: the gateway says goodbye as it learns of it

        def act() -> None:
            s.gw.signalling.revoke(s.gw.client_ids[c], RESOURCES[resource], forget=False)

        lo, hi = at + b.pg_min, at + b.pg_max + 1
        s.world.at(at, act)
        t.train(
            c,
            dst,
            proto,
            ports,
            end,
            lambda sent, p: s.model.predict_across(sent, before[p], after[p], lo, hi, bye),
        )
        s.coverage["event:revoke_in_flight"] += 1
        s.world.run_for(CONTROL_SETTLE)

    def _do_update_expiry(self, step: Step, c: int) -> None:
        resource = NAMES[step.a % 3]
        if self.s.model.current(c, resource) is None:
            return
        self._expire_at(c, resource, self.unix_secs() + (10, 60, 900)[step.b % 3])

    def _do_let_expire(self, step: Step, c: int) -> None:
        """Expire one authorisation in 2-3 s and send a train of probes across the expiry and the sweep."""
        s = self.s
        resource = NAMES[step.a % 3]
        if s.model.current(c, resource) is None:
            return
        t = self.traffic
        assert t is not None
        at = self.unix_secs() + 3
        e_world = at * NS - s.model.epoch_unix_ns
        b = s.model.bounds
        end = Instant(e_world + SWEEP + b.cg_max + CHANGE_LEAD)
        if not s.model.live(c, resource, s.world.now) or not self.ready_for_train(
            c, end - s.world.now + t.settle
        ):
            self._expire_at(c, resource, at)
            return
        dst, proto, ports = t.train_target(c, resource, step.b)
        s.model.update_expiry(s.world.now, c, resource, at)
        s.gw.signalling.update_expiry(s.gw.client_ids[c], RESOURCES[resource], at)
        before = {p: s.model._predict(c, dst, proto, p, e_world - 1) for p in ports}
        after = {p: s.model._predict(c, dst, proto, p, e_world + SWEEP) for p in ports}
        bye = not s.model.has_peer(c, e_world + SWEEP)  # the last one: the sweep says goodbye
        lo, hi = e_world, e_world + SWEEP
        t.train(
            c,
            dst,
            proto,
            ports,
            end,
            lambda sent, p: s.model.predict_across(sent, before[p], after[p], lo, hi, bye),
            start=Instant(s.world.now + b.pg_max + millis(50)),
        )
        s.coverage["event:expiry_in_flight"] += 1
        s.world.run_for(CONTROL_SETTLE)

    def _expire_at(self, c: int, resource: str, at: int) -> None:
        s = self.s
        s.model.update_expiry(s.world.now, c, resource, at)
        s.gw.signalling.update_expiry(s.gw.client_ids[c], RESOURCES[resource], at)
        s.world.run_for(CONTROL_SETTLE)

    def _do_update_filters(self, step: Step, c: int) -> None:
        """New filters for the CIDR resource (drawn at random), with probes to the edges of the old and
        new ranges in flight while ``resource_updated`` reaches the gateway."""
        s = self.s
        filters = CIDR_FILTERS if step.a % 16 == 0 else random_filters(step.a, step.b)
        t = self.traffic
        assert t is not None
        b = s.model.bounds
        at = Instant(s.world.now + CHANGE_LEAD)
        end = at + b.pg_max + b.round_trip_max + CHANGE_LEAD
        res = s.gw.portal.config.resource(CIDR_RESOURCE)
        assert isinstance(res, CidrResource)

        def act() -> None:
            s.gw.signalling.update_resource(replace(res, filters=tuple(_filter(f) for f in filters)))
            s.coverage["event:filter_change_in_flight"] += 1

        if not s.model.live(c, "web", s.world.now) or not self.ready_for_train(
            c, end - s.world.now + t.settle
        ):
            s.model.set_filters(s.world.now, filters)
            act()
            s.world.run_for(CONTROL_SETTLE)
            return
        dst = t.web_target(0)
        ports = t.edge_ports(s.model.filters, filters)
        before = {p: s.model._predict(c, dst, "udp", p, s.world.now) for p in ports}
        s.model.set_filters(at, filters)
        after = {p: s.model._predict(c, dst, "udp", p, at) for p in ports}
        lo, hi = at + b.pg_min, at + b.pg_max + 1
        s.world.at(at, act)
        t.train(
            c,
            dst,
            "udp",
            ports,
            end,
            lambda sent, p: s.model.predict_across(sent, before[p], after[p], lo, hi),
        )
        s.world.run_for(CONTROL_SETTLE)

    def _do_change_cidr_address(self, step: Step, c: int) -> None:
        """The CIDR resource gets another address: the portal revokes its flows (``reject_access``),
        updates it, tells the clients the new route, and the clients that held it ask again."""
        s = self.s
        current = s.model.resources["web"].address
        choices = [a for a in CIDR_ADDRESSES if a != current]
        address = choices[step.a % len(choices)]
        now = s.world.now
        holders = [i for i in range(s.spec.clients) if s.model.live(i, "web", now)]
        for i in range(s.spec.clients):
            if s.model.current(i, "web") is not None:
                peer = s.model.has_peer(i, now)
                s.model.revoke(now, i, "web", False)
                s.gw.signalling.revoke(s.gw.client_ids[i], CIDR_RESOURCE)
                if peer and not s.model.has_peer(i, now) and i in holders:
                    s.lost_peer.append(i)  # a goodbye now; the grant of the new address comes after
        res = s.gw.portal.config.resource(CIDR_RESOURCE)
        assert isinstance(res, CidrResource)
        new = replace(res, address=ip_network(address))
        s.model.set_address(now, address)
        s.gw.signalling.update_resource(new)
        gid = s.gw.gateway_id()
        for i in range(s.spec.clients):
            if (i, "web") in s.model.routes:
                s.world.drive(s.gw.client_hosts[i], _add_route(s.client(i), address, gid))
        s.world.run_for(CONTROL_SETTLE)
        for i in holders:
            self.grant(i, "web")
        s.world.run_for(CONTROL_SETTLE)

    def _do_move_site(self, step: Step, c: int) -> None:
        """A resource moves to a site without a gateway of ours (its flows are revoked, the clients stop
        routing it), or back."""
        s = self.s
        resource = ("web", "app")[step.a % 2]
        now = s.world.now
        if resource in s.model.moved:
            s.model.moved.discard(resource)
            s.gw.signalling.act(lambda p: p.move_resource(RESOURCES[resource], "default"))
            s.world.run_for(CONTROL_SETTLE)
            return
        for i in range(s.spec.clients):
            s.model.revoke(now, i, resource, True)
        s.model.moved.add(resource)
        s.gw.signalling.act(lambda p: p.move_resource(RESOURCES[resource], "elsewhere"))
        for i in range(s.spec.clients):
            s.world.drive(s.gw.client_hosts[i], _remove_route(s.client(i), RESOURCES[resource]))
        s.world.run_for(CONTROL_SETTLE)


def _add_route(client: DevClient, address: str, gid: str) -> Callable[[Instant], None]:
    def add(now: Instant) -> None:
        client.add_resource(ClientResource(CIDR_RESOURCE, "cidr", address), gid)

    return add


def _remove_route(client: DevClient, rid: uuid.UUID) -> Callable[[Instant], None]:
    def remove(now: Instant) -> None:
        client.remove_resource(rid)

    return remove


def on_nominated_pair(ps: PeerSocket | None, agent: IceAgent) -> bool:
    """A connection's path (``ps``, its ``peer_socket``) is a pair its ICE agent holds nominated now."""
    if ps is None:
        return False
    return any(
        p.nominated and (agent.local[p.local].c.base, agent.remote[p.remote].c.addr) == (ps.source, ps.dest)
        for p in agent.pairs
    )


def sessions_agree(client_tunnel: object, gateway_tunnel: object) -> bool:
    """Each side holds the session the other one sends on (both tunnels are ``WireGuardPeer`` s). The
    gateway, the responder, makes a new session current with the first packet the client sends on it
    (the client's keepalive after the handshake can be lost), so it may have none yet."""
    cs = getattr(client_tunnel, "current_session", None)
    gs = getattr(gateway_tunnel, "current_session", None)
    if cs is None:
        return False
    gw_local = {x.local_index for x in getattr(gateway_tunnel, "sessions", ()) if x is not None}
    cl_local = {x.local_index for x in getattr(client_tunnel, "sessions", ()) if x is not None}
    return bool(cs.peer_index in gw_local and (gs is None or gs.peer_index in cl_local))


def _filter(text: str) -> Filter:
    kind, _, ports = text.partition("/")
    proto = FilterProtocol(kind)
    if proto is FilterProtocol.ICMP:
        return Filter(proto)
    lo, _, hi = ports.partition("-")
    return Filter(proto, int(lo), int(hi or lo))
