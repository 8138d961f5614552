"""Topology steps of the stateful harness: the upstream DNS server and the clients' DNS servers, direct-
path partitions, gateway and client restarts, portal outage, a revocation while the gateway is away from
the portal, relays added / removed / rebooted / rotated / hidden from the portal, roaming, idling.

Theory of operation: :class:`Topology` holds the steps that change the world's shape rather than send
traffic, and what they need to remember (the relays the portal announces, the clients' DNS servers, how
many relays, roams and restarts there were). Each step acts on the world through its public API
(:meth:`World.partition`, :meth:`GatewayWorld.restart_gateway`, :meth:`World.replace_component`,
:meth:`World.readdress`, ...), lets it settle and, where Firezone's client would, asks for the connections
that broke again (:meth:`Access.reconnect_all`); the harness then checks every invariant as after any
step. Every step can run in any state (there are no guards), so the mix of a run follows the weights.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from devpeers.client import DevClient
from devportal import Refusal
from devportal.config import RelayConfig as DevRelayConfig
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Duration, millis, secs
from sim.gateway_world import LINK, RELAY_SECRET, TURN_PORT, WEBDNS_V4, WEBDNS_V6, relay_host
from sim.hosts.connectivity import RelayComponent
from sim.stateful.access import RESOURCES, Access
from sim.stateful.program import Step, StepKind
from sim.stateful.scene import CONTROL_SETTLE, DNS_SETTLE, Handler, InvariantError, Scene

PATH_SETTLE: Duration = secs(5)
"""After a partition heals, ICE re-checks the direct path (consent checks every ~1.5 s) and moves back
to it; probes wait until the move is done (a packet in flight during the switch may be lost)."""
OUTAGE_REJOIN_BOUND: Duration = secs(120)
"""After a portal outage the gateway rejoins within its reconnect backoff (0.5 s x 1.5^n, capped at 60 s)."""
RESTART_REJOIN_BOUND: Duration = secs(10)
"""A restarted gateway joins the portal within a few round trips; 10 s leaves room for a retried connect."""
MAX_RELAYS = 3
"""Keep the relay set small: enough to lose one and fall back to another."""
ROAM_V4_BASE = IPv4Address("198.51.100.100")
ROAM_NAT_V4_BASE = IPv4Address("10.1.0.100")
ROAM_V6_BASE = IPv6Address("2001:db8:51::100")
"""A roaming client's n-th new address is this plus 256 times its index plus n (behind a NAT, a new
private address)."""


class Topology:
    """See the module docstring."""

    def __init__(self, scene: Scene, access: Access, restarted: Callable[[int], None]) -> None:
        self.s = scene
        self.access = access
        self.restarted = restarted
        """Called with a client's index after its process restarted (the invariants start it over)."""
        self.relays: dict[str, uuid.UUID] = {
            name: uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5720F00 + i)
            for i, name in enumerate(scene.gw.relay_names)
        }
        """The relays the portal currently announces (host name -> relay id)."""
        self.configs: dict[str, DevRelayConfig] = {
            name: DevRelayConfig(
                self.relays[name],
                tuple(SocketAddr(ip, TURN_PORT) for ip in scene.world.hosts[name].addresses()),
                RELAY_SECRET,
            )
            for name in scene.gw.relay_names
        }
        """What the portal knows of each relay (to announce it again)."""
        self.relay_v6 = scene.spec.stack != "v4"
        self.dns_servers: list[tuple[IPAddress, ...]] = [() for _ in range(scene.spec.clients)]
        """Each client's system DNS servers (kept across a restart of the client)."""
        self._next_relay = scene.spec.relays
        self._next_roam = 0
        self._restarts = 0

    def handlers(self) -> dict[StepKind, Handler]:
        return {
            StepKind.UPSTREAM_TOGGLE: self._do_upstream_toggle,
            StepKind.UPSTREAM_DOWN: self._do_upstream_down,
            StepKind.UPSTREAM_UP: self._do_upstream_up,
            StepKind.SET_DNS_SERVERS: self._do_set_dns_servers,
            StepKind.RESTART_GATEWAY: self._do_restart_gateway,
            StepKind.RESTART_CLIENT: self._do_restart_client,
            StepKind.PORTAL_OUTAGE: self._do_portal_outage,
            StepKind.DEAUTHORIZE_PARTITIONED: self._do_deauthorize_partitioned,
            StepKind.RELAYS_HIDDEN: self._do_relays_hidden,
            StepKind.RELAY_ADD: self._do_relay_add,
            StepKind.RELAY_REMOVE: self._do_relay_remove,
            StepKind.RELAY_REBOOT: self._do_relay_reboot,
            StepKind.RELAY_ROTATE: self._do_relay_rotate,
            StepKind.ROAM: self._do_roam,
            StepKind.PARTITION_DIRECT: self._do_partition_direct,
            StepKind.IDLE: self._do_idle,
        }

    # --- upstream DNS and paths ---------------------------------------------------------------------------

    def _do_upstream_toggle(self, step: Step, c: int) -> None:
        """The gateway's upstream DNS server becomes unreachable, or reachable again."""
        if self.s.model.upstream_ok:
            self._do_upstream_down(step, c)
        else:
            self._do_upstream_up(step, c)

    def _do_upstream_down(self, step: Step, c: int) -> None:
        self.s.model.upstream_ok = False
        self.s.world.partition(["gateway"], ["dns"])

    def _do_upstream_up(self, step: Step, c: int) -> None:
        self.s.model.upstream_ok = True
        self.s.world.heal(["gateway"], ["dns"])
        self.s.world.run_for(DNS_SETTLE)  # queries already forwarded time out (SERVFAIL) before checks

    def _do_set_dns_servers(self, step: Step, c: int) -> None:
        """The client's system DNS servers change: none of its own, or the DNS server inside the CIDR
        resource (IPv4 or IPv6), which the client then reaches through the tunnel."""
        servers = ((), (WEBDNS_V4,), (WEBDNS_V6,), (WEBDNS_V6, WEBDNS_V4))[step.a % 4]
        self.dns_servers[c] = servers
        cl = self.s.client(c)
        self.s.world.drive(self.s.gw.client_hosts[c], lambda now: cl.set_dns_servers(servers))

    def _do_partition_direct(self, step: Step, c: int) -> None:
        """The direct path between one client and the gateway breaks for a while, then heals; in a
        relay-only world the client loses every path (it is offline) for that while."""
        s = self.s
        world = s.world
        name = s.gw.client_hosts[c].name
        s.disturbed.add(c)
        # In a relay-only world the direct path stays cut (the world's own partition): cut the relays.
        others = sorted(self.relays) if s.spec.relay_only else ["gateway"]
        world.partition([name], others)
        world.run_for(secs((5, 20, 40)[step.a % 3]))
        world.heal([name], others)
        world.run_for(PATH_SETTLE)  # the agent moves back to the direct path
        self.access.reconnect_all()

    # --- gateway and portal -------------------------------------------------------------------------------

    def _do_restart_gateway(self, step: Step, c: int) -> None:
        """The gateway crashes and starts again (new key, empty state); clients reconnect."""
        gw = self.s.gw
        gw.restart_gateway()
        if not gw.start(RESTART_REJOIN_BOUND):
            raise InvariantError("the restarted gateway did not rejoin the portal within 10 s")
        # Like Firezone's client on a new connection to a gateway: its DNS-resource NAT requests for
        # that gateway start over (the restarted gateway has no NAT state to re-confirm).
        gid = gw.gateway_id()
        for i in range(self.s.spec.clients):
            self.access.forget_nat_of(i, gid)
        self.access.reconnect_all(force=True)

    def _do_portal_outage(self, step: Step, c: int) -> None:
        """The portal goes away (sockets closed, upgrades refused) for a while, then comes back."""
        s = self.s
        portal = s.gw.portal
        before = s.gw.gateway.counters.snapshot().get("portal_joined", 0)
        portal.refuse = Refusal(503, "Service Unavailable")
        s.gw.signalling.act(lambda p: p.kick())
        s.world.run_for(secs((5, 20, 45)[step.a % 3]))
        portal.refuse = None
        end = s.world.now + OUTAGE_REJOIN_BOUND
        while s.gw.gateway.counters.snapshot().get("portal_joined", 0) <= before:
            if s.world.now >= end:
                raise InvariantError("the gateway did not rejoin within 120 s after the portal came back")
            s.world.run_for(millis(100))
        s.coverage["event:reconnect_after_outage"] += 1
        s.disturbed.update(range(s.spec.clients))  # fresh relay credentials in the init (see above)
        s.world.run_for(CONTROL_SETTLE)

    def _do_deauthorize_partitioned(self, step: Step, c: int) -> None:
        """The gateway loses the portal; meanwhile the portal revokes one of the client's authorisations
        (the push goes nowhere); when the network heals the gateway rejoins and must drop what the
        ``init`` no longer lists (Firezone's ``retain_authorizations``)."""
        s = self.s
        resource = ("web", "app", "inet")[step.a % 3]
        inits: list[int] = []
        listener = lambda gw, init: inits.append(s.world.now)  # noqa: E731
        s.gw.portal.init_listeners.append(listener)
        try:
            s.world.partition(["gateway"], ["portal"])
            s.world.run_for(secs(1))
            had = s.model.current(c, resource) is not None
            s.model.revoke(s.world.now, c, resource, False)
            s.gw.signalling.revoke(s.gw.client_ids[c], RESOURCES[resource])
            # The portal drops the connection it cannot reach (a push into the partition resets it too);
            # the gateway notices and reconnects, and gets through once the network heals.
            s.gw.signalling.act(lambda p: p.kick())
            s.world.run_for(secs((2, 5, 10)[step.b % 3]))
            s.world.heal(["gateway"], ["portal"])
            end = s.world.now + OUTAGE_REJOIN_BOUND
            while not inits:
                if s.world.now >= end:
                    raise InvariantError("the gateway did not rejoin within 120 s after a partition")
                s.world.run_for(millis(10))
            s.model.told(inits[0], c, resource)
            # The init brings the relays with fresh credentials: the gateway allocates again and its
            # relayed paths break until ICE moves, so a goodbye sent meanwhile may be lost.
            s.disturbed.update(range(s.spec.clients))
            if had:
                s.coverage["event:reconciled_on_rejoin"] += 1
        finally:
            s.gw.portal.init_listeners.remove(listener)
        s.world.run_for(CONTROL_SETTLE)
        self.access.reconnect_all()

    # --- relays -------------------------------------------------------------------------------------------

    def _new_relay(self, rid: uuid.UUID, secret: str) -> DevRelayConfig:
        s = self.s
        n = self._next_relay
        self._next_relay += 1
        name = f"relay-{n}"
        host = relay_host(
            s.world, name, 10 + n, secret, s.world.clock.unix_ns() // 10**9, LINK, self.relay_v6
        )
        s.world.add_host(host)
        self.relays[name] = rid
        cfg = DevRelayConfig(rid, tuple(SocketAddr(ip, TURN_PORT) for ip in host.addresses()), secret)
        self.configs[name] = cfg
        return cfg

    def _relay_name(self, k: int) -> str:
        names = sorted(self.relays)
        return names[k % len(names)]

    def _announce(self, gone: list[uuid.UUID], new: list[DevRelayConfig]) -> None:
        if gone:  # a relayed path through a relay that went away is cut until ICE moves
            self.s.disturbed.update(range(self.s.spec.clients))
        self.s.gw.signalling.relays_presence(gone, new)
        self.s.world.run_for(CONTROL_SETTLE)
        self.access.reconnect_all()

    def _remove(self, name: str) -> uuid.UUID:
        rid = self.relays.pop(name)
        self.configs.pop(name, None)
        self.s.world.remove_host(name)
        return rid

    def _do_relay_add(self, step: Step, c: int) -> None:
        """A relay joins (with the most relays already, the oldest leaves at the same time)."""
        gone = [self._remove(sorted(self.relays)[0])] if len(self.relays) >= MAX_RELAYS else []
        rid = uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5721000 + self._next_relay)
        self._announce(gone, [self._new_relay(rid, RELAY_SECRET)])

    def _do_relay_remove(self, step: Step, c: int) -> None:
        """A relay leaves (the last one is replaced by a new relay at the same time)."""
        gone = [self._remove(self._relay_name(step.a))]
        new = []
        if not self.relays:
            rid = uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5721000 + self._next_relay)
            new.append(self._new_relay(rid, RELAY_SECRET))
        self._announce(gone, new)

    def _do_relay_reboot(self, step: Step, c: int) -> None:
        """Same relay id, new address and secret (a relay rebooted elsewhere)."""
        rid = self._remove(self._relay_name(step.a))
        self._announce([rid], [self._new_relay(rid, f"{RELAY_SECRET}-{self._next_relay}")])

    def _do_relay_rotate(self, step: Step, c: int) -> None:
        """The relay's secret changes: the portal re-announces it with new credentials."""
        name = self._relay_name(step.a)
        rid = self.relays[name]
        host = self.s.world.hosts[name]
        comp = host.component
        assert isinstance(comp, RelayComponent)
        secret = f"{RELAY_SECRET}-rot-{self.s.steps_done}"
        comp.server.secret = secret
        cfg = DevRelayConfig(rid, tuple(SocketAddr(ip, TURN_PORT) for ip in host.addresses()), secret)
        self.configs[name] = cfg
        self.s.coverage["event:relay_rotated"] += 1
        self._announce([rid], [cfg])

    def _do_relays_hidden(self, step: Step, c: int) -> None:
        """Every relay goes offline at the portal (the relays lost their portal connection, the network
        does not change) for 2-10 s, then comes back: gateway and clients lose and regain their relays."""
        s = self.s
        configs = [self.configs[n] for n in sorted(self.configs)]
        s.disturbed.update(range(s.spec.clients))
        s.gw.signalling.relays_presence([cfg.id for cfg in configs], [])
        s.world.run_for(secs((2, 5, 10)[step.a % 3]))
        s.gw.signalling.relays_presence([], configs)
        s.world.run_for(CONTROL_SETTLE)
        self.access.reconnect_all()

    # --- clients and time ---------------------------------------------------------------------------------

    def _do_roam(self, step: Step, c: int) -> None:
        """The client moves to a new address (of each family it has; behind its NAT, a new private
        one); like Firezone's client it resets its connections."""
        s = self.s
        host = s.gw.client_hosts[c]
        s.disturbed.add(c)
        self._next_roam += 1
        v4 = None
        if host.ipv4 is not None:
            v4 = (ROAM_NAT_V4_BASE if host.name in s.world.nats else ROAM_V4_BASE) + 256 * c + self._next_roam
        v6 = ROAM_V6_BASE + 256 * c + self._next_roam if host.ipv6 is not None else None
        s.world.readdress(host, ipv4=v4, ipv6=v6)
        # Like snownet's Node::reset, the client takes a new WireGuard key; the portal learns it when
        # the client's channel reconnects, so the next flows replace the gateway's side.
        self._restarts += 1
        key = s.world.entropy.fork(f"client-{c}-roam-{self._restarts}").random_bytes(32)
        cl = s.client(c)
        s.world.drive(host, lambda now: cl.reset_connections(now, key))
        cfg = s.gw.portal.config.client(s.gw.client_ids[c])
        assert cfg is not None
        s.gw.signalling.act(lambda p: p.update_client(replace(cfg, public_key=cl.public_key)))
        s.model.nat_reset(c)
        self.access.reconnect_all(force=True, only=c)

    def _do_restart_client(self, step: Step, c: int) -> None:
        """The client process restarts: a new key (the portal learns it), no connections, no routes but
        what the portal grants it again; same client id, tunnel addresses and system DNS servers."""
        s = self.s
        gw = s.gw
        self._restarts += 1
        old = gw.clients[c]
        key = s.world.entropy.fork(f"client-{c}-restart-{self._restarts}").random_bytes(32)
        new = DevClient(
            old.name,
            key,
            old.tunnel_v4,
            old.tunnel_v6,
            s.world.entropy_for(f"{old.name}-restart-{self._restarts}"),
            s.world.now,
            s.world.clock.unix_ns(),
            echo_ident=old.echo_ident,
        )
        new.set_dns_servers(self.dns_servers[c])
        cfg = gw.portal.config.client(gw.client_ids[c])
        assert cfg is not None
        gw.signalling.act(lambda p: p.update_client(replace(cfg, public_key=new.public_key)))
        s.world.replace_component(gw.client_hosts[c], new)
        gw.clients[c] = new
        s.disturbed.add(c)
        s.model.nat_reset(c)
        now = s.world.now
        s.model.routes = {(i, r) for i, r in s.model.routes if i != c or s.model.live(c, r, now)}
        self.restarted(c)
        self.access.reconnect_all(force=True, only=c)

    def _do_idle(self, step: Step, c: int) -> None:
        self.s.world.run_for(secs((150, 240, 360)[step.a % 3]))
        self.access.reconnect_all()
