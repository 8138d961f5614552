"""The filter engine: which protocols and ports a client may use towards which addresses.

Theory of operation (Firezone: ``rust/connlib/tunnel/src/gateway/filter_engine.rs``, and
``recalculate_filters`` and ``classify_resource`` in
``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``):

- A resource carries a list of :class:`Filter` (TCP/UDP inclusive port ranges, ICMP). An **empty list
  permits everything**.
- A :class:`FilterEngine` is built from the filter lists of every resource that covers one address: if
  any contributing list is empty it is permit-all, otherwise the union of all TCP ranges, all UDP ranges
  and "ICMP allowed" if any list has an ICMP filter. Ranges are merged into sorted, disjoint runs, so a
  port lookup is one ``bisect``.
- A :class:`FilterTable` is the per-client longest-prefix table ``network -> (engine, resource id)``,
  rebuilt from scratch by :func:`build_filter_table` after every change of the client's resources or
  DNS proxy translations. Lookups take the address as an integer (:meth:`FilterTable.classify_int`,
  the per-packet entry point) or as packed bytes, with one dict probe per distinct prefix length.
- :meth:`FilterTable.classify` is the reference's ``classify_resource``: the Internet resource allows every
  address outside the DNS proxy ranges; otherwise the longest matching prefix's engine decides.

A range with ``start > end`` crashes the reference (a ``rangemap`` assertion). Here it is rejected: it
contributes no port, and the list it belongs to still counts as non-empty, so it can never widen access
to permit-all (docs/decisions/0040-policy-filter-range-start-after-end.md). The warning is logged where
the filter is decoded (:mod:`gateway_core.policy.resources`); the engine silently skips it.

The per-packet protocol descriptor is two plain ints, ``(kind, port)``, with ``kind`` one of
:data:`L4_TCP`, :data:`L4_UDP`, :data:`L4_ICMP` (any ICMP or ICMPv6 message) or :data:`L4_OTHER` (any
other IP protocol); no object is built per packet.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from gateway_core.addr import IPAddress, IPNetwork
from gateway_core.errors import DropReason

# --------------------------------------------------------------------------------------------------
# Per-packet protocol descriptor kinds. TCP and UDP use their IP protocol numbers so that a packet codec
# can pass its protocol field through; ICMP covers ICMPv4 and ICMPv6 alike, as Firezone's
# ``Protocol::Icmp`` does.

L4_TCP = 6
"""TCP; ``port`` is the destination port (outbound check) or the source port (inbound check)."""
L4_UDP = 17
"""UDP; ``port`` as for TCP."""
L4_ICMP = 1
"""Any ICMP or ICMPv6 message (echo or otherwise); ``port`` is ignored by the filter."""
L4_OTHER = 0
"""Any other IP protocol (GRE, ESP, SCTP, ...): allowed only by a permit-all engine."""

PORT_MAX = 65535
"""Ports are 16-bit; Firezone's defaults for a missing range end (``messages/gateway.rs``)."""

# --------------------------------------------------------------------------------------------------
# The DNS-resource proxy ranges (``rust/connlib/tunnel/src/client.rs:51-60``): addresses the client
# invents for DNS-resource domains. The Internet resource never covers them.

IPV4_PROXY_RANGE = IPv4Network("100.96.0.0/11")
"""Client-allocated IPv4 proxy IPs (Firezone's ``IPV4_RESOURCES``)."""
IPV6_PROXY_RANGE = IPv6Network("fd00:2021:1111:8000::/107")
"""Client-allocated IPv6 proxy IPs (Firezone's ``IPV6_RESOURCES``)."""

_V4_PROXY_SHIFT = 32 - IPV4_PROXY_RANGE.prefixlen
_V4_PROXY_KEY = int(IPV4_PROXY_RANGE.network_address) >> _V4_PROXY_SHIFT
_V6_PROXY_SHIFT = 128 - IPV6_PROXY_RANGE.prefixlen
_V6_PROXY_KEY = int(IPV6_PROXY_RANGE.network_address) >> _V6_PROXY_SHIFT


