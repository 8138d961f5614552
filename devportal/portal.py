"""The dev portal's logic: authenticate gateways, join them, push application messages, check their
answers. Pure.

Theory of operation: :class:`DevPortal` plays Firezone's portal (``elixir/apps/api/lib/api/gateway``) for
development, tests and the simulator. A driver (the real WebSocket server in ``devio.portal`` or
the stub portal host in ``sim.portal``) calls :meth:`DevPortal.authenticate` with the upgrade request
(path, query, User-Agent); a refusal carries the HTTP status and body the real portal would send
(``elixir/apps/api/lib/api/gateway/socket.ex``, ``elixir/apps/api/lib/api/sockets.ex``).
An accepted gateway gets a :class:`~devportal.phoenix_server.PhoenixSocket` whose handler is the portal:
joining topic ``gateway`` answers ok and pushes ``init`` (interface addresses, relays with credentials
derived from each relay's secret, current authorisations). Scripted actions (:meth:`authorize`,
:meth:`revoke`, :meth:`update_expiry`, :meth:`update_resource`, :meth:`relays_presence`,
:meth:`ice_candidates`, legacy :meth:`request_connection` / :meth:`allow_access`) queue pushes on the joined
sockets; the driver drains each socket's outbox. The gateway's pushes are checked as the portal does
(signed refs for ``flow_authorized`` / ``connection_ready``, ``unknown_message`` for anything else) and
kept in :attr:`DevPortal.received` for inspection.

Wall-clock time (Unix seconds, for expiries and relay credentials) is :attr:`DevPortal.unix_now`, set by
the driver; nothing here reads a clock.

Derivations follow the portal (``elixir/apps/domain/lib/domain/crypto.ex``,
``elixir/apps/api/lib/api/client/channel.ex``, ``elixir/apps/domain/lib/domain/relays.ex``): PSK =
PBKDF2-HMAC-SHA256 over both PSK bases and a salt naming both IDs and keys; ICE credentials = slices of the
base32 SHA-256 of both IDs and keys; TURN username ``<expires_at>:<salt>`` and password
``base64(sha256("<expires_at>:<secret>:<salt>"))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from devportal.config import ClientConfig, PortalConfig, RelayConfig
from devportal.phoenix_server import PhoenixSocket, Reply
from gateway_core.errors import DecodeError
from gateway_core.portal.messages import (
    AccessAuthorizationExpiryUpdated,
    AllowAccess,
    Authorization,
    AuthorizeFlow,
    IceCandidates,
    Init,
    Interface,
    InvalidateIceCandidates,
    LegacyClient,
    LegacyPeer,
    RejectAccess,
    RelaysPresence,
    RequestConnection,
    ResourceUpdated,
    decode_outbound,
)
from gateway_core.portal.model import (
    Client,
    IceCredentials,
    Json,
    Relay,
    ResolveRequest,
    Resource,
    Subject,
    TurnRelay,
    encode_key,
)
from gateway_core.turn.credentials import coturn_rest_password

log = logging.getLogger("devportal")

TOPIC = "gateway"
GATEWAY_SITE = "default"
"""The one site of the dev portal's gateways; a resource moved elsewhere has no gateway."""
RELAY_CREDENTIAL_LIFETIME = 90 * 24 * 3600
"""Relay credentials in ``init`` / ``relays_presence`` are valid 90 days (``channel.ex:25``)."""
NEVER = 10 * 365 * 24 * 3600
"""``init.authorizations[].expires_at`` is a required integer: flows without expiry get +10 years."""
_GW_NAMESPACE = uuid.UUID("6f3c0a52-1c1e-4b4f-9a59-1f2e6b7c0de1")
_VERSION = re.compile(r"(?:^|\s)gateway/(\S+)")


@dataclass(frozen=True, slots=True)
class Refusal:
    """The upgrade is refused with this HTTP status and body."""

    status: int
    body: str


@dataclass(slots=True)
class GatewayRecord:
    id: uuid.UUID
    external_id: str
    name: str
    public_key: str
    ipv4: IPv4Address
    ipv6: IPv6Address
    version: str | None
    user_agent: str | None


@dataclass(slots=True)
class _Flow:
    gateway: uuid.UUID
    client: uuid.UUID
    resource: uuid.UUID
    expires_at: int | None


