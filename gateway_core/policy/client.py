"""One client's policy on the gateway: authorisations, filter table and DNS-resource NAT, and the
per-packet decisions of ``translate_outbound`` and ``translate_inbound`` in Firezone's
``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``.

Theory of operation. A :class:`ClientPolicy` composes a
:class:`~gateway_core.policy.authorizations.ClientAuthorizations`, a
:class:`~gateway_core.policy.nat.DnsResourceNat` and the compiled
:class:`~gateway_core.policy.filters.FilterTable`; every control change that can alter what the client
may reach (authorise, revoke, update, expire, retain, NAT set-up) rebuilds the table at once. It
knows nothing of WireGuard or connections: the owner decrypts, calls :meth:`ClientPolicy.outbound` or
:meth:`ClientPolicy.inbound` with a whole, valid IP packet in a ``bytearray``, and acts on the result.

Both data-path methods return a :data:`Decision`, ``(action, packet, resource, reason)``:

- ``(FORWARD, packet, rid, None)``: send ``packet`` on (to the TUN, or encrypted to the client). It is the
  caller's buffer, possibly rewritten in place, or a fresh ICMP error built for the client (from an error
  quoting a NAT session's packet).
  ``rid`` is the resource that allowed it, ``None`` for the gateway's own address or ICMP errors.
- ``(REPLY, icmp, None, None)``: outbound only: do not forward; encrypt ``icmp`` (an ICMP prohibited or
  unreachable error) back to the client. The denial is counted in :attr:`ClientPolicy.stats`.
- ``(DROP, b"", None, reason)``: drop silently; ``reason`` is a :class:`DropReason`, also counted. The
  drop decisions are built once per reason (:data:`DROPS`): the drop path allocates nothing.

The client's tunnel addresses are fixed at creation (as in the reference's ``ClientOnGateway``), as are
the gateway's.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.contract import Deadline
from gateway_core.dns.patterns import is_subdomain
from gateway_core.errors import DecodeError, DropReason
from gateway_core.interface import IPV4_TUNNEL, IPV6_TUNNEL
from gateway_core.policy.authorizations import ClientAuthorizations
from gateway_core.policy.dns_nat import DnsResourceNat, NatVerdict, SetupNatError, is_icmp_error
from gateway_core.policy.filters import (
    L4_ICMP,
    L4_OTHER,
    FilterTable,
    build_filter_table,
    is_proxy_int,
)
from gateway_core.policy.flowcache import FlowCache, fast_key, remember
from gateway_core.policy.nat import V6_FLAG, NatSession
from gateway_core.policy.p2p_control import NatStatus
from gateway_core.policy.resources import DnsResource, ResourceDescription
from gateway_core.stats import Stats
from gateway_core.wire.icmp import build_icmp_prohibited, build_icmp_unreachable
from gateway_core.wire.ip import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, l4_info


class Action(IntEnum):
    """What the owner does with a packet the policy looked at."""

    FORWARD = 0
    REPLY = 1
    DROP = 2


FORWARD, REPLY, DROP = Action.FORWARD, Action.REPLY, Action.DROP


Decision = tuple[Action, bytes | bytearray, uuid.UUID | None, DropReason | None]
"""The policy's verdict on one packet, ``(action, packet, resource, reason)`` (see the module docstring).

