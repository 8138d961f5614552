"""The portal's messages to the gateway (inbound), current and legacy, as typed dataclasses.

Each class knows its ``EVENT`` name, decodes itself from a payload (``decode``, raising
:class:`~gateway_core.errors.DecodeError` only) and encodes itself back to the exact JSON shape
(``encode``, which the stub and dev portals use). Dispatch on the event name is
:func:`gateway_core.portal.messages.decode_inbound`; every name here is re-exported there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar

from gateway_core.errors import DecodeError
from gateway_core.portal.model import (
    Client,
    IceCredentials,
    Json,
    JsonObject,
    Relay,
    ResolveRequest,
    Resource,
    Subject,
    array,
    boolean,
    candidate_list,
    decode_relays,
    decode_resource,
    default_array,
    encode_key,
    integer,
    note_unknown,
    obj,
    opt_string,
    parse_dns_name,
    parse_ip,
    parse_ipv4,
    parse_ipv6,
    parse_key,
    parse_opt_timestamp,
    parse_timestamp,
    parse_uuid,
    req,
    string,
)

# --------------------------------------------------------------------------------------------------
# init


@dataclass(frozen=True, slots=True)
class DnsServer:
    """A client-only upstream DNS server of ``init.interface`` (parsed, then ignored by the gateway)."""

    address: str

    @classmethod
    def decode(cls, value: Json, what: str) -> DnsServer:
        o = obj(value, what)
        note_unknown(o, ("protocol", "address"), what)
        if string(req(o, "protocol", what), f"{what}.protocol") != "ip_port":
            raise DecodeError(f"{what}: unknown protocol")
        addr = string(req(o, "address", what), f"{what}.address")
        host, sep, port = addr.rpartition(":")
        if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
            raise DecodeError(f"{what}: bad address {addr!r}")
        parse_ip(host[1:-1] if host.startswith("[") and host.endswith("]") else host, f"{what}.address")
        return cls(addr)

    def encode(self) -> JsonObject:
        return {"protocol": "ip_port", "address": self.address}


@dataclass(frozen=True, slots=True)
class Interface:
    ipv4: IPv4Address
    ipv6: IPv6Address
    upstream_dns: tuple[DnsServer, ...] = ()
    search_domain: str | None = None

    @classmethod
    def decode(cls, value: Json, what: str = "interface") -> Interface:
        o = obj(value, what)
        note_unknown(o, ("ipv4", "ipv6", "upstream_dns", "search_domain"), what)
        dns = default_array(o, "upstream_dns", what)
        sd = o.get("search_domain")
        return cls(
            parse_ipv4(req(o, "ipv4", what), f"{what}.ipv4"),
            parse_ipv6(req(o, "ipv6", what), f"{what}.ipv6"),
            tuple(DnsServer.decode(d, f"{what}.upstream_dns[{i}]") for i, d in enumerate(dns)),
            None if sd is None else parse_dns_name(sd, f"{what}.search_domain"),
        )

    def encode(self) -> JsonObject:
        out: JsonObject = {"ipv4": str(self.ipv4), "ipv6": str(self.ipv6)}
        if self.upstream_dns:
            out["upstream_dns"] = [d.encode() for d in self.upstream_dns]
        if self.search_domain is not None:
            out["search_domain"] = self.search_domain
        return out


@dataclass(frozen=True, slots=True)
class Authorization:
    client_id: uuid.UUID
    resource_id: uuid.UUID
    expires_at: int

    @classmethod
    def decode(cls, value: Json, what: str) -> Authorization:
        o = obj(value, what)
        note_unknown(o, ("client_id", "resource_id", "expires_at"), what)
        return cls(
            parse_uuid(req(o, "client_id", what), f"{what}.client_id"),
            parse_uuid(req(o, "resource_id", what), f"{what}.resource_id"),
            parse_timestamp(req(o, "expires_at", what), f"{what}.expires_at"),
        )

    def encode(self) -> JsonObject:
        return {
            "client_id": str(self.client_id),
            "resource_id": str(self.resource_id),
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class Init:
    EVENT: ClassVar[str] = "init"
    interface: Interface
    ipv4_masquerade_enabled: bool = True
    ipv6_masquerade_enabled: bool = True
    relays: tuple[Relay, ...] = ()
    account_slug: str | None = None
    authorizations: tuple[Authorization, ...] = ()

    @classmethod
    def decode(cls, payload: Json) -> Init:
        w = "init"
        o = obj(payload, w)
        note_unknown(o, ("interface", "config", "relays", "account_slug", "authorizations"), w)
        cfg = obj(req(o, "config", w), f"{w}.config")
        note_unknown(cfg, ("ipv4_masquerade_enabled", "ipv6_masquerade_enabled"), f"{w}.config")
        auths = default_array(o, "authorizations", w)
        return cls(
            Interface.decode(req(o, "interface", w), f"{w}.interface"),
            boolean(req(cfg, "ipv4_masquerade_enabled", w), f"{w}.config.ipv4_masquerade_enabled"),
            boolean(req(cfg, "ipv6_masquerade_enabled", w), f"{w}.config.ipv6_masquerade_enabled"),
            decode_relays(default_array(o, "relays", w), f"{w}.relays"),
            opt_string(o.get("account_slug"), f"{w}.account_slug"),
            tuple(Authorization.decode(a, f"{w}.authorizations[{i}]") for i, a in enumerate(auths)),
        )

    def encode(self) -> JsonObject:
        return {
            "authorizations": [a.encode() for a in self.authorizations],
            "account_slug": self.account_slug,
            "interface": self.interface.encode(),
            "relays": [r.encode() for r in self.relays],
            "config": {
                "ipv4_masquerade_enabled": self.ipv4_masquerade_enabled,
                "ipv6_masquerade_enabled": self.ipv6_masquerade_enabled,
            },
        }


# --------------------------------------------------------------------------------------------------
# authorize_flow


@dataclass(frozen=True, slots=True)
class AuthorizeFlow:
    EVENT: ClassVar[str] = "authorize_flow"
    ref: str
    resource: Resource
    client: Client
    client_ice_credentials: IceCredentials
    gateway_ice_credentials: IceCredentials
    expires_at: int | None
    subject: Subject = Subject()

    @classmethod
    def decode(cls, payload: Json) -> AuthorizeFlow:
        w = "authorize_flow"
        o = obj(payload, w)
        note_unknown(
            o,
            (
                "ref",
                "resource",
                "client",
                "client_ice_credentials",
                "gateway_ice_credentials",
                "expires_at",
                "subject",
            ),
            w,
        )
        # ``subject`` defaults to {} when absent; null is not a Subject (serde ``#[serde(default)]``).
        subj = Subject.decode(o["subject"], f"{w}.subject") if "subject" in o else Subject()
        return cls(
            string(req(o, "ref", w), f"{w}.ref"),
            decode_resource(req(o, "resource", w), f"{w}.resource"),
            Client.decode(req(o, "client", w), f"{w}.client"),
            IceCredentials.decode(req(o, "client_ice_credentials", w), f"{w}.client_ice_credentials"),
            IceCredentials.decode(req(o, "gateway_ice_credentials", w), f"{w}.gateway_ice_credentials"),
            parse_opt_timestamp(o, "expires_at", w),
            subj,
        )

    def encode(self) -> JsonObject:
        return {
            "ref": self.ref,
            "resource": self.resource.encode(),
            "client": self.client.encode(),
            "client_ice_credentials": self.client_ice_credentials.encode(),
            "gateway_ice_credentials": self.gateway_ice_credentials.encode(),
            "expires_at": self.expires_at,
            "subject": self.subject.encode(),
        }


# --------------------------------------------------------------------------------------------------
# request_connection (legacy)


@dataclass(frozen=True, slots=True)
class LegacyPeer:
    public_key: bytes
    preshared_key: bytes
    ipv4: IPv4Address
    ipv6: IPv6Address
    persistent_keepalive: int | None = None

    @classmethod
    def decode(cls, value: Json, what: str) -> LegacyPeer:
        o = obj(value, what)
        note_unknown(o, ("public_key", "preshared_key", "ipv4", "ipv6", "persistent_keepalive"), what)
        ka = o.get("persistent_keepalive")
        return cls(
            parse_key(req(o, "public_key", what), f"{what}.public_key"),
            parse_key(req(o, "preshared_key", what), f"{what}.preshared_key"),
            parse_ipv4(req(o, "ipv4", what), f"{what}.ipv4"),
            parse_ipv6(req(o, "ipv6", what), f"{what}.ipv6"),
            None if ka is None else integer(ka, f"{what}.persistent_keepalive", 0, 65535),
        )

    def encode(self) -> JsonObject:
        out: JsonObject = {
            "public_key": encode_key(self.public_key),
            "preshared_key": encode_key(self.preshared_key),
            "ipv4": str(self.ipv4),
            "ipv6": str(self.ipv6),
        }
        if self.persistent_keepalive is not None:
            out["persistent_keepalive"] = self.persistent_keepalive
        return out


@dataclass(frozen=True, slots=True)
class LegacyClient:
    id: uuid.UUID
    peer: LegacyPeer
    ice_parameters: IceCredentials
    domain: ResolveRequest | None = None

    @classmethod
    def decode(cls, value: Json, what: str) -> LegacyClient:
        o = obj(value, what)
        note_unknown(o, ("id", "peer", "payload"), what)
        p = obj(req(o, "payload", what), f"{what}.payload")
        note_unknown(p, ("ice_parameters", "domain"), f"{what}.payload")
        dom = p.get("domain")
        return cls(
            parse_uuid(req(o, "id", what), f"{what}.id"),
            LegacyPeer.decode(req(o, "peer", what), f"{what}.peer"),
            IceCredentials.decode(req(p, "ice_parameters", what), f"{what}.payload.ice_parameters"),
            None if dom is None else ResolveRequest.decode(dom, f"{what}.payload.domain"),
        )

    def encode(self) -> JsonObject:
        payload: JsonObject = {"ice_parameters": self.ice_parameters.encode()}
        if self.domain is not None:
            payload["domain"] = self.domain.encode()
        return {"id": str(self.id), "peer": self.peer.encode(), "payload": payload}


@dataclass(frozen=True, slots=True)
class RequestConnection:
    EVENT: ClassVar[str] = "request_connection"
    ref: str
    resource: Resource
    client: LegacyClient
    expires_at: int | None

    @classmethod
    def decode(cls, payload: Json) -> RequestConnection:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("ref", "resource", "client", "expires_at"), w)
        return cls(
            string(req(o, "ref", w), f"{w}.ref"),
            decode_resource(req(o, "resource", w), f"{w}.resource"),
            LegacyClient.decode(req(o, "client", w), f"{w}.client"),
            parse_opt_timestamp(o, "expires_at", w),
        )

    def encode(self) -> JsonObject:
        return {
            "ref": self.ref,
            "resource": self.resource.encode(),
            "client": self.client.encode(),
            "expires_at": self.expires_at,
        }


# --------------------------------------------------------------------------------------------------
# allow_access (legacy), reject_access, resource_updated, access_authorization_expiry_updated


@dataclass(frozen=True, slots=True)
class AllowAccess:
    EVENT: ClassVar[str] = "allow_access"
    ref: str
    client_id: uuid.UUID
    resource: Resource
    expires_at: int | None
    payload: ResolveRequest | None
    client_ipv4: IPv4Address
    client_ipv6: IPv6Address

    @classmethod
    def decode(cls, payload: Json) -> AllowAccess:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(
            o, ("ref", "client_id", "resource", "expires_at", "payload", "client_ipv4", "client_ipv6"), w
        )
        p = o.get("payload")
        return cls(
            string(req(o, "ref", w), f"{w}.ref"),
            parse_uuid(req(o, "client_id", w), f"{w}.client_id"),
            decode_resource(req(o, "resource", w), f"{w}.resource"),
            parse_opt_timestamp(o, "expires_at", w),
            None if p is None else ResolveRequest.decode(p, f"{w}.payload"),
            parse_ipv4(req(o, "client_ipv4", w), f"{w}.client_ipv4"),
            parse_ipv6(req(o, "client_ipv6", w), f"{w}.client_ipv6"),
        )

    def encode(self) -> JsonObject:
        return {
            "ref": self.ref,
            "client_id": str(self.client_id),
            "resource": self.resource.encode(),
            "expires_at": self.expires_at,
            "payload": None if self.payload is None else self.payload.encode(),
            "client_ipv4": str(self.client_ipv4),
            "client_ipv6": str(self.client_ipv6),
        }


@dataclass(frozen=True, slots=True)
class RejectAccess:
    EVENT: ClassVar[str] = "reject_access"
    client_id: uuid.UUID
    resource_id: uuid.UUID

    @classmethod
    def decode(cls, payload: Json) -> RejectAccess:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("client_id", "resource_id"), w)
        return cls(
            parse_uuid(req(o, "client_id", w), f"{w}.client_id"),
            parse_uuid(req(o, "resource_id", w), f"{w}.resource_id"),
        )

    def encode(self) -> JsonObject:
        return {"client_id": str(self.client_id), "resource_id": str(self.resource_id)}


@dataclass(frozen=True, slots=True)
class ResourceUpdated:
    """A bare resource description as payload: only its filters matter to the gateway."""

    EVENT: ClassVar[str] = "resource_updated"
    resource: Resource

    @classmethod
    def decode(cls, payload: Json) -> ResourceUpdated:
        return cls(decode_resource(payload, cls.EVENT))

    def encode(self) -> JsonObject:
        return self.resource.encode()


@dataclass(frozen=True, slots=True)
class AccessAuthorizationExpiryUpdated:
    EVENT: ClassVar[str] = "access_authorization_expiry_updated"
    client_id: uuid.UUID
    resource_id: uuid.UUID
    expires_at: int

    @classmethod
    def decode(cls, payload: Json) -> AccessAuthorizationExpiryUpdated:
        a = Authorization.decode(payload, cls.EVENT)  # the same three fields as an init authorisation
        return cls(a.client_id, a.resource_id, a.expires_at)

    def encode(self) -> JsonObject:
        return Authorization(self.client_id, self.resource_id, self.expires_at).encode()


# --------------------------------------------------------------------------------------------------
# relays_presence


@dataclass(frozen=True, slots=True)
class RelaysPresence:
    EVENT: ClassVar[str] = "relays_presence"
    disconnected_ids: tuple[uuid.UUID, ...]
    connected: tuple[Relay, ...]

    @classmethod
    def decode(cls, payload: Json) -> RelaysPresence:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("disconnected_ids", "connected"), w)
        ids = array(req(o, "disconnected_ids", w), f"{w}.disconnected_ids")
        return cls(
            tuple(parse_uuid(i, f"{w}.disconnected_ids[{n}]") for n, i in enumerate(ids)),
            decode_relays(array(req(o, "connected", w), f"{w}.connected"), f"{w}.connected"),
        )

    def encode(self) -> JsonObject:
        return {
            "disconnected_ids": [str(i) for i in self.disconnected_ids],
            "connected": [r.encode() for r in self.connected],
        }


# --------------------------------------------------------------------------------------------------
# ICE candidates


@dataclass(frozen=True, slots=True)
class IceCandidates:
    EVENT: ClassVar[str] = "ice_candidates"
    client_id: uuid.UUID
    candidates: tuple[str, ...]

    @classmethod
    def decode(cls, payload: Json) -> IceCandidates:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("client_id", "candidates"), w)
        return cls(parse_uuid(req(o, "client_id", w), f"{w}.client_id"), candidate_list(o, w))

    def encode(self) -> JsonObject:
        return {"client_id": str(self.client_id), "candidates": list(self.candidates)}


@dataclass(frozen=True, slots=True)
class InvalidateIceCandidates:
    EVENT: ClassVar[str] = "invalidate_ice_candidates"
    client_id: uuid.UUID
    candidates: tuple[str, ...]

    @classmethod
    def decode(cls, payload: Json) -> InvalidateIceCandidates:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("client_id", "candidates"), w)
        return cls(parse_uuid(req(o, "client_id", w), f"{w}.client_id"), candidate_list(o, w))

    def encode(self) -> JsonObject:
        return {"client_id": str(self.client_id), "candidates": list(self.candidates)}


# --------------------------------------------------------------------------------------------------

InboundMessage = (
    Init
    | AuthorizeFlow
    | RequestConnection
    | AllowAccess
    | RejectAccess
    | ResourceUpdated
    | AccessAuthorizationExpiryUpdated
    | RelaysPresence
    | IceCandidates
    | InvalidateIceCandidates
)
"""Portal -> gateway."""
