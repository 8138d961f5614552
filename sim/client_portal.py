"""The client side of the portal in the simulator: grants, ICE candidate relaying, and the client's host.

Theory of operation
-------------------
Firezone's portal talks to clients over their own channel; the simulator does not model that channel's
frames, only its effects, reusing :class:`devportal.DevPortal`'s logic for everything the gateway sees:

- :meth:`ClientSignalling.grant` runs ``DevPortal.authorize`` inside the stub portal (so the gateway gets
  its ``authorize_flow`` over its real simulated WebSocket) and hands the client, after
  :data:`SIGNAL_DELAY`, exactly what the portal derives for the pair with devportal's own functions:
  the gateway's public key, :func:`~devportal.portal.preshared_key`, both
  :func:`~devportal.portal.ice_credentials`, relays with :func:`~devportal.portal.relay_credentials` for
  the *client's* key, the gateway's tunnel addresses, and the resource.
- Candidates: a client's :class:`~devpeers.client_types.SignalIce` command goes to the portal after the
  delay and becomes ``DevPortal.ice_candidates`` (pushed to the gateway as ``ice_candidates`` /
  ``invalidate_ice_candidates``); the gateway's ``broadcast_*ice_candidates`` pushes reach
  :meth:`ClientSignalling._from_gateway` through ``DevPortal.listeners`` and go to each named client
  after the delay.
- :meth:`revoke`, :meth:`update_expiry`, :meth:`update_resource` and :meth:`relays_presence` are the
  portal actions of the same name (the last also gives every client the new relay list); on revocation
  the client keeps its routes (so a test can watch traffic stop at the gateway) unless ``forget=True``.

Every signalling step is scheduled with :meth:`World.after` and runs through :meth:`World.drive`, so it
is traced and contract-checked like any other step. :attr:`ClientSignalling.log` keeps ``(time, what)``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from devpeers.client import DevClient
from devpeers.client_types import ClientResource, GatewayGrant, SignalIce
from devportal.clients import decode_candidate_broadcast
from devportal.config import RelayConfig as DevRelayConfig
from devportal.portal import (
    DevPortal,
    GatewayRecord,
    ice_credentials,
    preshared_key,
    relay_credentials,
)
from gateway_core.clock import Duration, Instant, millis
from gateway_core.commands import Command
from gateway_core.contract import Component
from gateway_core.node.node import RelayConfig
from gateway_core.portal.messages import BroadcastInvalidatedIceCandidates
from gateway_core.portal.model import CidrResource, DnsResource, InternetResource, Json, Resource, encode_key
from gateway_core.turn.allocation import RelaySocket
from sim.host import Host
from sim.net import LinkProfile
from sim.portal import StubPortalHost
from sim.world import World

SIGNAL_DELAY: Duration = millis(30)
"""One hop through the portal for the client's side (any small non-zero value; not modelled in detail)."""
RELAY_CREDENTIAL_LIFETIME = 90 * 24 * 3600
"""Client relay credentials live as long as the gateway's (``channel.ex:25``)."""
CLIENT_PORT = 52625
"""snownet's preferred port, as for the gateway."""


class ClientHost(Host):
    """Hosts a :class:`DevClient`; its :class:`SignalIce` commands go to ``on_signal``."""

    def __init__(
        self,
        name: str,
        client: DevClient,
        on_signal: Callable[[Instant, SignalIce], None],
        *,
        ipv4: IPv4Address | str | None = None,
        ipv6: IPv6Address | str | None = None,
        link: LinkProfile | None = None,
        port: int = CLIENT_PORT,
    ) -> None:
        super().__init__(name, client, ipv4=ipv4, ipv6=ipv6, link=link, udp_ports=(port,))
        self.client = client
        self.on_signal = on_signal

    def swap_component(self, component: Component) -> None:
        """A restarted client process (:meth:`World.replace_component`): signalling goes to the new one."""
        assert isinstance(component, DevClient)
        self.client = component
        super().swap_component(component)

    def execute(self, now: Instant, command: Command) -> None:
        if isinstance(command, SignalIce):
            self.on_signal(now, command)
            return
        super().execute(now, command)


def client_resource(resource: Resource) -> ClientResource:
    """The portal's resource as the client knows it."""
    if isinstance(resource, CidrResource):
        return ClientResource(resource.id, "cidr", str(resource.address))
    if isinstance(resource, DnsResource):
        return ClientResource(resource.id, "dns", resource.address)
    assert isinstance(resource, InternetResource)
    return ClientResource(resource.id, "internet", "")


