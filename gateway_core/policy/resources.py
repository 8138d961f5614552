"""Resource descriptions as the gateway's policy sees them (Firezone:
``rust/connlib/tunnel/src/messages/gateway.rs``).

A resource is a CIDR network, a DNS name pattern or "the Internet", each with a list of filters
(:mod:`gateway_core.policy.filters`; none for the Internet resource). The JSON is decoded in one place,
the portal's typed model (:func:`gateway_core.portal.model.decode_resource`, as strict as Firezone's serde
types, ``rust/connlib/tunnel/src/messages/gateway.rs:23-93``); :func:`from_portal` maps a typed portal
resource onto these types, and :func:`decode_resource` is the two in a row. Anything malformed raises
:class:`DecodeError`; unknown fields are ignored.

A filter range with ``start > end`` is not a decode error: it is kept, logged once here, and matches no
port (docs/decisions/0040-policy-filter-range-start-after-end.md).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.policy.filters import Filter, FilterProtocol, Filters
from gateway_core.portal import model as portal_model
from gateway_core.portal.model import parse_uuid

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
    filters: Filters

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
    filters: Filters

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
# Decoding: the portal's typed model (``gateway_core.portal.model``) is the one decoder of the JSON;
# :func:`from_portal` is the one place that maps it onto the policy's types.

decode_uuid = parse_uuid
"""A UUID string in any form the Rust ``uuid`` crate parses (hyphenated, simple, braced, URN)."""


def _filter_from_portal(f: portal_model.Filter) -> Filter:
    return Filter(FilterProtocol(f.protocol.value), f.port_range_start, f.port_range_end)


def from_portal(resource: portal_model.Resource) -> ResourceDescription:
    """The policy's view of a resource the portal described (``authorize_flow``, ``resource_updated``...)."""
    if isinstance(resource, portal_model.InternetResource):
        return InternetResource(resource.id)
    filters = tuple(_filter_from_portal(f) for f in resource.filters)
    for f in filters:
        if not f.is_valid:
            log.warning(
                "resource %s: rejecting %s filter with port_range_start %d > port_range_end %d; "
                "it allows no port (decision 0040)",
                resource.id,
                f.protocol.value,
                f.port_range_start,
                f.port_range_end,
            )
    if isinstance(resource, portal_model.CidrResource):
        return CidrResource(resource.id, resource.name, resource.address, filters)
    return DnsResource(resource.id, resource.name, resource.address, filters)


def decode_resource(value: Any, what: str = "resource") -> ResourceDescription:
    """A resource description from the portal's JSON object (``ResourceDescription``); DecodeError."""
    return from_portal(portal_model.decode_resource(value, what))


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