@dataclass(slots=True)
class Received:
    """A push the portal got from a gateway (for tests and the admin status)."""

    gateway: str
    event: str
    payload: Json
    reply: str | None


@dataclass(slots=True)
class _Conn:
    gateway: GatewayRecord
    sock: PhoenixSocket
    kicked: bool = False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def turn_credentials(relay_secret: str, gateway_public_key: str, expires_at: int) -> tuple[str, str]:
    """Firezone-style TURN username and password for one gateway (``relays.ex:258-270``)."""
    salt = _b64(hashlib.sha256(gateway_public_key.encode()).digest())
    username = f"{expires_at}:{salt}"
    password = _b64(hashlib.sha256(f"{expires_at}:{relay_secret}:{salt}".encode()).digest())
    return username, password


def relay_credentials(relay: RelayConfig, public_key: str, expires_at: int) -> tuple[str, str]:
    """TURN username and password for one peer's key on ``relay``: Firezone's scheme
    (:func:`turn_credentials`), or for a coturn relay the TURN REST password over the same username."""
    user, pwd = turn_credentials(relay.secret, public_key, expires_at)
    if relay.kind == "coturn":
        pwd = coturn_rest_password(relay.secret, user)
    return user, pwd


def ice_credentials(
    client_id: uuid.UUID, client_key: str, gateway_id: uuid.UUID, gateway_key: str
) -> tuple[IceCredentials, IceCredentials]:
    """(client's, gateway's) ICE credentials, deterministic per key pair (``client/channel.ex:671-707``)."""
    digest = hashlib.sha256(f"{client_id}:{client_key}:{gateway_id}:{gateway_key}".encode()).digest()
    s = base64.b32encode(digest).decode("ascii").lower().rstrip("=")
    return IceCredentials(s[0:4], s[4:26]), IceCredentials(s[26:30], s[30:52])


def preshared_key(
    client_psk_base: str, gateway_psk_base: str, cid: uuid.UUID, gid: uuid.UUID, ckey: str, gkey: str
) -> bytes:
    """The WireGuard PSK of a client/gateway pair (``crypto.ex:7-32``)."""
    salt = f"WG_PSK|C_ID:{cid}|G_ID:{gid}|C_PK:{ckey}|G_PK:{gkey}"
    return hashlib.pbkdf2_hmac("sha256", (client_psk_base + gateway_psk_base).encode(), salt.encode(), 1, 32)