def is_proxy_addr(addr: bytes) -> bool:
    """Whether the packed address (4 or 16 bytes) lies in a DNS-resource proxy range."""
    if len(addr) == 4:
        return int.from_bytes(addr) >> _V4_PROXY_SHIFT == _V4_PROXY_KEY
    return int.from_bytes(addr) >> _V6_PROXY_SHIFT == _V6_PROXY_KEY


def is_proxy_int(v6: bool, ip: int) -> bool:
    """:func:`is_proxy_addr` for an address given as an integer."""
    if v6:
        return ip >> _V6_PROXY_SHIFT == _V6_PROXY_KEY
    return ip >> _V4_PROXY_SHIFT == _V4_PROXY_KEY


def is_proxy_ip(ip: IPAddress) -> bool:
    """Whether ``ip`` lies in a DNS-resource proxy range."""
    return is_proxy_addr(ip.packed)


# --------------------------------------------------------------------------------------------------
# Filters as the portal describes them (``rust/connlib/tunnel/src/messages/gateway.rs``).


class FilterProtocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter: TCP or UDP with an inclusive port range, or ICMP (ports unused)."""

    protocol: FilterProtocol
    port_range_start: int = 0
    port_range_end: int = PORT_MAX

    @property
    def is_valid(self) -> bool:
        """False for a TCP/UDP range with ``start > end`` (rejected: it matches no port)."""
        return self.protocol is FilterProtocol.ICMP or self.port_range_start <= self.port_range_end


Filters = tuple[Filter, ...]
"""A resource's filter list; empty means "everything is allowed"."""


