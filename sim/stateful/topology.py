"""Topology steps of the stateful harness: upstream DNS and direct-path partitions, gateway restart,
portal outage, relays added / removed / rebooted / rotated, roaming, idling.

Theory of operation: :class:`Topology` holds the steps that change the world's shape rather than send
traffic, and what they need to remember (the relays the portal announces, how many relays and roams there
were). Each step acts on the world through its public API (:meth:`World.partition`,
:meth:`GatewayWorld.restart_gateway`, :meth:`World.readdress`, ...), lets it settle and, where Firezone's
client would, asks for the connections that broke again (:meth:`Access.reconnect_all`); the harness then
checks every invariant as after any step. :meth:`Topology.guards` says which of these steps make sense
in the current state (e.g. no relay removal when one is left).
"""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address

from devpeers.relay import DevRelay
from devportal import Refusal
from devportal.config import RelayConfig as DevRelayConfig
from gateway_core.addr import SocketAddr
from gateway_core.clock import Duration, millis, secs
from sim.gateway_world import LINK, RELAY_SECRET, RELAY_V4_BASE, TURN_PORT
from sim.hosts.connectivity import RelayComponent, RelayHost
from sim.stateful.access import Access
from sim.stateful.program import Step, StepKind
from sim.stateful.scene import CONTROL_SETTLE, DNS_SETTLE, Guard, Handler, InvariantError, Scene

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
"""A roaming client's n-th new address is this plus n."""


class Topology:
    """See the module docstring."""

    def __init__(self, scene: Scene, access: Access) -> None:
        self.s = scene
        self.access = access
        self.relays: dict[str, uuid.UUID] = {
            name: uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5720F00 + i)
            for i, name in enumerate(scene.gw.relay_names)
        }
        """The relays the portal currently announces (host name -> relay id)."""
        self._next_relay = scene.spec.relays
        self._next_roam = 0

    def handlers(self) -> dict[StepKind, Handler]:
        return {
            StepKind.UPSTREAM_DOWN: self._do_upstream_down,
            StepKind.UPSTREAM_UP: self._do_upstream_up,
            StepKind.RESTART_GATEWAY: self._do_restart_gateway,
            StepKind.PORTAL_OUTAGE: self._do_portal_outage,
            StepKind.RELAY_ADD: self._do_relay_add,
            StepKind.RELAY_REMOVE: self._do_relay_remove,
            StepKind.RELAY_REBOOT: self._do_relay_reboot,
            StepKind.RELAY_ROTATE: self._do_relay_rotate,
            StepKind.ROAM: self._do_roam,
            StepKind.PARTITION_DIRECT: self._do_partition_direct,
            StepKind.IDLE: self._do_idle,
        }

    def guards(self) -> dict[StepKind, Guard]:
        s = self.s
        return {
            StepKind.RELAY_REMOVE: lambda: len(self.relays) > 1,
            StepKind.RELAY_ADD: lambda: len(self.relays) < MAX_RELAYS,
            StepKind.UPSTREAM_DOWN: lambda: s.model.upstream_ok,
            StepKind.UPSTREAM_UP: lambda: not s.model.upstream_ok,
            StepKind.PARTITION_DIRECT: lambda: not s.spec.relay_only,
        }

    # --- upstream DNS and paths ---------------------------------------------------------------------------

    def _do_upstream_down(self, step: Step, c: int) -> None:
        self.s.model.upstream_ok = False
        self.s.world.partition(["gateway"], ["dns"])

    def _do_upstream_up(self, step: Step, c: int) -> None:
        self.s.model.upstream_ok = True
        self.s.world.heal(["gateway"], ["dns"])
        self.s.world.run_for(DNS_SETTLE)  # queries already forwarded time out (SERVFAIL) before checks

    def _do_partition_direct(self, step: Step, c: int) -> None:
        """The direct path between one client and the gateway breaks for a while, then heals."""
        world = self.s.world
        name = self.s.gw.client_hosts[c].name
        world.partition([name], ["gateway"])
        world.run_for(secs((5, 20, 40)[step.a % 3]))
        world.heal([name], ["gateway"])
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
        s.world.run_for(CONTROL_SETTLE)

    # --- relays -------------------------------------------------------------------------------------------

    def _new_relay(self, rid: uuid.UUID, secret: str) -> DevRelayConfig:
        s = self.s
        n = self._next_relay
        self._next_relay += 1
        ip = RELAY_V4_BASE + 10 + n
        server = DevRelay(
            [SocketAddr(ip, TURN_PORT)],
            [SocketAddr(ip, 0)],
            secret,
            s.world.entropy_for(f"relay-{n}"),
            wall_clock_secs=s.gw.portal.unix_now,
        )
        name = f"relay-{n}"
        s.world.add_host(RelayHost(name, RelayComponent(server), ipv4=ip, udp_ports=(TURN_PORT,), link=LINK))
        self.relays[name] = rid
        return DevRelayConfig(rid, (SocketAddr(ip, TURN_PORT),), secret)

    def _relay_name(self, k: int) -> str:
        names = sorted(self.relays)
        return names[k % len(names)]

    def _announce(self, gone: list[uuid.UUID], new: list[DevRelayConfig]) -> None:
        self.s.gw.signalling.relays_presence(gone, new)
        self.s.world.run_for(CONTROL_SETTLE)
        self.access.reconnect_all()

    def _do_relay_add(self, step: Step, c: int) -> None:
        rid = uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5721000 + self._next_relay)
        self._announce([], [self._new_relay(rid, RELAY_SECRET)])

    def _do_relay_remove(self, step: Step, c: int) -> None:
        name = self._relay_name(step.a)
        rid = self.relays.pop(name)
        self.s.world.remove_host(name)
        self._announce([rid], [])

    def _do_relay_reboot(self, step: Step, c: int) -> None:
        """Same relay id, new address and secret (a relay rebooted elsewhere)."""
        name = self._relay_name(step.a)
        rid = self.relays.pop(name)
        self.s.world.remove_host(name)
        self._announce([rid], [self._new_relay(rid, f"{RELAY_SECRET}-{self._next_relay}")])

    def _do_relay_rotate(self, step: Step, c: int) -> None:
        """The relay's secret changes: the portal re-announces it with new credentials."""
        name = self._relay_name(step.a)
        rid = self.relays[name]
        host = self.s.world.hosts[name]
        comp = host.component
        assert isinstance(comp, RelayComponent) and host.ipv4 is not None
        secret = f"{RELAY_SECRET}-rot-{self.s.steps_done}"
        comp.server.secret = secret
        self._announce([rid], [DevRelayConfig(rid, (SocketAddr(host.ipv4, TURN_PORT),), secret)])

    # --- clients and time ---------------------------------------------------------------------------------

    def _do_roam(self, step: Step, c: int) -> None:
        """The client moves to a new address; like Firezone's client it resets its connections."""
        s = self.s
        host = s.gw.client_hosts[c]
        self._next_roam += 1
        s.world.readdress(host, ipv4=ROAM_V4_BASE + self._next_roam)
        s.world.drive(host, s.client(c).reset_connections)
        self.access.reconnect_all(force=True, only=c)

    def _do_idle(self, step: Step, c: int) -> None:
        self.s.world.run_for(secs((150, 240, 360)[step.a % 3]))
        self.access.reconnect_all()