class ClientSignalling:
    """See the module docstring."""

    def __init__(self, world: World, portal_host: StubPortalHost, delay: Duration = SIGNAL_DELAY) -> None:
        self.world = world
        self.portal_host = portal_host
        self.portal: DevPortal = portal_host.portal.portal
        self.delay = delay
        self.clients: dict[uuid.UUID, ClientHost] = {}
        self.log: list[tuple[Instant, str]] = []
        self._relay_creds: dict[tuple[str, str, str], tuple[str, str]] = {}
        """(client key, relay id, relay secret) -> the TURN credentials handed out: the client keeps them
        while the relay is online with that secret (a new username for the same relay would make its node
        allocate again, which Firezone's client does not do on every flow)."""
        self.portal.listeners.append(self._from_gateway)

    # --- wiring

    def host_for(
        self,
        client_id: uuid.UUID,
        name: str,
        client: DevClient,
        *,
        ipv4: IPv4Address | str | None = None,
        ipv6: IPv6Address | str | None = None,
        link: LinkProfile | None = None,
    ) -> ClientHost:
        """A host for ``client`` wired to this signalling (add it to the world yourself)."""

        def on_signal(now: Instant, cmd: SignalIce) -> None:
            self._from_client(client_id, cmd)

        host = ClientHost(name, client, on_signal, ipv4=ipv4, ipv6=ipv6, link=link)
        self.clients[client_id] = host
        return host

    def act(self, action: Callable[[DevPortal], Any]) -> Any:
        """Run ``action`` on the portal now (its pushes leave at once); returns what it returned."""
        box: list[Any] = []
        self.world.drive(
            self.portal_host, lambda now: self.portal_host.portal.act(now, lambda p: box.append(action(p)))
        )
        return box[0] if box else None

    def _later(self, what: str, action: Callable[[], None]) -> None:
        self.log.append((self.world.now, what))
        self.world.after(self.delay, action)

    # --- portal actions a scenario takes

    def gateway_record(self, name: str | None = None) -> GatewayRecord | None:
        for rec in sorted(self.portal.gateways.values(), key=lambda g: g.name):
            if name is None or name in (rec.name, rec.external_id, str(rec.id)):
                return rec
        return None

    def grant(
        self, client_id: uuid.UUID, resource_id: uuid.UUID, gateway: str | None = None
    ) -> dict[str, Any]:
        """Authorise the flow at the portal (-> ``authorize_flow`` to the gateway) and tell the client."""
        result: dict[str, Any] = self.act(lambda p: p.authorize(client_id, resource_id, gateway))
        if not result.get("ok"):
            return result
        gw = self.gateway_record(str(result["gateway"]))
        cfg = self.portal.config.client(client_id)
        resource = self.portal.config.resource(resource_id)
        host = self.clients.get(client_id)
        assert gw is not None and cfg is not None and resource is not None
        if host is None:
            return result
        ckey = encode_key(cfg.public_key)
        cice, gice = ice_credentials(cfg.id, ckey, gw.id, gw.public_key)
        psk = preshared_key(cfg.psk_base, f"gw-{gw.external_id}", cfg.id, gw.id, ckey, gw.public_key)
        grant = GatewayGrant(
            str(gw.id),
            _key_bytes(gw.public_key),
            psk,
            (cice.username, cice.password),
            (gice.username, gice.password),
            gw.ipv4,
            gw.ipv6,
            self.client_relays(ckey),
        )
        res = client_resource(resource)

        def deliver() -> None:
            self.world.drive(host, lambda now: host.client.grant(now, grant, res))

        self._later(f"flow_created {host.name} -> {gw.name} for {resource_id}", deliver)
        return result

    def client_init(self, client_id: uuid.UUID) -> None:
        """The client joins its portal channel: its ``init`` carries the relays (with the client's TURN
        credentials), so the client allocates on every relay before it asks for any flow, as Firezone's
        client does; its candidates are then ready the moment a flow is granted."""
        cfg = self.portal.config.client(client_id)
        host = self.clients.get(client_id)
        if cfg is None or host is None:
            return
        key = encode_key(cfg.public_key)

        def deliver() -> None:
            # Credentials are derived when the init leaves (the portal's clock runs from its first step).
            _deliver_relays(self.world, host, self.act(lambda p: self.client_relays(key)))()

        self._later(f"init {host.name}", deliver)

    def _forget_old_keys(self) -> None:
        """Drop the credentials of keys no client has any more (a roamed client's old key): new credentials
        come once per join or roam, so the table stays as large as the clients' current keys need."""
        current = {encode_key(cfg.public_key) for cfg in self.portal.config.clients}
        for k in [k for k in self._relay_creds if k[0] not in current]:
            del self._relay_creds[k]

    def client_relays(self, client_key: str) -> tuple[RelayConfig, ...]:
        """The online relays with TURN credentials for the client's key (as the client channel's init)."""
        expires = self.portal.unix_now + RELAY_CREDENTIAL_LIFETIME
        out: list[RelayConfig] = []
        online = self.portal.online_relays()
        ids = {(str(r.id), r.secret) for r in online}
        for k in [k for k in self._relay_creds if k[0] == client_key and k[1:] not in ids]:
            del self._relay_creds[k]  # the relay left or has a new secret: fresh credentials
        for r in online:
            creds = self._relay_creds.get((client_key, str(r.id), r.secret))
            if creds is None:
                self._forget_old_keys()
                creds = relay_credentials(r, client_key, expires)  # coturn relays: TURN REST
                self._relay_creds[(client_key, str(r.id), r.secret)] = creds
            user, pwd = creds
            v4 = next((a for a in r.addrs if a.ip.version == 4), None)
            v6 = next((a for a in r.addrs if a.ip.version == 6), None)
            out.append(RelayConfig(str(r.id), RelaySocket(v4, v6), user, pwd))
        return tuple(out)

    def revoke(self, client_id: uuid.UUID, resource_id: uuid.UUID, *, forget: bool = False) -> dict[str, Any]:
        """``reject_access`` to the gateways; with ``forget`` the client also stops routing the resource."""
        result: dict[str, Any] = self.act(lambda p: p.revoke(client_id, resource_id))
        host = self.clients.get(client_id)
        if forget and host is not None:
            self._later(
                f"resource_deleted {host.name} {resource_id}",
                lambda: self.world.drive(host, lambda now: host.client.remove_resource(resource_id)),
            )
        return result

    def update_expiry(self, client_id: uuid.UUID, resource_id: uuid.UUID, expires_at: int) -> dict[str, Any]:
        result: dict[str, Any] = self.act(lambda p: p.update_expiry(client_id, resource_id, expires_at))
        return result

    def update_resource(self, resource: Resource) -> dict[str, Any]:
        result: dict[str, Any] = self.act(lambda p: p.update_resource(resource))
        return result

    def relays_presence(
        self, offline: list[uuid.UUID], online: list[DevRelayConfig] | None = None
    ) -> dict[str, Any]:
        """Relays left or joined: ``relays_presence`` to the gateways, the new relay list to every client."""
        result: dict[str, Any] = self.act(lambda p: p.relays_presence(offline, online))
        for cid, host in sorted(self.clients.items()):
            cfg = self.portal.config.client(cid)
            if cfg is None:
                continue
            relays = self.client_relays(encode_key(cfg.public_key))
            self._later(
                f"relays for {host.name}: {len(relays)}",
                _deliver_relays(self.world, host, relays),
            )
        return result

    # --- candidates

    def _from_client(self, client_id: uuid.UUID, cmd: SignalIce) -> None:
        cands = list(cmd.candidates)
        inv = cmd.invalidate
        self._later(
            f"{'invalidate_' if inv else ''}ice_candidates from client {client_id}",
            lambda: self.act(lambda p: p.ice_candidates(client_id, cands, inv)),
        )

    def _from_gateway(self, gw: GatewayRecord, event: str, payload: Json) -> None:
        msg = decode_candidate_broadcast(event, payload)
        if msg is None:
            return
        invalidate = isinstance(msg, BroadcastInvalidatedIceCandidates)
        for cid in msg.client_ids:
            host = self.clients.get(cid)
            if host is None:
                continue
            self._later(
                f"{event} {gw.name} -> {host.name}",
                _deliver_candidates(self.world, host, str(gw.id), msg.candidates, invalidate),
            )


def _deliver_relays(world: World, host: ClientHost, relays: tuple[RelayConfig, ...]) -> Callable[[], None]:
    def deliver() -> None:
        if host.name in world.hosts and host.exited is None:
            world.drive(host, lambda now: host.client.set_relays(now, relays))

    return deliver


def _deliver_candidates(
    world: World, host: ClientHost, gateway: str, candidates: tuple[str, ...], invalidate: bool
) -> Callable[[], None]:
    def deliver() -> None:
        if host.name in world.hosts and host.exited is None:
            world.drive(
                host, lambda now: host.client.add_remote_candidates(now, gateway, candidates, invalidate)
            )

    return deliver


def _key_bytes(text: str) -> bytes:
    return base64.b64decode(text)