def _merge(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Sorted, disjoint, non-adjacent runs as parallel tuples of starts and ends."""
    starts: list[int] = []
    ends: list[int] = []
    for s, e in sorted(ranges):
        if starts and s <= ends[-1] + 1:
            if e > ends[-1]:
                ends[-1] = e
        else:
            starts.append(s)
            ends.append(e)
    return tuple(starts), tuple(ends)


class FilterEngine:
    """The union of some TCP/UDP port ranges and possibly ICMP (permit-all: :data:`PERMIT_ALL`)."""

    __slots__ = ("icmp", "tcp_ends", "tcp_starts", "udp_ends", "udp_starts")

    def __init__(
        self,
        *,
        tcp: Iterable[tuple[int, int]] = (),
        udp: Iterable[tuple[int, int]] = (),
        icmp: bool,
    ) -> None:
        self.tcp_starts, self.tcp_ends = _merge(tcp)
        self.udp_starts, self.udp_ends = _merge(udp)
        self.icmp = icmp

    @classmethod
    def from_filter_lists(cls, lists: Iterable[Filters]) -> FilterEngine:
        """The engine for an address covered by resources with these filter lists."""
        lists = list(lists)
        if any(len(f) == 0 for f in lists):
            return PERMIT_ALL
        tcp: list[tuple[int, int]] = []
        udp: list[tuple[int, int]] = []
        for filters in lists:
            for f in filters:
                if f.protocol is FilterProtocol.ICMP:
                    continue  # below
                elif not f.is_valid:
                    continue  # rejected range: contributes nothing (decision 0040)
                elif f.protocol is FilterProtocol.TCP:
                    tcp.append((f.port_range_start, f.port_range_end))
                else:
                    udp.append((f.port_range_start, f.port_range_end))
        icmp = any(f.protocol is FilterProtocol.ICMP for filters in lists for f in filters)
        return cls(tcp=tcp, udp=udp, icmp=icmp)

    def allows(self, kind: int, port: int) -> bool:
        """Whether a packet with this protocol descriptor passes."""
        if kind == L4_TCP:
            i = bisect_right(self.tcp_starts, port) - 1
            return i >= 0 and port <= self.tcp_ends[i]
        if kind == L4_UDP:
            i = bisect_right(self.udp_starts, port) - 1
            return i >= 0 and port <= self.udp_ends[i]
        if kind == L4_ICMP:
            return self.icmp
        return False

    def __eq__(self, other: object) -> bool:  # defining __eq__ alone leaves instances unhashable
        if not isinstance(other, FilterEngine):
            return NotImplemented
        return (
            type(self) is type(other)
            and self.icmp == other.icmp
            and self.tcp_starts == other.tcp_starts
            and self.tcp_ends == other.tcp_ends
            and self.udp_starts == other.udp_starts
            and self.udp_ends == other.udp_ends
        )

    def __repr__(self) -> str:
        tcp = list(zip(self.tcp_starts, self.tcp_ends, strict=True))
        udp = list(zip(self.udp_starts, self.udp_ends, strict=True))
        return f"FilterEngine(tcp={tcp}, udp={udp}, icmp={self.icmp})"


class _PermitAll(FilterEngine):
    """Every packet passes (a resource without filters covers the address)."""

    __slots__ = ()

    def allows(self, kind: int, port: int) -> bool:
        return True

    def __repr__(self) -> str:
        return "FilterEngine(permit_all)"


PERMIT_ALL: FilterEngine = _PermitAll(icmp=True)
"""The shared permit-all engine (engines are never mutated after construction). Its own class rather than
a flag: what it allows is decided in a method, at the call, never by a value fixed when the module was
imported."""


# --------------------------------------------------------------------------------------------------
# The per-client longest-prefix filter table.


@dataclass(frozen=True, slots=True)
class FilterEntry:
    """What the table holds per network (the key it is filed under): the engine and the resource it is
    attributed to."""

    engine: FilterEngine
    resource_id: uuid.UUID


class FilterTable:
    """Longest-prefix match ``network -> FilterEntry`` plus the client's Internet resource, if any."""

    __slots__ = ("_v4", "_v4_levels", "_v6", "_v6_levels", "internet_resource")

    def __init__(self, internet_resource: uuid.UUID | None = None) -> None:
        # prefix length -> {address >> (bits - prefix length): entry}
        self._v4: dict[int, dict[int, FilterEntry]] = {}
        self._v6: dict[int, dict[int, FilterEntry]] = {}
        # (shift, level dict) from the longest prefix to the shortest: the lookup order.
        self._v4_levels: tuple[tuple[int, dict[int, FilterEntry]], ...] = ()
        self._v6_levels: tuple[tuple[int, dict[int, FilterEntry]], ...] = ()
        self.internet_resource = internet_resource

    def insert(self, network: IPNetwork, engine: FilterEngine, resource_id: uuid.UUID) -> None:
        """Add or replace the entry of exactly ``network``."""
        entry = FilterEntry(engine, resource_id)
        bits = network.max_prefixlen
        key = int(network.network_address) >> (bits - network.prefixlen)
        if bits == 32:
            self._v4.setdefault(network.prefixlen, {})[key] = entry
            self._v4_levels = tuple((32 - p, self._v4[p]) for p in sorted(self._v4, reverse=True))
        else:
            self._v6.setdefault(network.prefixlen, {})[key] = entry
            self._v6_levels = tuple((128 - p, self._v6[p]) for p in sorted(self._v6, reverse=True))

    def longest_match(self, addr: bytes) -> FilterEntry | None:
        """The entry of the longest prefix containing the packed address (4 or 16 bytes)."""
        return self.longest_match_int(len(addr) == 16, int.from_bytes(addr))

    def longest_match_int(self, v6: bool, ip: int) -> FilterEntry | None:
        """:meth:`longest_match` for an address given as an integer."""
        for shift, level in self._v6_levels if v6 else self._v4_levels:
            entry = level.get(ip >> shift)
            if entry is not None:
                return entry
        return None

    def classify(self, addr: bytes, kind: int, port: int) -> uuid.UUID | None:
        """The resource allowing traffic with ``addr`` and this protocol descriptor, or ``None``.

        For client -> resource packets ``addr`` is the destination and ``port`` the destination port;
        for resource -> client packets the source and the source port.
        """
        return self.classify_int(len(addr) == 16, int.from_bytes(addr), kind, port)

    def classify_int(self, v6: bool, ip: int, kind: int, port: int) -> uuid.UUID | None:
        """:meth:`classify` for an address given as an integer (the per-packet entry point)."""
        if self.internet_resource is not None and not (
            ip >> _V6_PROXY_SHIFT == _V6_PROXY_KEY if v6 else ip >> _V4_PROXY_SHIFT == _V4_PROXY_KEY
        ):
            return self.internet_resource
        for shift, level in self._v6_levels if v6 else self._v4_levels:
            entry = level.get(ip >> shift)
            if entry is not None:
                return entry.resource_id if entry.engine.allows(kind, port) else None
        return None

    def deny_reason(self, addr: bytes) -> DropReason:
        """Why :meth:`classify` refused (slow path, only after a refusal): no resource or filtered."""
        return DropReason.NOT_AUTHORIZED if self.longest_match(addr) is None else DropReason.FILTERED

    def deny_reason_int(self, v6: bool, ip: int) -> DropReason:
        """:meth:`deny_reason` for an address given as an integer."""
        return DropReason.NOT_AUTHORIZED if self.longest_match_int(v6, ip) is None else DropReason.FILTERED

    def entries(self) -> list[tuple[IPNetwork, FilterEntry]]:
        """Every network with its entry, IPv4 before IPv6, by network (for tests and diagnostics)."""
        out: list[tuple[IPNetwork, FilterEntry]] = []
        for p, level in self._v4.items():
            out += [(IPv4Network((k << (32 - p), p)), e) for k, e in level.items()]
        for p, level in self._v6.items():
            out += [(IPv6Network((k << (128 - p), p)), e) for k, e in level.items()]
        return sorted(out, key=lambda ne: (ne[0].version, ne[0]))

    def __len__(self) -> int:
        return sum(len(v) for v in self._v4.values()) + sum(len(v) for v in self._v6.values())


# --------------------------------------------------------------------------------------------------
# Building the table.


class FilterSource(Protocol):
    """What :func:`build_filter_table` needs to know of one authorised resource."""

    @property
    def resource_id(self) -> uuid.UUID: ...

    @property
    def is_cidr(self) -> bool: ...

    @property
    def is_internet(self) -> bool: ...

    @property
    def filters(self) -> Filters: ...

    def networks(self) -> Sequence[IPNetwork]:
        """CIDR: its network; DNS: each resolved real IP as a host network; Internet: both defaults."""
        ...


def network_contains(outer: IPNetwork, inner: IPNetwork) -> bool:
    """``outer`` contains ``inner``: same family, shorter-or-equal prefix, ``inner``'s address inside."""
    return (
        outer.version == inner.version
        and outer.prefixlen <= inner.prefixlen
        and inner.network_address in outer
    )


def build_filter_table(
    resources: Iterable[FilterSource],
    proxy_translations: Iterable[tuple[IPAddress, uuid.UUID]],
) -> FilterTable:
    """The client's filter table, rebuilt from scratch.

    ``resources`` are the client's authorised resources; ``proxy_translations`` are its DNS proxy IPs
    with the DNS resource each belongs to. Proxy IPs whose resource is not among ``resources``, or is
    not a DNS resource, are skipped.
    """
    ordered = sorted(resources, key=lambda r: r.resource_id)
    nets = [(r, tuple(r.networks())) for r in ordered]
    internet = next((r.resource_id for r in ordered if r.is_internet), None)
    table = FilterTable(internet)

    # Index every resource network by (family, prefix length, prefix) so that the resources covering a
    # network are found with one probe per distinct prefix length instead of a scan of all resources.
    index: dict[tuple[int, int], dict[int, list[Filters]]] = {}
    for r, r_nets in nets:
        for n in r_nets:
            level = index.setdefault((n.version, n.prefixlen), {})
            level.setdefault(int(n.network_address) >> (n.max_prefixlen - n.prefixlen), []).append(r.filters)
    levels = sorted(index.items())

    for r, r_nets in nets:
        if not r.is_cidr:
            continue
        for net in r_nets:
            addr = int(net.network_address)
            lists: list[Filters] = []
            for (version, plen), level in levels:
                if version == net.version and plen <= net.prefixlen:
                    lists.extend(level.get(addr >> (net.max_prefixlen - plen), ()))
            table.insert(net, FilterEngine.from_filter_lists(lists), r.resource_id)

    by_id = {r.resource_id: r for r in ordered}
    for proxy_ip, rid in sorted(proxy_translations, key=lambda t: (t[0].version, t[0])):
        owner = by_id.get(rid)
        if owner is None or owner.is_cidr or owner.is_internet:
            continue
        host: IPNetwork = IPv4Network(proxy_ip) if proxy_ip.version == 4 else IPv6Network(proxy_ip)
        table.insert(host, FilterEngine.from_filter_lists([owner.filters]), rid)
    return table