A plain tuple, not a ``NamedTuple``: building a ``NamedTuple`` goes through a Python-level ``__new__``
and cost about 0.2 us per packet (+20 % on ``bench_policy``'s CIDR case), a tuple display costs nothing
measurable. Unpack it positionally."""


DROPS: dict[DropReason, Decision] = {r: (DROP, b"", None, r) for r in DropReason}
"""The drop decision of every reason, built once."""
_DROP_MALFORMED = DROPS[DropReason.MALFORMED_IP]
_DROP_UNKNOWN_CLIENT = DROPS[DropReason.UNKNOWN_CLIENT]


_V4_ADDR = struct.Struct("!I")
_V6_ADDR = struct.Struct("!QQ")
_V4_ADDRS = struct.Struct("!II")
_V6_ADDRS = struct.Struct("!QQQQ")
_PORTS = struct.Struct("!HH")
_V4_TUN_SHIFT = 32 - IPV4_TUNNEL.prefixlen
_V4_TUN_KEY = int(IPV4_TUNNEL.network_address) >> _V4_TUN_SHIFT
_V6_TUN_SHIFT = 128 - IPV6_TUNNEL.prefixlen
_V6_TUN_KEY = int(IPV6_TUNNEL.network_address) >> _V6_TUN_SHIFT
_NO_PORT = 0
"""The ports of a packet of a protocol without ports (ICMP, others)."""


def _fields(buf: bytearray) -> tuple[bool, int, int, int, int, int, int, int, int]:
    """``(v6, src, dst, kind, sport, dport, proto, l4_offset, end)`` with addresses as integers.

    DecodeError if malformed. ``kind`` is the filter's protocol descriptor, ``proto`` the IP protocol. The
    packet is a validated one (``wire.ip.validate``, before either data-path method): a TCP or UDP header
    is whole. Other protocols have no ports (:data:`_NO_PORT`: the filters ignore the port of ICMP and
    of other protocols).
    """
    proto, off, end = l4_info(buf)
    v6 = buf[0] >> 4 == 6
    if v6:
        a, b, c, d = _V6_ADDRS.unpack_from(buf, 8)
        src, dst = (a << 64) | b, (c << 64) | d
    else:
        src, dst = _V4_ADDRS.unpack_from(buf, 12)
    if proto in (PROTO_TCP, PROTO_UDP):
        sport, dport = _PORTS.unpack_from(buf, off)
        return v6, src, dst, proto, sport, dport, proto, off, end
    kind = L4_ICMP if proto == (PROTO_ICMPV6 if v6 else PROTO_ICMP) else L4_OTHER
    return v6, src, dst, kind, _NO_PORT, _NO_PORT, proto, off, end


@dataclass(frozen=True, slots=True)
class ClientProperties:
    """The client's flow-log metadata from ``authorize_flow`` (``client`` and ``subject``)."""

    version: str | None = None
    device_serial: str | None = None
    device_uuid: str | None = None
    device_os_name: str | None = None
    device_os_version: str | None = None
    identifier_for_vendor: str | None = None
    firebase_installation_id: str | None = None
    identity_id: str | None = None
    identity_name: str | None = None
    actor_id: str | None = None
    actor_email: str | None = None


class ClientPolicy:
    """Everything the gateway decides about one client's traffic."""

    __slots__ = (
        "_cv4",
        "_cv6",
        "_gv4",
        "_gv6",
        "authorizations",
        "cid",
        "client_id",
        "client_v4",
        "client_v6",
        "filters",
        "flow_cache",
        "gateway_v4",
        "gateway_v6",
        "nat",
        "properties",
        "stats",
    )

    def __init__(
        self,
        client_id: uuid.UUID,
        client_v4: IPv4Address,
        client_v6: IPv6Address,
        gateway_v4: IPv4Address,
        gateway_v6: IPv6Address,
        properties: ClientProperties | None,
        max_nat_sessions: int,
    ) -> None:
        self.client_id = client_id
        self.cid = str(client_id)
        """The node's name of the client's connection (the data path's key)."""
        self.client_v4, self.client_v6 = client_v4, client_v6
        self.gateway_v4, self.gateway_v6 = gateway_v4, gateway_v6
        self._cv4, self._cv6 = int(client_v4), int(client_v6)
        self._gv4, self._gv6 = int(gateway_v4), int(gateway_v6)
        self.properties = properties or ClientProperties()
        self.authorizations = ClientAuthorizations(client_id)
        self.flow_cache = FlowCache()
        """Forwarding decisions by flow (:mod:`gateway_core.policy.flowcache`): cleared on every change of
        the filters or the NAT."""
        self.nat = DnsResourceNat(max_nat_sessions, self.flow_cache.clear)
        self.filters = FilterTable()
        self.stats = Stats()

    # --- control --------------------------------------------------------------------------------

    def rebuild_filters(self) -> None:
        """Recompute the filter table from the authorisations and proxy translations
        (the reference's ``recalculate_filters``)."""
        self.flow_cache.clear()
        self.filters = build_filter_table(self.authorizations.values(), self.nat.proxy_translations())

    def allow(self, resource: ResourceDescription, expires_at: int | None) -> None:
        self.authorizations.add(resource, expires_at)
        self.rebuild_filters()

    def update_resource(self, resource: ResourceDescription) -> None:
        """``resource_updated``: if this client has the resource, its filters are replaced."""
        if resource.id in self.authorizations:
            self.authorizations.update_resource(resource)
            self.rebuild_filters()

    def update_expiry(self, rid: uuid.UUID, expires_at: int | None) -> None:
        self.authorizations.update_expiry(rid, expires_at)

    def remove(self, rid: uuid.UUID) -> None:
        """``reject_access``; afterwards :meth:`is_empty` tells whether to remove the client."""
        if rid in self.authorizations:
            self.authorizations.remove(rid)
            self.rebuild_filters()

    def retain(self, keep: Collection[uuid.UUID]) -> list[uuid.UUID]:
        gone = self.authorizations.retain(keep)
        if gone:
            self.rebuild_filters()
        return gone

    def expire(self, utc_ns: int) -> list[uuid.UUID]:
        gone = self.authorizations.expire(utc_ns)
        if gone:
            self.rebuild_filters()
        return gone

    def is_empty(self) -> bool:
        return self.authorizations.is_empty()

    def may_query(self, name: str) -> bool:
        """Whether this client may have ``name`` resolved by the gateway (SRV/TXT forwarding):
        some authorised DNS resource's pattern matches it (decision 0048)."""
        return any(
            isinstance(a.resource, DnsResource) and is_subdomain(name, a.resource.address)
            for a in self.authorizations.values()
        )

    def is_allowed(self, rid: uuid.UUID) -> bool:
        """Whether ``rid`` is authorised (an ``assigned_ips`` for anything else gets ``Inactive`` at once)."""
        return rid in self.authorizations

    def setup_nat(
        self, domain: str, rid: uuid.UUID, resolved_ips: Iterable[IPAddress], proxy_ips: Iterable[IPAddress]
    ) -> SetupNatError | None:
        err = self.nat.setup_nat(domain, self.authorizations.get(rid), resolved_ips, proxy_ips)
        if err is None:
            self.rebuild_filters()
        return err

    def handle_domain_resolved(
        self,
        domain: str,
        rid: uuid.UUID,
        resolved_ips: Iterable[IPAddress] | None,
        proxy_ips: Iterable[IPAddress],
    ) -> NatStatus:
        """The ``domain_status`` to send back after resolving ``domain`` (``None``: resolution failed)."""
        status = self.nat.handle_domain_resolved(
            domain, self.authorizations.get(rid), resolved_ips, proxy_ips
        )
        if status is NatStatus.ACTIVE:
            self.rebuild_filters()
        return status

    def handle_timeout(self, now: Instant) -> None:
        self.nat.handle_timeout(now)

    def poll_timeout(self) -> Deadline | None:
        """The NAT's next deadline (authorisation expiry is in wall-clock time: :meth:`earliest_expiry`)."""
        return self.nat.poll_timeout()

    def earliest_expiry(self) -> int | None:
        """The earliest authorisation expiry, in wall-clock nanoseconds, or ``None``."""
        return self.authorizations.earliest_expiry()

    # --- data path ------------------------------------------------------------------------------

    def to_another_client(self, packet: bytes) -> bool:
        """Whether a valid IP packet from this client is for a tunnel address other than the gateway's:
        another client's, which the gateway refuses (decision 0054)."""
        if packet[0] >> 4 == 4:
            dst: int = _V4_ADDR.unpack_from(packet, 16)[0]
            return dst >> _V4_TUN_SHIFT == _V4_TUN_KEY and dst != self._gv4
        hi: int
        lo: int
        hi, lo = _V6_ADDR.unpack_from(packet, 24)
        dst6: int = (hi << 64) | lo
        return dst6 >> _V6_TUN_SHIFT == _V6_TUN_KEY and dst6 != self._gv6

    def outbound(self, buf: bytearray, now: Instant) -> Decision:
        """A packet from the client, for the TUN (``translate_outbound``)."""
        try:
            v6, src, dst, kind, _, dport, proto, off, end = _fields(buf)
        except DecodeError:
            self.stats.drop(DropReason.MALFORMED_IP)
            return _DROP_MALFORMED
        if src != (self._cv6 if v6 else self._cv4):
            self.stats.drop(DropReason.SPOOFED_SOURCE)
            return REPLY, build_icmp_prohibited(buf), None, None
        if dst == (self._gv6 if v6 else self._gv4):
            if (key := fast_key(buf)) is not None:
                remember(self.flow_cache.outbound, key, buf, None, None)
            return FORWARD, buf, None, None
        rid = self.filters.classify_int(v6, dst, kind, dport)
        if rid is None:
            self.stats.drop(self.filters.deny_reason_int(v6, dst))
            return REPLY, build_icmp_prohibited(buf), None, None
        key = fast_key(buf)
        if not is_proxy_int(v6, dst):
            if key is not None:
                remember(self.flow_cache.outbound, key, buf, None, None)
            return FORWARD, buf, rid, None
        verdict = self.nat.translate_outbound_parsed(buf, now, dst | V6_FLAG if v6 else dst, proto, off, end)
        if isinstance(verdict, NatSession):
            if key is not None:  # (after the translation: a new session clears the cache)
                remember(self.flow_cache.outbound, key, buf, verdict, self.nat.table)
            return FORWARD, buf, rid, None
        if verdict is NatVerdict.UNREACHABLE:
            self.stats.incr("icmp_unreachable")
            return REPLY, build_icmp_unreachable(buf), None, None
        assert isinstance(verdict, DropReason)
        self.stats.drop(verdict)
        return DROPS[verdict]

    def inbound(self, buf: bytearray, now: Instant) -> Decision:
        """A packet from the TUN for this client, to be encrypted to it (``translate_inbound``)."""
        try:
            v6, src, dst, kind, sport, _, proto, off, end = _fields(buf)
        except DecodeError:
            self.stats.drop(DropReason.MALFORMED_IP)
            return _DROP_MALFORMED
        if src == (self._gv6 if v6 else self._gv4):
            if (key := fast_key(buf)) is not None and dst == (self._cv6 if v6 else self._cv4):
                remember(self.flow_cache.inbound, key, buf, None, None)
            return FORWARD, buf, None, None
        if kind == L4_ICMP and is_icmp_error(buf, 6 if v6 else 4, proto, off, end):
            out = self.nat.translate_icmp_error_packet(buf, self.client_v4, self.client_v6)
            if isinstance(out, DropReason):
                self.stats.drop(out)
                return DROPS[out]
            if out is buf and dst != (self._cv6 if v6 else self._cv4):
                self.stats.drop(DropReason.UNKNOWN_CLIENT)
                return _DROP_UNKNOWN_CLIENT
            return FORWARD, out, None, None  # an ICMP error for the client passes whatever the filters say
        key = fast_key(buf)
        s = self.nat.translate_inbound_parsed(buf, now, src | V6_FLAG if v6 else src, proto, off, end)
        if s is not None:
            if isinstance(s, DropReason):
                self.stats.drop(s)
                return DROPS[s]
            src = s.proxy_key & ~V6_FLAG  # the source is now the proxy IP
        if dst != (self._cv6 if v6 else self._cv4):
            self.stats.drop(DropReason.UNKNOWN_CLIENT)
            return _DROP_UNKNOWN_CLIENT
        rid = self.filters.classify_int(v6, src, kind, sport)
        if rid is None:
            reason = self.filters.deny_reason_int(v6, src)
            self.stats.drop(reason)
            return DROPS[reason]
        if key is not None:
            remember(self.flow_cache.inbound, key, buf, s, self.nat.table)
        return FORWARD, buf, rid, None