class DevPortal:
    """See the module docstring."""

    def __init__(self, config: PortalConfig, unix_now: int = 0) -> None:
        self.config = config
        self.unix_now = unix_now
        self.token = config.token
        self.refuse: Refusal | None = None
        """When set, every upgrade is refused like this (simulates an outage or a bad token)."""
        self.gateways: dict[str, GatewayRecord] = {}
        self.received: list[Received] = []
        self._conns: dict[int, _Conn] = {}
        self._next_conn = 0
        self._flows: dict[tuple[uuid.UUID, uuid.UUID, uuid.UUID], _Flow] = {}
        self._online_relays: list[RelayConfig] = list(config.relays)
        self.listeners: list[Callable[[GatewayRecord, str, Json], None]] = []
        """Called with every valid ``broadcast_*ice_candidates`` push from a gateway (the simulator's
        client side of the portal relays them to clients)."""
        self.init_listeners: list[Callable[[GatewayRecord, Init], None]] = []
        """Called with every ``init`` pushed to a gateway that joined (the stateful test notes when a
        rejoining gateway hears of what changed meanwhile)."""
        self.sites: dict[uuid.UUID, str] = {}
        """Resources moved away from the gateways' site (:meth:`move_resource`); absent = ours."""

    # ------------------------------------------------------------------ upgrade

    def authenticate(
        self, path: str, query: dict[str, str], user_agent: str | None
    ) -> Refusal | GatewayRecord:
        if not path.rstrip("/").endswith("/gateway/websocket"):
            return Refusal(404, "Not Found")
        if self.refuse is not None:
            return self.refuse
        token = query.get("token")
        if not token:
            return Refusal(401, "Missing token")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return Refusal(401, "Invalid token")
        pk = query.get("public_key", "")
        try:
            ok_key = len(pk) == 44 and len(base64.b64decode(pk, validate=True)) == 32
        except ValueError:
            ok_key = False
        if not ok_key:
            return Refusal(422, "Invalid or missing connection parameters: public_key")
        version = None
        if user_agent is not None:
            m = _VERSION.search(user_agent)
            if m is None:
                return Refusal(422, "Invalid or missing connection parameters: user_agent")
            version = m.group(1)
        external_id = query.get("external_id", "")
        if not external_id:
            return Refusal(422, "Invalid or missing connection parameters: external_id")
        name = query.get("name", "").strip() or f"gateway-{external_id[:8]}"
        if len(name) > 255:
            return Refusal(422, "Invalid or missing connection parameters: name")
        for other in self.gateways.values():
            if other.public_key == pk and other.external_id != external_id:
                return Refusal(422, "Invalid or missing connection parameters: public_key taken")
        rec = self.gateways.get(external_id)
        if rec is None:
            h = int.from_bytes(hashlib.sha256(external_id.encode()).digest()[:8], "big")
            rec = GatewayRecord(
                uuid.uuid5(_GW_NAMESPACE, external_id),
                external_id,
                name,
                pk,
                IPv4Address(int(IPv4Address("100.64.0.0")) + 1 + h % ((1 << 21) - 2)),
                IPv6Address(int(IPv6Address("fd00:2021:1111::")) + 1 + h % ((1 << 21) - 2)),
                version,
                user_agent,
            )
            self.gateways[external_id] = rec
        else:  # upsert: name, key and version are replaced, tunnel addresses kept
            rec.name, rec.public_key, rec.version, rec.user_agent = name, pk, version, user_agent
        return rec

    def connect(self, gateway: GatewayRecord, vsn: str | None = None) -> tuple[int, PhoenixSocket]:
        """A socket for an authenticated gateway; returns (connection id, socket)."""
        self._next_conn += 1
        sock = PhoenixSocket(_Handler(self, self._next_conn), vsn, ident=gateway.name)
        self._conns[self._next_conn] = _Conn(gateway, sock)
        return self._next_conn, sock

    def disconnect(self, conn: int) -> None:
        self._conns.pop(conn, None)

    def kicked(self, conn: int) -> bool:
        """The driver should close this connection (token revoked, gateway deleted)."""
        c = self._conns.get(conn)
        return c is not None and c.kicked

    def kick(self, external_id: str | None = None) -> int:
        """Ask drivers to close the sockets of one gateway (or all); returns how many."""
        n = 0
        for c in self._conns.values():
            if external_id is None or c.gateway.external_id == external_id:
                c.kicked = True
                n += 1
        return n

    def revoke_token(self) -> int:
        """The gateway token is deleted: sockets are closed and every later upgrade gets 401."""
        self.token = "\x00revoked"
        return self.kick()

    # ------------------------------------------------------------------ channel behaviour

    def joined_sockets(
        self, gateway_id: uuid.UUID | None = None
    ) -> list[tuple[GatewayRecord, PhoenixSocket]]:
        return [
            (c.gateway, c.sock)
            for _, c in sorted(self._conns.items())
            if TOPIC in c.sock.joins and (gateway_id is None or c.gateway.id == gateway_id)
        ]

    def _relays_for(self, gw: GatewayRecord) -> list[Relay]:
        expires = self.unix_now + RELAY_CREDENTIAL_LIFETIME
        out: list[Relay] = []
        for r in self._online_relays:
            user, pwd = relay_credentials(r, gw.public_key, expires)
            out += [TurnRelay(r.id, addr, user, pwd, expires) for addr in r.addrs]
        return out

    def init_for(self, gw: GatewayRecord) -> Init:
        latest: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
        for f in self._flows.values():
            if f.gateway == gw.id:
                exp = f.expires_at if f.expires_at is not None else self.unix_now + NEVER
                key = (f.client, f.resource)
                latest[key] = max(latest.get(key, exp), exp)
        auths = tuple(Authorization(c, r, e) for (c, r), e in sorted(latest.items()))
        return Init(
            Interface(gw.ipv4, gw.ipv6),
            True,
            True,
            tuple(self._relays_for(gw)),
            self.config.account_slug,
            auths,
        )

    def _handle_in(self, conn: int, event: str, payload: Json) -> Reply | None:
        c = self._conns.get(conn)
        if c is None:
            return Reply.error("unknown_message")
        gw = c.gateway
        reply: Reply | None
        try:
            msg = decode_outbound(event, payload)
        except DecodeError:
            msg = None
        if event in ("broadcast_ice_candidates", "broadcast_invalidated_ice_candidates"):
            reply = None if msg is not None else Reply.error("unknown_message")
        elif event in ("flow_authorized", "connection_ready") and msg is not None:
            ok = self._verify_ref(getattr(msg, "ref", ""), gw)
            reply = Reply.success() if ok else Reply.error("invalid_ref")
        else:
            reply = Reply.error("unknown_message")
        desc = None if reply is None else ("ok" if reply.ok else str(reply.response))
        self.received.append(Received(gw.name, event, payload, desc))
        if reply is None:
            for listener in list(self.listeners):
                listener(gw, event, payload)
        return reply

    # ------------------------------------------------------------------ signed refs

    def _sign(self, gw: GatewayRecord, client: uuid.UUID, resource: uuid.UUID) -> str:
        body = base64.urlsafe_b64encode(json.dumps([str(gw.id), str(client), str(resource)]).encode())
        mac = hmac.new(self.config.secret.encode(), body, hashlib.sha256).digest()
        return f"DEV.{body.decode()}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def _verify_ref(self, ref: str, gw: GatewayRecord) -> bool:
        parts = ref.split(".")
        if len(parts) != 3 or parts[0] != "DEV":
            return False
        mac = hmac.new(self.config.secret.encode(), parts[1].encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.urlsafe_b64encode(mac).decode().rstrip("="), parts[2]):
            return False
        try:
            gid = json.loads(base64.urlsafe_b64decode(parts[1]))[0]
        except (ValueError, IndexError, TypeError):
            return False
        return bool(gid == str(gw.id))

    # ------------------------------------------------------------------ scripted actions

    def _pick(self, gateway: str | None) -> list[tuple[GatewayRecord, PhoenixSocket]]:
        socks = self.joined_sockets()
        if gateway is not None:
            socks = [(g, s) for g, s in socks if gateway in (g.name, g.external_id, str(g.id))]
        if not socks:
            return []
        first = socks[0][0].id
        return [(g, s) for g, s in socks if g.id == first]

    def authorize(
        self,
        client_id: uuid.UUID,
        resource_id: uuid.UUID,
        gateway: str | None = None,
        subject: Subject | None = None,
    ) -> dict[str, Any]:
        """A client asked for a flow: check the policy, push ``authorize_flow`` to one joined gateway."""
        cfg = self.config
        client, resource, policy = (
            cfg.client(client_id),
            cfg.resource(resource_id),
            cfg.policy(client_id, resource_id),
        )
        if client is None or resource is None:
            return {"ok": False, "error": "unknown client or resource"}
        if policy is None:
            return {"ok": False, "error": "no policy allows this"}
        if self.sites.get(resource_id, GATEWAY_SITE) != GATEWAY_SITE:
            return {"ok": False, "error": "no gateway online in the resource's site"}
        targets = self._pick(gateway)
        if not targets:
            return {"ok": False, "error": "no gateway online"}
        gw = targets[0][0]
        ckey = encode_key(client.public_key)
        cice, gice = ice_credentials(client.id, ckey, gw.id, gw.public_key)
        psk = preshared_key(client.psk_base, f"gw-{gw.external_id}", client.id, gw.id, ckey, gw.public_key)
        expires = None if policy.expires_in is None else self.unix_now + policy.expires_in
        ref = self._sign(gw, client.id, resource.id)
        msg = AuthorizeFlow(
            ref,
            resource,
            Client(client.id, client.public_key, psk, client.ipv4, client.ipv6, (("version", "1.4.0"),)),
            cice,
            gice,
            expires,
            subject or Subject(),
        )
        for _, s in targets:
            s.push(TOPIC, msg.EVENT, msg.encode())
        self._flows[(gw.id, client.id, resource.id)] = _Flow(gw.id, client.id, resource.id, expires)
        return {"ok": True, "gateway": gw.name, "ref": ref, "expires_at": expires}

    def request_connection(
        self, client_id: uuid.UUID, resource_id: uuid.UUID, domain: ResolveRequest | None = None
    ) -> dict[str, Any]:
        """Legacy (< 1.4 clients): push ``request_connection``; the gateway answers ``connection_ready``."""
        cfg = self.config
        client, resource, policy = (
            cfg.client(client_id),
            cfg.resource(resource_id),
            cfg.policy(client_id, resource_id),
        )
        if client is None or resource is None or policy is None:
            return {"ok": False, "error": "unknown client/resource or no policy"}
        targets = self._pick(None)
        if not targets:
            return {"ok": False, "error": "no gateway online"}
        gw = targets[0][0]
        ckey = encode_key(client.public_key)
        cice, _ = ice_credentials(client.id, ckey, gw.id, gw.public_key)
        psk = preshared_key(client.psk_base, f"gw-{gw.external_id}", client.id, gw.id, ckey, gw.public_key)
        expires = None if policy.expires_in is None else self.unix_now + policy.expires_in
        ref = self._sign(gw, client.id, resource.id)
        peer = LegacyPeer(client.public_key, psk, client.ipv4, client.ipv6, 25)
        msg = RequestConnection(ref, resource, LegacyClient(client.id, peer, cice, domain), expires)
        for _, s in targets:
            s.push(TOPIC, msg.EVENT, msg.encode())
        self._flows[(gw.id, client.id, resource.id)] = _Flow(gw.id, client.id, resource.id, expires)
        return {"ok": True, "gateway": gw.name, "ref": ref}

    def allow_access(
        self, client_id: uuid.UUID, resource_id: uuid.UUID, payload: ResolveRequest | None = None
    ) -> dict[str, Any]:
        """Legacy: add a resource on an existing connection (no answer expected)."""
        client, resource = self.config.client(client_id), self.config.resource(resource_id)
        if client is None or resource is None:
            return {"ok": False, "error": "unknown client or resource"}
        targets = self._pick(None)
        if not targets:
            return {"ok": False, "error": "no gateway online"}
        gw = targets[0][0]
        ref = self._sign(gw, client.id, resource.id)
        msg = AllowAccess(ref, client.id, resource, None, payload, client.ipv4, client.ipv6)
        for _, s in targets:
            s.push(TOPIC, msg.EVENT, msg.encode())
        self._flows[(gw.id, client.id, resource.id)] = _Flow(gw.id, client.id, resource.id, None)
        return {"ok": True, "gateway": gw.name}

    def online_relays(self) -> list[RelayConfig]:
        """The relays currently online (after ``relays_presence`` changes)."""
        return list(self._online_relays)

    def _flow_gateways(self, client_id: uuid.UUID, resource_id: uuid.UUID) -> set[uuid.UUID]:
        return {f.gateway for f in self._flows.values() if (f.client, f.resource) == (client_id, resource_id)}

    def revoke(self, client_id: uuid.UUID, resource_id: uuid.UUID) -> dict[str, Any]:
        """The last flow of (client, resource) is gone: ``reject_access`` to the gateways that had it."""
        gws = self._flow_gateways(client_id, resource_id)
        msg = RejectAccess(client_id, resource_id)
        n = 0
        for gid in sorted(gws):
            self._flows.pop((gid, client_id, resource_id), None)
            for _, s in self.joined_sockets(gid):
                n += s.push(TOPIC, msg.EVENT, msg.encode())
        return {"ok": True, "pushed": n}

    def update_expiry(self, client_id: uuid.UUID, resource_id: uuid.UUID, expires_at: int) -> dict[str, Any]:
        msg = AccessAuthorizationExpiryUpdated(client_id, resource_id, expires_at)
        n = 0
        for gid in sorted(self._flow_gateways(client_id, resource_id)):
            self._flows[(gid, client_id, resource_id)].expires_at = expires_at
            for _, s in self.joined_sockets(gid):
                n += s.push(TOPIC, msg.EVENT, msg.encode())
        return {"ok": True, "pushed": n}

    def update_resource(self, resource: Resource) -> dict[str, Any]:
        """Filters changed: ``resource_updated`` to every joined gateway (as the portal does)."""
        self.config = _replace_resource(self.config, resource)
        msg = ResourceUpdated(resource)
        n = sum(s.push(TOPIC, msg.EVENT, msg.encode()) for _, s in self.joined_sockets())
        return {"ok": True, "pushed": n}

    def move_resource(self, resource_id: uuid.UUID, site: str) -> dict[str, Any]:
        """The resource moves to ``site``: away from ours, every flow of it is revoked (``reject_access``)
        and no new flow is authorised until it comes back (our gateways' site is :data:`GATEWAY_SITE`)."""
        if site == GATEWAY_SITE:
            self.sites.pop(resource_id, None)
            return {"ok": True, "pushed": 0}
        self.sites[resource_id] = site
        n = 0
        for _gid, cid, rid in sorted(self._flows):
            if rid == resource_id:
                n += int(self.revoke(cid, rid)["pushed"])
        return {"ok": True, "pushed": n}

    def update_client(self, client: ClientConfig) -> dict[str, Any]:
        """A client's record changed (a restarted client has a new public key): later flows use it."""
        others = tuple(c for c in self.config.clients if c.id != client.id)
        self.config = replace(self.config, clients=(*others, client))
        return {"ok": True}

    def relays_presence(
        self, offline: list[uuid.UUID], online: list[RelayConfig] | None = None
    ) -> dict[str, Any]:
        """Relays left (``offline``) or joined (``online``): push ``relays_presence`` to every gateway."""
        self._online_relays = [r for r in self._online_relays if r.id not in offline]
        for r in online or []:
            if all(x.id != r.id for x in self._online_relays):
                self._online_relays.append(r)
        n = 0
        for gw, s in self.joined_sockets():
            msg = RelaysPresence(tuple(offline), tuple(self._relays_for(gw)))
            n += s.push(TOPIC, msg.EVENT, msg.encode())
        return {"ok": True, "pushed": n}

    def ice_candidates(
        self, client_id: uuid.UUID, candidates: list[str], invalidate: bool = False
    ) -> dict[str, Any]:
        """Relay a client's (invalidated) candidates to the gateways it has flows with."""
        msg: IceCandidates | InvalidateIceCandidates
        if invalidate:
            msg = InvalidateIceCandidates(client_id, tuple(candidates))
        else:
            msg = IceCandidates(client_id, tuple(candidates))
        gws = {f.gateway for f in self._flows.values() if f.client == client_id}
        n = sum(
            s.push(TOPIC, msg.EVENT, msg.encode()) for gid in sorted(gws) for _, s in self.joined_sockets(gid)
        )
        return {"ok": True, "pushed": n}

    def status(self) -> dict[str, Any]:
        return {
            "gateways": [
                {
                    "name": g.name,
                    "id": str(g.id),
                    "external_id": g.external_id,
                    "version": g.version,
                    "ipv4": str(g.ipv4),
                    "ipv6": str(g.ipv6),
                    "joined": any(c.gateway is g and TOPIC in c.sock.joins for c in self._conns.values()),
                }
                for g in sorted(self.gateways.values(), key=lambda g: g.name)
            ],
            "flows": [
                {
                    "gateway": str(f.gateway),
                    "client": str(f.client),
                    "resource": str(f.resource),
                    "expires_at": f.expires_at,
                }
                for f in sorted(self._flows.values(), key=lambda f: (f.gateway, f.client, f.resource))
            ],
            "received": [{"gateway": r.gateway, "event": r.event, "reply": r.reply} for r in self.received],
        }


def _replace_resource(cfg: PortalConfig, resource: Resource) -> PortalConfig:
    others = tuple(r for r in cfg.resources if r.id != resource.id)
    return replace(cfg, resources=(*others, resource))


@dataclass(slots=True)
class _Handler:
    """Binds a socket to the portal (the ``ChannelHandler`` of one connection)."""

    portal: DevPortal
    conn: int
    extra: dict[str, Any] = field(default_factory=dict)

    def join(self, sock: PhoenixSocket, topic: str, payload: Json) -> Reply:
        if topic != TOPIC:
            return Reply.error("unmatched topic")
        return Reply.success()

    def joined(self, sock: PhoenixSocket, topic: str) -> None:
        c = self.portal._conns.get(self.conn)
        if c is not None:
            init = self.portal.init_for(c.gateway)
            sock.push(TOPIC, init.EVENT, init.encode())
            for listener in list(self.portal.init_listeners):
                listener(c.gateway, init)

    def handle_in(self, sock: PhoenixSocket, topic: str, event: str, payload: Json) -> Reply | None:
        return self.portal._handle_in(self.conn, event, payload)
