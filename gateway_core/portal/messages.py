"""Typed application messages of the gateway channel (portal-protocol.md §2), current and legacy.

Inbound (portal -> gateway) and outbound (gateway -> portal) messages are frozen slotted dataclasses. Each
class knows its ``EVENT`` name, decodes itself from a payload (``decode``) and encodes itself back to the
exact JSON shape (``encode``). :func:`decode_inbound` / :func:`decode_outbound` dispatch on the event name
and raise :class:`DecodeError` only: an unknown event, a missing field or a wrong type makes the whole
message undecodable (§2.0); unknown fields are ignored (logged at debug level). The only list decoded
element by element is an ICE candidate list (§2.10): a non-string candidate is skipped on its own.

Both directions are decoded and encoded here because the stub and dev portals speak the other side.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, TypeVar

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

log = logging.getLogger("gateway_core.portal.messages")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# init (§2.2)


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
# authorize_flow / flow_authorized (§2.3)


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


@dataclass(frozen=True, slots=True)
class FlowAuthorized:
    EVENT: ClassVar[str] = "flow_authorized"
    ref: str

    @classmethod
    def decode(cls, payload: Json) -> FlowAuthorized:
        o = obj(payload, cls.EVENT)
        note_unknown(o, ("ref",), cls.EVENT)
        return cls(string(req(o, "ref", cls.EVENT), f"{cls.EVENT}.ref"))

    def encode(self) -> JsonObject:
        return {"ref": self.ref}


# --------------------------------------------------------------------------------------------------
# request_connection / connection_ready (legacy, §2.4)


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


@dataclass(frozen=True, slots=True)
class ConnectionReady:
    EVENT: ClassVar[str] = "connection_ready"
    ref: str
    ice_parameters: IceCredentials
    """The gateway's own (self-generated) ICE credentials for this legacy connection."""

    @classmethod
    def decode(cls, payload: Json) -> ConnectionReady:
        w = cls.EVENT
        o = obj(payload, w)
        note_unknown(o, ("ref", "gateway_payload"), w)
        gp = obj(req(o, "gateway_payload", w), f"{w}.gateway_payload")
        acc = obj(req(gp, "ConnectionAccepted", w), f"{w}.gateway_payload.ConnectionAccepted")
        return cls(
            string(req(o, "ref", w), f"{w}.ref"),
            IceCredentials.decode(req(acc, "ice_parameters", w), f"{w}.ice_parameters"),
        )

    def encode(self) -> JsonObject:
        return {
            "ref": self.ref,
            "gateway_payload": {"ConnectionAccepted": {"ice_parameters": self.ice_parameters.encode()}},
        }


# --------------------------------------------------------------------------------------------------
# allow_access (legacy, §2.5), reject_access (§2.6), resource_updated (§2.7), expiry (§2.8)


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
    """A bare resource description as payload: only its filters matter to the gateway (§2.7)."""

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
# relays_presence (§2.9)


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
# ICE candidates (§2.10, §2.11)


def _candidates(o: Mapping[str, Json], what: str) -> tuple[str, ...]:
    """Candidate strings; a non-string entry is skipped on its own (§2.10), the rest is kept."""
    items = array(req(o, "candidates", what), f"{what}.candidates")
    out = []
    for i, c in enumerate(items):
        if isinstance(c, str):
            out.append(c)
        else:
            log.warning("%s.candidates[%d]: not a string, skipped", what, i)
    return tuple(out)


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
        return cls(parse_uuid(req(o, "client_id", w), f"{w}.client_id"), _candidates(o, w))

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
        return cls(parse_uuid(req(o, "client_id", w), f"{w}.client_id"), _candidates(o, w))

    def encode(self) -> JsonObject:
        return {"client_id": str(self.client_id), "candidates": list(self.candidates)}


def _client_ids(o: Mapping[str, Json], what: str) -> tuple[uuid.UUID, ...]:
    ids = array(req(o, "client_ids", what), f"{what}.client_ids")
    return tuple(parse_uuid(i, f"{what}.client_ids[{n}]") for n, i in enumerate(ids))


