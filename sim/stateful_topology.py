"""Topology transitions of the stateful harness: upstream DNS and direct-path partitions, gateway restart,
portal outage, relays added / removed / rebooted / rotated, roaming, idling.

Theory of operation: :class:`TopologyTransitions` is a mixin of :class:`sim.stateful.Harness` holding the
``_do_<kind>`` methods that change the world's shape rather than send traffic. Each one acts on the world,
lets it settle and, where Firezone's client would, re-requests the connections that broke
(``_reconnect_all``); the harness then checks every invariant as after any step.
"""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from devpeers.relay import DevRelay
from devportal import Refusal
from devportal.config import RelayConfig as DevRelayConfig
from gateway_core.addr import SocketAddr
from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.gateway import Gateway
from sim.contract import ContractChecker
from sim.gateway_world import LINK, RELAY_SECRET, RELAY_V4_BASE, TURN_PORT
from sim.hosts.connectivity import RelayComponent, RelayHost

if TYPE_CHECKING:
    from collections import Counter

    from sim.gateway_world import GatewayWorld
    from sim.reference import ReferenceModel
    from sim.stateful import Step, WorldSpec
    from sim.world import World

DNS_SETTLE: Duration = secs(6)
"""A forwarded query the upstream never answers is SERVFAIL after the gateway's 5 s timeout."""
CONTROL_SETTLE: Duration = secs(2)
"""After a portal action or a topology change: pushes, candidates and relay changes settle."""
PATH_SETTLE: Duration = secs(5)
"""After a partition heals, ICE re-checks the direct path (consent checks every ~1.5 s) and moves back
to it; probes wait until the move is done (a packet in flight during the switch may be lost)."""
OUTAGE_REJOIN_BOUND: Duration = secs(120)
"""After a portal outage the gateway rejoins within its reconnect backoff (0.5 s x 1.5^n, capped at 60 s)."""


class InvariantError(AssertionError):
    """A check of the stateful test failed (the message names the step and the difference)."""


