"""The client side of the dev portal: what a real client process needs to reach a gateway. Pure.

Theory of operation
-------------------
Firezone's portal talks to clients over a channel of their own (``flow_created``, ``ice_candidates``,
``relays_presence`` ...). The dev portal does not model that channel's frames; :class:`ClientFeed` keeps,
per client, an ordered list of JSON events that a client process fetches with a cursor
(``/client/poll?client=ID&after=N`` in ``devio.portal``):

- ``grant``: after :meth:`DevPortal.authorize` pushed ``authorize_flow`` to a gateway,
  :meth:`ClientFeed.granted` derives what the portal gives the client for that pair with devportal's own
  functions (gateway public key, :func:`~devportal.portal.preshared_key`, both
  :func:`~devportal.portal.ice_credentials`, the gateway's tunnel addresses, the relays with
  :func:`~devportal.portal.relay_credentials` for the *client's* key) and the resource;
- ``candidates``: the gateway's ``broadcast_(invalidated_)ice_candidates`` pushes, through
  ``DevPortal.listeners``, for each client they name;
- ``relays``: the online relays with the client's credentials after :meth:`DevPortal.relays_presence`
  (:meth:`ClientFeed.relays_changed`).

The client's own candidates go the other way with the existing ``DevPortal.ice_candidates``. Each client
keeps at most :data:`MAX_EVENTS` events (the oldest are dropped; a client that falls that far behind
gets a ``resync`` event telling it to start again from the current grants).
"""

from __future__ import annotations

import uuid
from typing import Any

from devportal.portal import DevPortal, GatewayRecord, ice_credentials, preshared_key, relay_credentials
from gateway_core.errors import DecodeError
from gateway_core.portal.messages import BroadcastIceCandidates, BroadcastInvalidatedIceCandidates
from gateway_core.portal.model import CidrResource, DnsResource, Json, Resource, encode_key

CandidateBroadcast = BroadcastIceCandidates | BroadcastInvalidatedIceCandidates


def decode_candidate_broadcast(event: str, payload: Json) -> CandidateBroadcast | None:
    """A gateway's (invalidated) ICE candidates for its clients, or ``None`` for other or malformed events."""
    try:
        if event == BroadcastIceCandidates.EVENT:
            return BroadcastIceCandidates.decode(payload)
        if event == BroadcastInvalidatedIceCandidates.EVENT:
            return BroadcastInvalidatedIceCandidates.decode(payload)
    except DecodeError:
        return None
    return None


MAX_EVENTS = 10_000
"""Events kept per client (a few per grant and candidate; far more than a test or demo produces)."""
RELAY_CREDENTIAL_LIFETIME = 90 * 24 * 3600
"""Client relay credentials live as long as the gateway's (``channel.ex:25``)."""


def resource_json(resource: Resource) -> dict[str, str]:
    """The resource as a client knows it: id, kind (cidr/dns/internet) and address."""
    if isinstance(resource, CidrResource):
        return {"id": str(resource.id), "kind": "cidr", "address": str(resource.address)}
    if isinstance(resource, DnsResource):
        return {"id": str(resource.id), "kind": "dns", "address": resource.address}
    return {"id": str(resource.id), "kind": "internet", "address": ""}


class ClientFeed:
    """See the module docstring."""

    def __init__(self, portal: DevPortal, epoch: str = "") -> None:
        self.portal = portal
        self.epoch = epoch
        """Names this portal's run: a client that sees it change (the portal restarted and forgot the
        events) starts again from cursor 0."""
        self._events: dict[uuid.UUID, list[dict[str, Any]]] = {}
        self._base: dict[uuid.UUID, int] = {}
        portal.listeners.append(self._from_gateway)

    def _push(self, client: uuid.UUID, event: dict[str, Any]) -> None:
        q = self._events.setdefault(client, [])
        q.append(event)
        if len(q) > MAX_EVENTS:
            drop = len(q) - MAX_EVENTS
            del q[:drop]
            self._base[client] = self._base.get(client, 0) + drop

    def poll(self, client: uuid.UUID, after: int) -> dict[str, Any]:
        """Events with sequence numbers ``> after`` (sequence numbers start at 1) and the new cursor."""
        q = self._events.get(client, [])
        base = self._base.get(client, 0)
        start = max(after - base, 0)
        events = q[start:]
        resync = after < base
        return {"ok": True, "events": events, "next": base + len(q), "resync": resync, "epoch": self.epoch}

    def relays_for(self, client_key: str) -> list[dict[str, Any]]:
        expires = self.portal.unix_now + RELAY_CREDENTIAL_LIFETIME
        out: list[dict[str, Any]] = []
        for r in self.portal.online_relays():
            user, pwd = relay_credentials(r, client_key, expires)
            v4 = next((str(a) for a in r.addrs if a.ip.version == 4), None)
            v6 = next((str(a) for a in r.addrs if a.ip.version == 6), None)
            out.append({"id": str(r.id), "v4": v4, "v6": v6, "username": user, "password": pwd})
        return out

    def granted(self, client_id: uuid.UUID, resource_id: uuid.UUID, result: dict[str, Any]) -> None:
        """``DevPortal.authorize`` returned ``result``: queue the client's ``grant`` when it succeeded."""
        if not result.get("ok"):
            return
        gw = self._gateway(str(result["gateway"]))
        cfg = self.portal.config.client(client_id)
        resource = self.portal.config.resource(resource_id)
        if gw is None or cfg is None or resource is None:
            return
        ckey = encode_key(cfg.public_key)
        cice, gice = ice_credentials(cfg.id, ckey, gw.id, gw.public_key)
        psk = preshared_key(cfg.psk_base, f"gw-{gw.external_id}", cfg.id, gw.id, ckey, gw.public_key)
        self._push(
            client_id,
            {
                "type": "grant",
                "gateway": str(gw.id),
                "gateway_name": gw.name,
                "public_key": gw.public_key,
                "psk": encode_key(psk),
                "client_ice": [cice.username, cice.password],
                "gateway_ice": [gice.username, gice.password],
                "tunnel_v4": str(gw.ipv4),
                "tunnel_v6": str(gw.ipv6),
                "relays": self.relays_for(ckey),
                "resource": resource_json(resource),
                "expires_at": result.get("expires_at"),
            },
        )

    def relays_changed(self) -> None:
        """The online relays changed: every known client gets the new list with its credentials."""
        for cfg in self.portal.config.clients:
            self._push(cfg.id, {"type": "relays", "relays": self.relays_for(encode_key(cfg.public_key))})

    def _gateway(self, name: str) -> GatewayRecord | None:
        for rec in sorted(self.portal.gateways.values(), key=lambda g: g.name):
            if name in (rec.name, rec.external_id, str(rec.id)):
                return rec
        return None

    def _from_gateway(self, gw: GatewayRecord, event: str, payload: Json) -> None:
        msg = decode_candidate_broadcast(event, payload)
        if msg is None:
            return
        invalidate = isinstance(msg, BroadcastInvalidatedIceCandidates)
        for cid in msg.client_ids:
            self._push(
                cid,
                {
                    "type": "candidates",
                    "gateway": str(gw.id),
                    "candidates": list(msg.candidates),
                    "invalidate": invalidate,
                },
            )