@dataclass(frozen=True, slots=True)
class BroadcastIceCandidates:
    EVENT: ClassVar[str] = "broadcast_ice_candidates"
    client_ids: tuple[uuid.UUID, ...]
    candidates: tuple[str, ...]

    @classmethod
    def decode(cls, payload: Json) -> BroadcastIceCandidates:
        o = obj(payload, cls.EVENT)
        note_unknown(o, ("client_ids", "candidates"), cls.EVENT)
        return cls(_client_ids(o, cls.EVENT), _candidates(o, cls.EVENT))

    def encode(self) -> JsonObject:
        return {"client_ids": [str(i) for i in self.client_ids], "candidates": list(self.candidates)}


@dataclass(frozen=True, slots=True)
class BroadcastInvalidatedIceCandidates:
    EVENT: ClassVar[str] = "broadcast_invalidated_ice_candidates"
    client_ids: tuple[uuid.UUID, ...]
    candidates: tuple[str, ...]

    @classmethod
    def decode(cls, payload: Json) -> BroadcastInvalidatedIceCandidates:
        o = obj(payload, cls.EVENT)
        note_unknown(o, ("client_ids", "candidates"), cls.EVENT)
        return cls(_client_ids(o, cls.EVENT), _candidates(o, cls.EVENT))

    def encode(self) -> JsonObject:
        return {"client_ids": [str(i) for i in self.client_ids], "candidates": list(self.candidates)}


# --------------------------------------------------------------------------------------------------
# Dispatch

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

OutboundMessage = (
    FlowAuthorized | ConnectionReady | BroadcastIceCandidates | BroadcastInvalidatedIceCandidates
)
"""Gateway -> portal."""

_INBOUND: dict[str, Callable[[Json], InboundMessage]] = {
    c.EVENT: c.decode
    for c in (
        Init,
        AuthorizeFlow,
        RequestConnection,
        AllowAccess,
        RejectAccess,
        ResourceUpdated,
        AccessAuthorizationExpiryUpdated,
        RelaysPresence,
        IceCandidates,
        InvalidateIceCandidates,
    )
}

_OUTBOUND: dict[str, Callable[[Json], OutboundMessage]] = {
    c.EVENT: c.decode
    for c in (FlowAuthorized, ConnectionReady, BroadcastIceCandidates, BroadcastInvalidatedIceCandidates)
}

INBOUND_EVENTS = frozenset(_INBOUND)
OUTBOUND_EVENTS = frozenset(_OUTBOUND)


class UnknownEvent(DecodeError):
    """The event name is not one this side understands (counted apart from bad payloads)."""


def decode_inbound(event: str, payload: Json) -> InboundMessage:
    """A portal -> gateway message; :class:`DecodeError` (or :class:`UnknownEvent`) if it is not one."""
    dec = _INBOUND.get(event)
    if dec is None:
        raise UnknownEvent(f"unknown event {event!r}")
    return _guard(dec, payload)


def decode_outbound(event: str, payload: Json) -> OutboundMessage:
    """A gateway -> portal message (for the stub and dev portals)."""
    dec = _OUTBOUND.get(event)
    if dec is None:
        raise UnknownEvent(f"unknown event {event!r}")
    return _guard(dec, payload)


def _guard(dec: Callable[[Json], T], payload: Json) -> T:
    try:
        return dec(payload)
    except DecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
        # Belt and braces: a decoder bug must still surface as a drop, never escape the core (R6).
        raise DecodeError(f"malformed payload: {type(e).__name__}") from None


__all__ = [
    "INBOUND_EVENTS",
    "OUTBOUND_EVENTS",
    "AccessAuthorizationExpiryUpdated",
    "AllowAccess",
    "Authorization",
    "AuthorizeFlow",
    "BroadcastIceCandidates",
    "BroadcastInvalidatedIceCandidates",
    "ConnectionReady",
    "DnsServer",
    "FlowAuthorized",
    "IceCandidates",
    "InboundMessage",
    "Init",
    "Interface",
    "InvalidateIceCandidates",
    "LegacyClient",
    "LegacyPeer",
    "OutboundMessage",
    "RejectAccess",
    "RelaysPresence",
    "RequestConnection",
    "ResourceUpdated",
    "UnknownEvent",
    "decode_inbound",
    "decode_outbound",
]
