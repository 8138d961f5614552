"""Resource descriptions as the gateway's policy sees them (portal-protocol.md §3.2-3.3).

A resource is a CIDR network, a DNS name pattern or "the Internet", each with a list of filters
(:mod:`gateway_core.policy.filters`; none for the Internet resource). :func:`decode_resource` takes the
JSON object the portal sends (already parsed into a ``dict``) and checks it as strictly as Firezone's
serde types do (``rust/connlib/tunnel/src/messages/gateway.rs:23-93``): the ``type`` tag, a UUID ``id``,
for ``cidr``/``dns`` a required ``name``, ``address`` and ``filters``; a strict CIDR (``/prefix``
mandatory, no host bits); filters tagged by ``protocol`` with ports in ``0..=65535`` (defaults 0 and
65535). Anything else raises :class:`DecodeError`. Unknown fields are ignored. A typed portal message can
be mapped here with ``decode_resource(message.encode())``.

A filter range with ``start > end`` is not a decode error: it is kept, logged once here, and matches no
port (docs/decisions/0040-policy-filter-range-start-after-end.md).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import ip_network
from typing import Any

from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.errors import DecodeError
from gateway_core.policy.filters import PORT_MAX, Filter, FilterProtocol, Filters

log = logging.getLogger("gateway_core.policy.resources")

INTERNET_NAME = "Internet"
"""The name flow logs give the Internet resource (``client_on_gateway.rs`` ``name()``)."""


class ResourceKind(StrEnum):
    CIDR = "cidr"
    DNS = "dns"
    INTERNET = "internet"


@dataclass(frozen=True, slots=True)
class CidrResource:
    """Traffic to ``network`` is allowed subject to ``filters``."""

    id: uuid.UUID
    name: str
    network: IPNetwork
    filters: Filters = ()

    kind = ResourceKind.CIDR

    def address_for(self, dst: IPAddress) -> str:
        """The resource address shown in flow logs."""
        return str(self.network)


@dataclass(frozen=True, slots=True)
class DnsResource:
    """Traffic to proxy IPs of domains matching ``address`` (a pattern) is allowed subject to ``filters``."""

    id: uuid.UUID
    name: str
    address: str
    filters: Filters = ()

    kind = ResourceKind.DNS

    def address_for(self, dst: IPAddress) -> str:
        return self.address


@dataclass(frozen=True, slots=True)
class InternetResource:
    """Everything outside the DNS proxy ranges is allowed, without filters."""

    id: uuid.UUID

    kind = ResourceKind.INTERNET

    @property
    def name(self) -> str:
        return INTERNET_NAME

    @property
    def filters(self) -> Filters:
        return ()

    def address_for(self, dst: IPAddress) -> str:
        return "0.0.0.0/0" if dst.version == 4 else "::/0"


ResourceDescription = CidrResource | DnsResource | InternetResource


# --------------------------------------------------------------------------------------------------
# Decoding. Every helper raises DecodeError only.


def _field(o: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in o:
        raise DecodeError(f"{what}: missing field {key!r}")
    return o[key]


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def _port(o: Mapping[str, Any], key: str, default: int, what: str) -> int:
    if key not in o:
        return default
    v = o[key]
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= PORT_MAX:
        raise DecodeError(f"{what}.{key}: expected a port number, got {v!r}")
    return v


def decode_uuid(value: Any, what: str) -> uuid.UUID:
    """A UUID string in any form the Rust ``uuid`` crate parses (hyphenated, simple, braced, URN)."""
    s = _str(value, what)
    body = s
    if len(s) == 38 and s[0] == "{" and s[-1] == "}":
        body = s[1:-1]
    elif s[:9].lower() == "urn:uuid:":
        body = s[9:]
    ok = len(body) == 36 and all(body[i] == "-" for i in (8, 13, 18, 23))
    ok = ok or (body is s and len(body) == 32)
    hexdigits = body.replace("-", "") if len(body) == 36 else body
    if not ok or len(hexdigits) != 32 or not all(c in "0123456789abcdefABCDEF" for c in hexdigits):
        raise DecodeError(f"{what}: not a UUID: {s!r}")
    return uuid.UUID(hex=hexdigits)


def decode_cidr(value: Any, what: str) -> IPNetwork:
    """A strict CIDR: the ``/prefix`` is mandatory and host bits must be zero (``ip_network`` 0.4)."""
    s = _str(value, what)
    _addr, sep, prefix = s.partition("/")
    if not sep or not s.isascii() or "%" in s or s != s.strip() or not prefix.isdigit() or len(prefix) > 3:
        raise DecodeError(f"{what}: not a CIDR: {s!r}")
    try:
        return ip_network(s, strict=True)
    except ValueError:
        raise DecodeError(f"{what}: not a CIDR: {s!r}") from None


def decode_filter(value: Any, what: str = "filter") -> Filter:
    """One filter object (portal-protocol.md §3.3)."""
    if not isinstance(value, Mapping):
        raise DecodeError(f"{what}: expected an object")
    proto = _str(_field(value, "protocol", what), f"{what}.protocol")
    if proto == "icmp":
        return Filter(FilterProtocol.ICMP)
    if proto not in ("tcp", "udp"):
        raise DecodeError(f"{what}: unknown protocol {proto!r}")
    start = _port(value, "port_range_start", 0, what)
    end = _port(value, "port_range_end", PORT_MAX, what)
    return Filter(FilterProtocol(proto), start, end)


def decode_filters(value: Any, what: str = "filters") -> Filters:
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected a list")
    return tuple(decode_filter(f, f"{what}[{i}]") for i, f in enumerate(value))


def _warn_invalid_ranges(rid: uuid.UUID, filters: Filters) -> None:
    for f in filters:
        if not f.is_valid:
            log.warning(
                "resource %s: rejecting %s filter with port_range_start %d > port_range_end %d; "
                "it allows no port (decision 0040)",
                rid,
                f.protocol.value,
                f.port_range_start,
                f.port_range_end,
            )


def decode_resource(value: Any, what: str = "resource") -> ResourceDescription:
    """A resource description from the portal's JSON object (portal-protocol.md §3.2)."""
    if not isinstance(value, Mapping):
        raise DecodeError(f"{what}: expected an object")
    kind = _str(_field(value, "type", what), f"{what}.type")
    if kind not in ("cidr", "dns", "internet"):
        raise DecodeError(f"{what}: unknown resource type {kind!r}")
    rid = decode_uuid(_field(value, "id", what), f"{what}.id")
    if kind == "internet":
        return InternetResource(rid)  # every other field is irrelevant
    name = _str(_field(value, "name", what), f"{what}.name")
    filters = decode_filters(_field(value, "filters", what), f"{what}.filters")
    address = _field(value, "address", what)
    resource: ResourceDescription
    if kind == "cidr":
        resource = CidrResource(rid, name, decode_cidr(address, f"{what}.address"), filters)
    else:
        resource = DnsResource(rid, name, _str(address, f"{what}.address"), filters)
    _warn_invalid_ranges(rid, filters)
    return resource


def encode_resource(resource: ResourceDescription) -> dict[str, Any]:
    """The portal's JSON shape of ``resource`` (for the simulated portal and round-trip tests)."""
    if isinstance(resource, InternetResource):
        return {"id": str(resource.id), "type": "internet"}
    filters: list[dict[str, Any]] = []
    for f in resource.filters:
        if f.protocol is FilterProtocol.ICMP:
            filters.append({"protocol": "icmp"})
        else:
            filters.append(
                {
                    "protocol": f.protocol.value,
                    "port_range_start": f.port_range_start,
                    "port_range_end": f.port_range_end,
                }
            )
    address = str(resource.network) if isinstance(resource, CidrResource) else resource.address
    return {
        "id": str(resource.id),
        "type": resource.kind.value,
        "address": address,
        "name": resource.name,
        "filters": filters,
    }
