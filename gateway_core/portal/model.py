"""The portal's data model: scalars, resources, filters, clients, relays (Firezone:
``rust/connlib/tunnel/src/messages.rs``, ``rust/connlib/tunnel/src/messages/gateway.rs``).

Every type is a frozen slotted dataclass with a ``decode(obj)`` classmethod (from the parsed JSON value)
and an ``encode()`` method (to a JSON-ready value in the exact shape the portal uses). Decoders check
types strictly, as Firezone's serde types do (an integer is never a bool or a float, keys are padded
standard base64 of exactly 32 bytes, CIDRs are strict), and raise :class:`DecodeError` only. Unknown
fields are ignored (as by Firezone's serde types) and logged at debug level.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any, TypeAlias

from gateway_core.addr import IPAddress, IPNetwork, SocketAddr
from gateway_core.errors import DecodeError

log = logging.getLogger("gateway_core.portal.model")

Json: TypeAlias = Any
"""A parsed JSON value (dict, list, str, int, float, bool or None)."""

JsonObject: TypeAlias = dict[str, Any]

KEY_LEN = 32
"""WireGuard keys (public and pre-shared) are 32 bytes (``messages/key.rs``)."""

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1

_UUID_HYPHENATED = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID_SIMPLE = re.compile(r"[0-9a-fA-F]{32}")


# --------------------------------------------------------------------------------------------------
# Field access helpers: every one raises DecodeError only.


def obj(value: Json, what: str) -> Mapping[str, Json]:
    """``value`` as a JSON object."""
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def note_unknown(o: Mapping[str, Json], known: Iterable[str], what: str) -> None:
    """Log (debug) the fields of ``o`` that this decoder does not know; they are ignored."""
    if log.isEnabledFor(logging.DEBUG):
        extra = sorted(set(o) - set(known))
        if extra:
            log.debug("%s: ignoring unknown fields %s", what, extra)


def req(o: Mapping[str, Json], key: str, what: str) -> Json:
    """A required field (may be ``null`` only where the caller accepts it)."""
    if key not in o:
        raise DecodeError(f"{what}: missing field {key!r}")
    return o[key]


def string(value: Json, what: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def opt_string(value: Json, what: str) -> str | None:
    return None if value is None else string(value, what)


def integer(value: Json, what: str, lo: int = I64_MIN, hi: int = I64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise DecodeError(f"{what}: {value} out of range")
    return value


def boolean(value: Json, what: str) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"{what}: expected a bool, got {type(value).__name__}")
    return value


def array(value: Json, what: str) -> list[Json]:
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def default_array(o: Mapping[str, Json], key: str, what: str) -> list[Json]:
    """A list field that defaults to ``[]`` when absent (``null`` is not a list and fails, as in serde)."""
    return array(o[key], f"{what}.{key}") if key in o else []


def candidate_list(o: Mapping[str, Json], what: str) -> tuple[str, ...]:
    """Candidate strings; a non-string entry is skipped on its own (logged), the rest is kept."""
    items = array(req(o, "candidates", what), f"{what}.candidates")
    out = []
    for i, c in enumerate(items):
        if isinstance(c, str):
            out.append(c)
        else:
            log.warning("%s.candidates[%d]: not a string, skipped", what, i)
    return tuple(out)


def parse_uuid(value: Json, what: str) -> uuid.UUID:
    """A UUID in any form the Rust ``uuid`` crate accepts: hyphenated, simple, braced, ``urn:uuid:``."""
    s = string(value, what)
    body = s
    if len(s) == 38 and s[0] == "{" and s[-1] == "}":
        body = s[1:-1]
    elif s[:9].lower() == "urn:uuid:":
        body = s[9:]
    if _UUID_HYPHENATED.fullmatch(body) or (body is s and _UUID_SIMPLE.fullmatch(body)):
        return uuid.UUID(body)
    raise DecodeError(f"{what}: not a UUID: {s!r}")


def parse_key(value: Json, what: str) -> bytes:
    """A 32-byte key as padded standard base64 (44 characters)."""
    s = string(value, what)
    if len(s) != 44:
        raise DecodeError(f"{what}: a key is 44 base64 characters, got {len(s)}")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise DecodeError(f"{what}: invalid base64") from None
    if len(raw) != KEY_LEN:
        raise DecodeError(f"{what}: key is {len(raw)} bytes, expected {KEY_LEN}")
    return raw


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _ip_text(s: str, what: str) -> str:
    # Rust's parsers take no scope ids and no surrounding whitespace; Python's would.
    if "%" in s or s != s.strip() or not s.isascii():
        raise DecodeError(f"{what}: not an IP address: {s!r}")
    return s


def parse_ipv4(value: Json, what: str) -> IPv4Address:
    s = _ip_text(string(value, what), what)
    try:
        return IPv4Address(s)
    except ValueError:
        raise DecodeError(f"{what}: not an IPv4 address: {s!r}") from None


def parse_ipv6(value: Json, what: str) -> IPv6Address:
    s = _ip_text(string(value, what), what)
    try:
        return IPv6Address(s)
    except ValueError:
        raise DecodeError(f"{what}: not an IPv6 address: {s!r}") from None


def parse_ip(value: Json, what: str) -> IPAddress:
    s = _ip_text(string(value, what), what)
    try:
        return ip_address(s)
    except ValueError:
        raise DecodeError(f"{what}: not an IP address: {s!r}") from None


def parse_socket_addr(value: Json, what: str) -> SocketAddr:
    """``"1.2.3.4:3478"`` or ``"[2001:db8::1]:3478"``."""
    s = string(value, what)
    host, sep, port = s.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5:
        raise DecodeError(f"{what}: not a socket address: {s!r}")
    p = int(port)
    if p > 65535:
        raise DecodeError(f"{what}: port out of range: {s!r}")
    if host.startswith("[") and host.endswith("]"):
        return SocketAddr(parse_ipv6(host[1:-1], what), p)
    return SocketAddr(parse_ipv4(host, what), p)


def parse_cidr(value: Json, what: str) -> IPNetwork:
    """A strict CIDR: the ``/prefix`` is mandatory and host bits must be zero (``ip_network`` 0.4)."""
    s = _ip_text(string(value, what), what)
    _addr, sep, prefix = s.partition("/")
    if not sep or not prefix.isascii() or not prefix.isdigit() or len(prefix) > 3:
        raise DecodeError(f"{what}: not a CIDR: {s!r}")
    try:
        return ip_network(s, strict=True)
    except ValueError:
        raise DecodeError(f"{what}: not a CIDR: {s!r}") from None


def parse_timestamp(value: Json, what: str) -> int:
    """Unix seconds as a JSON integer (floats and strings are rejected)."""
    return integer(value, what)


def parse_opt_timestamp(o: Mapping[str, Json], key: str, what: str) -> int | None:
    """A timestamp that must be present but may be ``null`` (Firezone's timestamp helper)."""
    v = req(o, key, what)
    return None if v is None else parse_timestamp(v, f"{what}.{key}")


def parse_dns_name(value: Json, what: str) -> str:
    """A DNS name as text (labels of 1-63 bytes, 255 bytes in all)."""
    s = string(value, what)
    text = s[:-1] if s.endswith(".") else s
    if not text or not s.isascii() or len(text) > 253:
        raise DecodeError(f"{what}: not a DNS name: {s!r}")
    for label in text.split("."):
        if not 0 < len(label) <= 63:
            raise DecodeError(f"{what}: not a DNS name: {s!r}")
    return s


# --------------------------------------------------------------------------------------------------
# Filters


class FilterProtocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter: TCP/UDP with an inclusive destination port range, or ICMP (no ports)."""

    protocol: FilterProtocol
    port_range_start: int = 0
    port_range_end: int = 65535

    @classmethod
    def decode(cls, value: Json, what: str = "filter") -> Filter:
        o = obj(value, what)
        proto = string(req(o, "protocol", what), f"{what}.protocol")
        if proto == "icmp":
            note_unknown(o, ("protocol",), what)
            return cls(FilterProtocol.ICMP)
        if proto not in ("tcp", "udp"):
            raise DecodeError(f"{what}: unknown protocol {proto!r}")
        note_unknown(o, ("protocol", "port_range_start", "port_range_end"), what)
        start = integer(o.get("port_range_start", 0), f"{what}.port_range_start", 0, 65535)
        end = integer(o.get("port_range_end", 65535), f"{what}.port_range_end", 0, 65535)
        return cls(FilterProtocol(proto), start, end)

    def encode(self) -> JsonObject:
        if self.protocol is FilterProtocol.ICMP:
            return {"protocol": "icmp"}
        return {
            "protocol": self.protocol.value,
            "port_range_start": self.port_range_start,
            "port_range_end": self.port_range_end,
        }


def _filters(o: Mapping[str, Json], what: str) -> tuple[Filter, ...]:
    items = array(req(o, "filters", what), f"{what}.filters")
    return tuple(Filter.decode(f, f"{what}.filters[{i}]") for i, f in enumerate(items))


# --------------------------------------------------------------------------------------------------
# Resources


@dataclass(frozen=True, slots=True)
class CidrResource:
    id: uuid.UUID
    address: IPNetwork
    name: str
    filters: tuple[Filter, ...] = ()

    def encode(self) -> JsonObject:
        return {
            "id": str(self.id),
            "type": "cidr",
            "address": str(self.address),
            "name": self.name,
            "filters": [f.encode() for f in self.filters],
        }


@dataclass(frozen=True, slots=True)
class DnsResource:
    id: uuid.UUID
    address: str
    """The domain pattern (``*``, ``**`` and ``?`` wildcards)."""
    name: str
    filters: tuple[Filter, ...] = ()

    def encode(self) -> JsonObject:
        return {
            "id": str(self.id),
            "type": "dns",
            "address": self.address,
            "name": self.name,
            "filters": [f.encode() for f in self.filters],
        }


@dataclass(frozen=True, slots=True)
class InternetResource:
    id: uuid.UUID

    def encode(self) -> JsonObject:
        return {"id": str(self.id), "type": "internet"}


Resource = CidrResource | DnsResource | InternetResource

_RESOURCE_FIELDS = ("id", "type", "address", "name", "filters")


def decode_resource(value: Json, what: str = "resource") -> Resource:
    o = obj(value, what)
    kind = string(req(o, "type", what), f"{what}.type")
    rid = parse_uuid(req(o, "id", what), f"{what}.id")
    if kind == "internet":
        return InternetResource(rid)  # every other field is irrelevant
    note_unknown(o, _RESOURCE_FIELDS, what)
    name = string(req(o, "name", what), f"{what}.name")
    filters = _filters(o, what)
    if kind == "cidr":
        return CidrResource(rid, parse_cidr(req(o, "address", what), f"{what}.address"), name, filters)
    if kind == "dns":
        return DnsResource(rid, string(req(o, "address", what), f"{what}.address"), name, filters)
    raise DecodeError(f"{what}: unknown resource type {kind!r}")


# --------------------------------------------------------------------------------------------------
# ICE credentials, clients, subjects


@dataclass(frozen=True, slots=True)
class IceCredentials:
    username: str
    password: str

    @classmethod
    def decode(cls, value: Json, what: str) -> IceCredentials:
        o = obj(value, what)
        note_unknown(o, ("username", "password"), what)
        return cls(
            string(req(o, "username", what), f"{what}.username"),
            string(req(o, "password", what), f"{what}.password"),
        )

    def encode(self) -> JsonObject:
        return {"username": self.username, "password": self.password}


CLIENT_METADATA = (
    "version",
    "device_serial",
    "device_os_name",
    "device_os_version",
    "device_uuid",
    "identifier_for_vendor",
    "firebase_installation_id",
)
"""Optional client fields used only in flow logs (default ``null``)."""


@dataclass(frozen=True, slots=True)
class Client:
    """The client of an ``authorize_flow``."""

    id: uuid.UUID
    public_key: bytes
    preshared_key: bytes
    ipv4: IPv4Address
    ipv6: IPv6Address
    metadata: tuple[tuple[str, str], ...] = ()
    """The non-null flow-log fields of :data:`CLIENT_METADATA`, in that order."""

    @classmethod
    def decode(cls, value: Json, what: str = "client") -> Client:
        o = obj(value, what)
        note_unknown(o, ("id", "public_key", "preshared_key", "ipv4", "ipv6", *CLIENT_METADATA), what)
        meta: list[tuple[str, str]] = []
        for k in CLIENT_METADATA:
            v = opt_string(o.get(k), f"{what}.{k}")
            if v is not None:
                meta.append((k, v))
        return cls(
            parse_uuid(req(o, "id", what), f"{what}.id"),
            parse_key(req(o, "public_key", what), f"{what}.public_key"),
            parse_key(req(o, "preshared_key", what), f"{what}.preshared_key"),
            parse_ipv4(req(o, "ipv4", what), f"{what}.ipv4"),
            parse_ipv6(req(o, "ipv6", what), f"{what}.ipv6"),
            tuple(meta),
        )

    def encode(self) -> JsonObject:
        out: JsonObject = {
            "id": str(self.id),
            "public_key": encode_key(self.public_key),
            "preshared_key": encode_key(self.preshared_key),
            "ipv4": str(self.ipv4),
            "ipv6": str(self.ipv6),
        }
        out.update(self.metadata)
        return out


SUBJECT_FIELDS = ("identity_id", "identity_name", "actor_id", "actor_email")


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is behind a flow (flow logs only; every field optional)."""

    identity_id: str | None = None
    identity_name: str | None = None
    actor_id: str | None = None
    actor_email: str | None = None

    @classmethod
    def decode(cls, value: Json, what: str = "subject") -> Subject:
        o = obj(value, what)
        note_unknown(o, SUBJECT_FIELDS, what)
        return cls(*(opt_string(o.get(k), f"{what}.{k}") for k in SUBJECT_FIELDS))

    def encode(self) -> JsonObject:
        return {k: getattr(self, k) for k in SUBJECT_FIELDS if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """A legacy DNS-resource request: the domain to resolve and the client's proxy IPs for it
    (``request_connection``)."""

    name: str
    proxy_ips: tuple[IPAddress, ...] = ()

    @classmethod
    def decode(cls, value: Json, what: str) -> ResolveRequest:
        o = obj(value, what)
        note_unknown(o, ("name", "proxy_ips"), what)
        ips = array(req(o, "proxy_ips", what), f"{what}.proxy_ips")
        return cls(
            parse_dns_name(req(o, "name", what), f"{what}.name"),
            tuple(parse_ip(ip, f"{what}.proxy_ips[{i}]") for i, ip in enumerate(ips)),
        )

    def encode(self) -> JsonObject:
        return {"name": self.name, "proxy_ips": [str(ip) for ip in self.proxy_ips]}


# --------------------------------------------------------------------------------------------------
# Relays


@dataclass(frozen=True, slots=True)
class TurnRelay:
    id: uuid.UUID
    addr: SocketAddr
    username: str
    password: str
    expires_at: int

    def encode(self) -> JsonObject:
        return {
            "id": str(self.id),
            "type": "turn",
            "addr": str(self.addr),
            "username": self.username,
            "password": self.password,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class StunRelay:
    id: uuid.UUID
    addr: SocketAddr

    def encode(self) -> JsonObject:
        return {"id": str(self.id), "type": "stun", "addr": str(self.addr)}


Relay = TurnRelay | StunRelay


def decode_relay(value: Json, what: str = "relay") -> Relay:
    o = obj(value, what)
    kind = string(req(o, "type", what), f"{what}.type")
    rid = parse_uuid(req(o, "id", what), f"{what}.id")
    addr = parse_socket_addr(req(o, "addr", what), f"{what}.addr")
    if kind == "stun":
        note_unknown(o, ("id", "type", "addr"), what)
        return StunRelay(rid, addr)
    if kind != "turn":
        raise DecodeError(f"{what}: unknown relay type {kind!r}")
    note_unknown(o, ("id", "type", "addr", "username", "password", "expires_at"), what)
    return TurnRelay(
        rid,
        addr,
        string(req(o, "username", what), f"{what}.username"),
        string(req(o, "password", what), f"{what}.password"),
        parse_timestamp(req(o, "expires_at", what), f"{what}.expires_at"),
    )


def decode_relays(values: list[Json], what: str) -> tuple[Relay, ...]:
    """A relay list; one bad entry invalidates the whole list (as in Firezone, where the whole
    message then fails to decode)."""
    return tuple(decode_relay(r, f"{what}[{i}]") for i, r in enumerate(values))


__all__ = [
    "CLIENT_METADATA",
    "CidrResource",
    "Client",
    "DnsResource",
    "Filter",
    "FilterProtocol",
    "IceCredentials",
    "InternetResource",
    "Relay",
    "ResolveRequest",
    "Resource",
    "StunRelay",
    "Subject",
    "TurnRelay",
    "decode_relay",
    "decode_resource",
]