class TopologyTransitions:
    """See the module docstring (attributes are the harness's)."""

    gw: GatewayWorld
    world: World
    model: ReferenceModel
    spec: WorldSpec
    coverage: Counter[str]
    steps_done: int
    _relays: dict[str, uuid.UUID]
    _next_relay: int
    _next_roam: int
    _restarts: int
    _joined: int

    def _reconnect_all(self, force: bool = False, only: int | None = None) -> None:
        raise NotImplementedError

    def _forget_nat_of(self, c: int, gid: str) -> None:
        raise NotImplementedError

    def _client(self, i: int) -> Any:
        raise NotImplementedError

    # --- topology -----------------------------------------------------------------------------------------

    def _do_upstream_down(self, step: Step, c: int) -> None:
        self.model.upstream_ok = False
        self.world.partition(["gateway"], ["dns"])

    def _do_upstream_up(self, step: Step, c: int) -> None:
        self.model.upstream_ok = True
        self.world.heal(["gateway"], ["dns"])
        self.world.run_for(DNS_SETTLE)  # queries already forwarded time out (SERVFAIL) before checks

    def _do_partition_direct(self, step: Step, c: int) -> None:
        """The direct path between one client and the gateway breaks for a while, then heals."""
        name = self.gw.client_hosts[c].name
        self.world.partition([name], ["gateway"])
        self.world.run_for(secs((5, 20, 40)[step.a % 3]))
        self.world.heal([name], ["gateway"])
        self.world.run_for(PATH_SETTLE)  # the agent moves back to the direct path
        self._reconnect_all()

    def _do_restart_gateway(self, step: Step, c: int) -> None:
        """The gateway crashes and starts again (new key, empty state); clients reconnect."""
        self._restarts += 1
        host = self.gw.gateway_host
        old = self.gw.gateway
        for sid in sorted(host._conn_of):
            self.world.stream_close(host, sid, "crash")
        key = self.world.entropy.fork(f"restart-key-{self._restarts}").random_bytes(32)
        new = Gateway(
            config=old.config,
            private_key=key,
            entropy=self.world.entropy_for(f"gateway-{self._restarts}"),
            now=self.world.now,
            utc_ns=self.world.clock.unix_ns(),
        )
        host.component = new
        host.gateway = new
        host.channel = new.channel
        host._datagram_handler = new  # type: ignore[assignment]
        host._packet_handler = new  # type: ignore[assignment]
        host.checker = ContractChecker(host.name, new, purity_every=self.world.purity_every)
        host._stream_of.clear()
        host._conn_of.clear()
        host._upgraded.clear()
        host._requests.clear()
        host._upstream.clear()
        host.dns_servers = set()
        host.deadline = None
        self.world._wakes.pop(host.name, None)
        self.gw.gateway = new
        self.world.drive(host, lambda now: None)
        if not self.gw.start(secs(10)):
            raise InvariantError("the restarted gateway did not rejoin the portal within 10 s")
        self._joined = new.counters.snapshot().get("portal_joined", 0)
        # Like Firezone's client on a new connection to a gateway: its DNS-resource NAT requests for
        # that gateway start over (the restarted gateway has no NAT state to re-confirm).
        gid = self.gw.gateway_id()
        for c in range(self.spec.clients):
            self._forget_nat_of(c, gid)
        self._reconnect_all(force=True)

    def _do_portal_outage(self, step: Step, c: int) -> None:
        """The portal goes away (sockets closed, upgrades refused) for a while, then comes back."""
        portal = self.gw.portal
        before = self.gw.gateway.counters.snapshot().get("portal_joined", 0)
        portal.refuse = Refusal(503, "Service Unavailable")
        self.gw.signalling.act(lambda p: p.kick())
        self.world.run_for(secs((5, 20, 45)[step.a % 3]))
        portal.refuse = None
        end = self.world.now + OUTAGE_REJOIN_BOUND
        while self.gw.gateway.counters.snapshot().get("portal_joined", 0) <= before:
            if self.world.now >= end:
                raise InvariantError("the gateway did not rejoin within 120 s after the portal came back")
            self.world.run_for(millis(100))
        self.coverage["event:reconnect_after_outage"] += 1
        self.world.run_for(CONTROL_SETTLE)

    def _new_relay(self, rid: uuid.UUID, secret: str) -> DevRelayConfig:
        n = self._next_relay
        self._next_relay += 1
        ip = RELAY_V4_BASE + 10 + n
        server = DevRelay(
            [SocketAddr(ip, TURN_PORT)],
            [SocketAddr(ip, 0)],
            secret,
            self.world.entropy_for(f"relay-{n}"),
            wall_clock_secs=self.gw.portal.unix_now,
        )
        name = f"relay-{n}"
        self.world.add_host(
            RelayHost(name, RelayComponent(server), ipv4=ip, udp_ports=(TURN_PORT,), link=LINK)
        )
        self._relays[name] = rid
        return DevRelayConfig(rid, (SocketAddr(ip, TURN_PORT),), secret)

    def _relay_name(self, k: int) -> str:
        names = sorted(self._relays)
        return names[k % len(names)]

    def _do_relay_add(self, step: Step, c: int) -> None:
        rid = uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5721000 + self._next_relay)
        cfg = self._new_relay(rid, RELAY_SECRET)
        self.gw.signalling.relays_presence([], [cfg])
        self.world.run_for(CONTROL_SETTLE)
        self._reconnect_all()

    def _do_relay_remove(self, step: Step, c: int) -> None:
        name = self._relay_name(step.a)
        rid = self._relays.pop(name)
        self.world.remove_host(name)
        self.gw.signalling.relays_presence([rid])
        self.world.run_for(CONTROL_SETTLE)
        self._reconnect_all()

    def _do_relay_reboot(self, step: Step, c: int) -> None:
        """Same relay id, new address and secret (a relay rebooted elsewhere)."""
        name = self._relay_name(step.a)
        rid = self._relays.pop(name)
        self.world.remove_host(name)
        cfg = self._new_relay(rid, f"{RELAY_SECRET}-{self._next_relay}")
        self.gw.signalling.relays_presence([rid], [cfg])
        self.world.run_for(CONTROL_SETTLE)
        self._reconnect_all()

    def _do_relay_rotate(self, step: Step, c: int) -> None:
        """The relay's secret changes: the portal re-announces it with new credentials."""
        name = self._relay_name(step.a)
        rid = self._relays[name]
        host = self.world.hosts[name]
        comp = host.component
        assert isinstance(comp, RelayComponent) and host.ipv4 is not None
        secret = f"{RELAY_SECRET}-rot-{self.steps_done}"
        comp.server.secret = secret
        cfg = DevRelayConfig(rid, (SocketAddr(host.ipv4, TURN_PORT),), secret)
        self.gw.signalling.relays_presence([rid], [cfg])
        self.world.run_for(CONTROL_SETTLE)
        self._reconnect_all()

    def _do_roam(self, step: Step, c: int) -> None:
        """The client moves to a new address; like Firezone's client it resets its connections."""
        host = self.gw.client_hosts[c]
        self._next_roam += 1
        net = self.world.network
        link = net.link(host.name)
        net.detach(host.name)
        host.ipv4 = IPv4Address("198.51.100.100") + self._next_roam
        net.attach(host.name, host.addresses(), link)
        cl = self._client(c)

        def reset(now: Instant) -> None:
            relays = cl._relays
            for gid in sorted(cl.node.connections):
                cl.node.remove_connection(gid)
            cl._connected.clear()
            cl._pending.clear()
            cl._nat.clear()
            cl.set_relays(now, ())
            cl.set_relays(now, relays)

        self.world.drive(host, reset)
        self._reconnect_all(force=True, only=c)

    def _do_idle(self, step: Step, c: int) -> None:
        self.world.run_for(secs((150, 240, 360)[step.a % 3]))
        self._reconnect_all()
