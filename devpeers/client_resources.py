"""The dev client's resource table: which gateway a destination goes to, and the DNS resources' proxy IPs.

Theory of operation
-------------------
:class:`ResourceTable` holds the resources the portal granted, each with the gateway it is reached
through, and answers two questions:

- **Where does a packet go?** (:meth:`ResourceTable.route`) A proxy IP goes to its DNS resource's
  gateway; else the longest CIDR resource prefix wins (ties by network text); else the Internet
  resource, except for the proxy ranges; else nothing routes it.
- **Which proxy IPs for a name?** (:meth:`ResourceTable.assign`) A name matching a DNS resource (the most
  specific pattern wins, ties by resource id) gets 4 IPv4 addresses from ``100.96.0.0/11`` and 4 IPv6
  addresses from ``fd00:2021:1111:8000::/107``, invented by the client and handed out in order, once per
  (resource, name); the same name asked again gets the same addresses.

Removing a resource stops routing it; its proxy IPs stay assigned (a name keeps its addresses should the
resource come back). Everything is deterministic: no randomness, sorted where a dict could be ambiguous.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from devpeers.client_types import ClientResource
from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.dns.patterns import is_subdomain
from gateway_core.wire.ip import parse_ip

PROXY_V4 = IPv4Network("100.96.0.0/11")
PROXY_V6 = IPv6Network("fd00:2021:1111:8000::/107")
"""Firezone's DNS-resource proxy ranges (``rust/connlib/tunnel/src/client.rs``)."""
ROUTE_CACHE = 4096
"""Destinations :meth:`ResourceTable.route_raw` remembers at most (then it starts over)."""
PROXY_IPS_PER_FAMILY = 4
"""Firezone's client assigns 4 proxy IPs per family to every name of a DNS resource it resolves."""


@dataclass(slots=True)
class DomainProxy:
    """The proxy IPs assigned to one name of one DNS resource, reached through ``gateway``."""

    resource: uuid.UUID
    gateway: str
    proxy_v4: tuple[IPv4Address, ...]
    proxy_v6: tuple[IPv6Address, ...]


class ResourceTable:
    """See the module docstring."""

    def __init__(self) -> None:
        self.resources: dict[uuid.UUID, tuple[ClientResource, str]] = {}
        """Every granted resource with the gateway (its id) it is reached through."""
        self._cidrs: list[tuple[IPNetwork, uuid.UUID]] = []
        self._domains: dict[tuple[uuid.UUID, str], DomainProxy] = {}
        self._proxy: dict[IPAddress, tuple[uuid.UUID, str]] = {}
        self._next_v4 = int(PROXY_V4.network_address) + 1
        self._next_v6 = int(PROXY_V6.network_address) + 1
        self._routes: dict[bytes, tuple[str, tuple[uuid.UUID, str] | None] | None] = {}
        """:meth:`route_raw`'s answers by raw destination address; cleared by every change."""

    def add(self, resource: ClientResource, gateway: str) -> None:
        """Route ``resource`` through ``gateway`` (replacing an earlier grant of the same resource)."""
        self.resources[resource.id] = (resource, gateway)
        self._routes.clear()
        if resource.kind == "cidr":
            net = ip_network(resource.address)
            self._cidrs = [(n, r) for n, r in self._cidrs if r != resource.id] + [(net, resource.id)]
            self._cidrs.sort(key=lambda x: (-x[0].prefixlen, str(x[0])))

    def remove(self, resource_id: uuid.UUID) -> None:
        """Stop routing the resource (its proxy IPs are kept)."""
        self.resources.pop(resource_id, None)
        self._routes.clear()
        self._cidrs = [(n, r) for n, r in self._cidrs if r != resource_id]

    def dns_resource_for(self, name: str) -> tuple[ClientResource, str] | None:
        """The DNS resource whose pattern ``name`` (lower case, no trailing dot) matches, with its gateway;
        the most specific pattern (longest address) wins, ties by id."""
        hits = [
            (r, gw) for r, gw in self.resources.values() if r.kind == "dns" and is_subdomain(name, r.address)
        ]
        if not hits:
            return None
        return sorted(hits, key=lambda h: (-len(h[0].address), str(h[0].id)))[0]

    def assign(self, resource: uuid.UUID, gateway: str, name: str) -> DomainProxy:
        """The proxy IPs of ``name`` under ``resource``, assigned now if it has none yet."""
        d = self._domains.get((resource, name))
        if d is None:
            v4 = tuple(IPv4Address(self._next_v4 + i) for i in range(PROXY_IPS_PER_FAMILY))
            v6 = tuple(IPv6Address(self._next_v6 + i) for i in range(PROXY_IPS_PER_FAMILY))
            self._next_v4 += PROXY_IPS_PER_FAMILY
            self._next_v6 += PROXY_IPS_PER_FAMILY
            d = DomainProxy(resource, gateway, v4, v6)
            self._domains[(resource, name)] = d
            self._routes.clear()
            for a in v4:
                self._proxy[a] = (resource, name)
            for b in v6:
                self._proxy[b] = (resource, name)
        return d

    def domain(self, resource: uuid.UUID, name: str) -> DomainProxy:
        """The proxy IPs already assigned to ``name`` under ``resource`` (KeyError if none)."""
        return self._domains[(resource, name)]

    def proxy_ips(self, name: str) -> tuple[IPAddress, ...]:
        """The proxy IPs assigned to ``name`` so far (IPv4 then IPv6), empty if none."""
        for (_, domain), d in sorted(self._domains.items(), key=lambda kv: str(kv[0])):
            if domain == name.lower().rstrip("."):
                return (*d.proxy_v4, *d.proxy_v6)
        return ()

    def route_raw(self, packet: bytes) -> tuple[str, tuple[uuid.UUID, str] | None] | None:
        """:meth:`route` of an IP packet's destination, remembered by the raw address (a flow's packets
        cost one dictionary probe); raises ``DecodeError`` for what does not parse."""
        version = packet[0] >> 4 if packet else 0
        if version == 4 and len(packet) >= 20:
            key = packet[16:20]
        elif version == 6 and len(packet) >= 40:
            key = packet[24:40]
        else:
            key = b""  # never stored: parse_ip raises for it
        try:
            return self._routes[key]
        except KeyError:
            pass
        found = self.route(parse_ip(packet).dst)
        if len(self._routes) >= ROUTE_CACHE:
            self._routes.clear()
        self._routes[key] = found
        return found

    def route(self, dst: IPAddress) -> tuple[str, tuple[uuid.UUID, str] | None] | None:
        """(gateway, (resource, name) for a proxy IP) or None when nothing routes ``dst``."""
        proxied = self._proxy.get(dst)
        if proxied is not None:
            entry = self.resources.get(proxied[0])
            return None if entry is None else (entry[1], proxied)
        for net, rid in self._cidrs:
            if dst.version == net.version and dst in net:
                return self.resources[rid][1], None
        for r, gw in sorted(self.resources.values(), key=lambda x: str(x[0].id)):
            if r.kind == "internet" and dst not in PROXY_V4 and dst not in PROXY_V6:
                return gw, None
        return None
