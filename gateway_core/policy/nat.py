"""The DNS-resource NAT: proxy-IP translations and the per-client NAT session table.

Theory of operation (gateway-datapath.md §2.5-2.6, §8.5, §9, §6.3):

- The client invents *proxy IPs* for a DNS-resource domain and tells the gateway (``assigned_ips``). The
  gateway resolves the domain and :meth:`DnsResourceNat.setup_nat` pairs each proxy IP with a real IP of
  the same family (:func:`pair_proxy_ips`): the i-th proxy IP of a family gets the (i mod k)-th real IP
  of that family, or none when the domain has no address of that family. Every proxy IP of both
  families is mapped (the reference stops after the IPv4 ones: decision 0044).
- Packets from the client to a proxy IP P go through the :class:`NatTable`: the *inside* key is
  ``(protocol, source port or echo id, P)``, the *outside* key ``(protocol, value, real IP)``. The
  client's value is kept unless another session already uses it towards that real IP; then the next
  free value is taken (wrapping to 1). Replies from the resource are looked up by outside key
  ``(protocol, destination port or echo id, source IP)`` and rewritten back to the proxy IP.
- A session lives for its protocol's TTL after the last packet **in either direction** (decision 0042;
  the reference only counts outbound packets). A TCP RST in either direction ends it. An ended session
  leaves a *tombstone* under its outside key for :data:`TOMBSTONE_TTL`, so late packets are dropped as
  ``NAT_SESSION_EXPIRED`` instead of passing as "no session".
- The table is bounded (:data:`MAX_NAT_SESSIONS` per client, tombstones likewise); a new session that
  does not fit after dropping timed-out ones is refused with ``NAT_TABLE_FULL`` (decision 0043).
- ICMP errors from the resource that quote a packet of a session are re-addressed to the client "from"
  the proxy IP (§6.3); they do not refresh the session.

Times are monotonic ``Instant`` nanoseconds. Keys and sessions are plain tuples and slotted objects; the
per-packet path allocates one key tuple per lookup. Header rewriting uses
:mod:`gateway_core.wire.rewrite` (incremental checksums) and :mod:`gateway_core.wire.icmp`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant, secs
from gateway_core.dns.patterns import is_subdomain
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.policy.authorizations import Authorization
from gateway_core.policy.filters import L4_ICMP, L4_TCP, L4_UDP, is_proxy_ip
from gateway_core.policy.p2p_control import NatStatus
from gateway_core.policy.resources import DnsResource
from gateway_core.wire.icmp import UnsupportedIcmpError, parse_icmp_error, translate_icmp_error
from gateway_core.wire.ip import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_RST,
    l4_info,
)
from gateway_core.wire.rewrite import nat_rewrite

log = logging.getLogger("gateway_core.policy.nat")

TCP_TTL = secs(7200)
"""Idle lifetime of a TCP session (Firezone ``TCP_TTL``, 2 h, ``nat_table.rs:26``)."""
UDP_TTL = secs(120)
"""Idle lifetime of a UDP session (Firezone ``UDP_TTL``, 120 s)."""
ICMP_TTL = secs(120)
"""Idle lifetime of an ICMP echo session (Firezone ``ICMP_TTL``, 120 s)."""
TOMBSTONE_TTL = secs(120)
"""How long an ended session's outside key keeps dropping late packets (Firezone: until the peer goes).
Two minutes covers retransmissions and stragglers of any protocol."""
MAX_NAT_SESSIONS = 8192
"""Sessions per client (Firezone: unbounded). Far above what one client's DNS-resource traffic needs,
and 8192 sessions cost about 2 MiB, so 10,000 busy clients stay within reach of a small VM."""

_TTL = {L4_TCP: TCP_TTL, L4_UDP: UDP_TTL, L4_ICMP: ICMP_TTL}

V6_FLAG = 1 << 128
_V6_FLAG = V6_FLAG


def addr_key(ip: IPAddress) -> int:
    """An address as a dict key: its integer, with bit 128 set for IPv6 so the families never collide.

    Integers hash in C; ``IPv4Address.__hash__`` is Python code and costs about as much as a NAT lookup.
    """
    return int(ip) | _V6_FLAG if ip.version == 6 else int(ip)


NatKey = tuple[int, int, int]
"""``(protocol kind, port or echo identifier, addr_key(address))``; kind is ``L4_TCP``, ``L4_UDP`` or
``L4_ICMP``."""


class NatSession:
    """One mapping ``(proto, inside_value, proxy_ip) <-> (proto, outside_value, real_ip)``."""

    __slots__ = (
        "inside_value",
        "last_seen",
        "outside_value",
        "proto",
        "proxy_ip",
        "proxy_key",
        "real_ip",
        "real_key",
        "ttl",
    )

    def __init__(
        self,
        proto: int,
        inside_value: int,
        proxy_ip: IPAddress,
        outside_value: int,
        real_ip: IPAddress,
        now: Instant,
    ) -> None:
        self.proto = proto
        self.inside_value = inside_value
        self.proxy_ip = proxy_ip
        self.proxy_key = addr_key(proxy_ip)
        self.outside_value = outside_value
        self.real_ip = real_ip
        self.real_key = addr_key(real_ip)
        self.last_seen = now
        self.ttl = _TTL[proto]

    @property
    def inside_key(self) -> NatKey:
        return (self.proto, self.inside_value, self.proxy_key)

    @property
    def outside_key(self) -> NatKey:
        return (self.proto, self.outside_value, self.real_key)

    def __repr__(self) -> str:
        return (
            f"NatSession({self.proto}:{self.inside_value}@{self.proxy_ip} <-> "
            f"{self.proto}:{self.outside_value}@{self.real_ip})"
        )


class NatTable:
    """The NAT sessions of one client (§9), bounded and refreshed in both directions.

    Addresses are given as :class:`IPAddress` (and kept in the sessions for header rewriting); the
    ``*_key`` variants take :func:`addr_key` integers instead, for the per-packet path.
    """

    __slots__ = (
        "_by_inside",
        "_by_outside",
        "_inside_ips",
        "_next_due",
        "_now",
        "_tombstones",
        "max_sessions",
    )

    def __init__(self, max_sessions: int = MAX_NAT_SESSIONS) -> None:
        if max_sessions <= 0:
            raise UsageError("max_sessions must be positive")
        self.max_sessions = max_sessions
        self._by_inside: dict[NatKey, NatSession] = {}
        self._by_outside: dict[NatKey, NatSession] = {}
        self._inside_ips: dict[int, int] = {}  # addr_key(proxy IP) -> number of sessions
        self._tombstones: dict[NatKey, Instant] = {}  # outside key -> when it ended (in time order)
        self._next_due: Instant | None = None
        self._now = Instant(0)

    def __len__(self) -> int:
        return len(self._by_inside)

    def _tick(self, now: Instant) -> None:
        if now < self._now:
            raise UsageError("time went backwards")
        self._now = now

    def _due_at(self, t: Instant) -> None:
        if self._next_due is None or t < self._next_due:
            self._next_due = t

    def _unlink(self, s: NatSession, now: Instant, tombstone: bool) -> None:
        del self._by_inside[s.inside_key]
        del self._by_outside[s.outside_key]
        n = self._inside_ips[s.proxy_key] - 1
        if n:
            self._inside_ips[s.proxy_key] = n
        else:
            del self._inside_ips[s.proxy_key]
        if tombstone:
            key = s.outside_key
            self._tombstones.pop(key, None)
            self._tombstones[key] = now
            if len(self._tombstones) > self.max_sessions:
                del self._tombstones[next(iter(self._tombstones))]
            self._due_at(Instant(now + TOMBSTONE_TTL))

    # --- the data path ---

    def translate_outgoing(
        self,
        proto: int,
        value: int,
        proxy_ip: IPAddress,
        real_ip: IPAddress,
        now: Instant,
        rst: bool = False,
    ) -> NatSession | DropReason:
        """The session for a client packet ``(proto, value) -> proxy_ip`` towards ``real_ip`` (§9.2).

        A TCP RST (``rst``) still gets its session (the RST is sent) but ends it.
        """
        return self.translate_outgoing_key(
            proto, value, proxy_ip, addr_key(proxy_ip), real_ip, addr_key(real_ip), now, rst
        )

    def translate_outgoing_key(
        self,
        proto: int,
        value: int,
        proxy_ip: IPAddress,
        proxy_key: int,
        real_ip: IPAddress,
        real_key: int,
        now: Instant,
        rst: bool = False,
    ) -> NatSession | DropReason:
        """:meth:`translate_outgoing` with the addresses' keys already computed."""
        self._tick(now)
        inside = (proto, value, proxy_key)
        s = self._by_inside.get(inside)
        if s is not None and s.real_key == real_key:
            s.last_seen = now
            if rst:
                self._unlink(s, now, tombstone=True)
            return s
        if s is None and len(self._by_inside) >= self.max_sessions:
            self._sweep(now)
            if len(self._by_inside) >= self.max_sessions:
                return DropReason.NAT_TABLE_FULL
        outside_value = -1
        for v in chain(range(value, 65536), range(1, value)):
            if (proto, v, real_key) not in self._by_outside:
                outside_value = v
                break
        if outside_value < 0:
            return DropReason.NAT_TABLE_FULL  # every value towards this real IP is in use
        if s is not None:
            self._unlink(s, now, tombstone=False)  # the translation changed: replaced silently (§9.2)
        new = NatSession(proto, value, proxy_ip, outside_value, real_ip, now)
        self._by_inside[inside] = new
        self._by_outside[new.outside_key] = new
        self._inside_ips[proxy_key] = self._inside_ips.get(proxy_key, 0) + 1
        self._tombstones.pop(new.outside_key, None)
        self._due_at(Instant(now + new.ttl))
        return new

    def translate_incoming(
        self, proto: int, value: int, src_ip: IPAddress, now: Instant, rst: bool = False
    ) -> NatSession | None:
        """The session a resource's packet ``src_ip -> (proto, value)`` belongs to, refreshed (§9.3)."""
        return self.translate_incoming_key(proto, value, addr_key(src_ip), now, rst)

    def translate_incoming_key(
        self, proto: int, value: int, src_key: int, now: Instant, rst: bool = False
    ) -> NatSession | None:
        """:meth:`translate_incoming` with the source address as :func:`addr_key`."""
        self._tick(now)
        s = self._by_outside.get((proto, value, src_key))
        if s is None:
            return None
        s.last_seen = now
        if rst:
            self._unlink(s, now, tombstone=True)
        return s

    def is_expired(self, proto: int, value: int, ip: IPAddress) -> bool:
        """Whether the outside key belongs to an ended session (late packets are dropped)."""
        return (proto, value, addr_key(ip)) in self._tombstones

    def is_expired_key(self, proto: int, value: int, key: int) -> bool:
        return (proto, value, key) in self._tombstones

    def lookup_icmp_error(self, proto: int, value: int, dst_ip: IPAddress) -> NatSession | None:
        """The session of the packet quoted in an ICMP error (its source value, its destination)."""
        return self._by_outside.get((proto, value, addr_key(dst_ip)))

    def has_inside_ip(self, proxy_ip: IPAddress) -> bool:
        """Whether any session translates traffic to ``proxy_ip``."""
        return addr_key(proxy_ip) in self._inside_ips

    def sessions(self) -> list[NatSession]:
        """Every session, by inside key (for tests and diagnostics)."""
        return sorted(self._by_inside.values(), key=lambda s: s.inside_key)

    def clear(self) -> None:
        """Forget every session and tombstone (proxy-IP re-assignment, peer removal)."""
        self._by_inside.clear()
        self._by_outside.clear()
        self._inside_ips.clear()
        self._tombstones.clear()
        self._next_due = None

    # --- time ---

    def _sweep(self, now: Instant) -> int:
        expired = [s for s in self._by_inside.values() if now - s.last_seen >= s.ttl]
        for s in expired:
            log.debug("NAT session expired: %r", s)
            self._unlink(s, now, tombstone=True)
        while self._tombstones:
            key, ended = next(iter(self._tombstones.items()))
            if now - ended < TOMBSTONE_TTL:
                break
            del self._tombstones[key]
        nxt = [Instant(s.last_seen + s.ttl) for s in self._by_inside.values()]
        if self._tombstones:
            nxt.append(Instant(next(iter(self._tombstones.values())) + TOMBSTONE_TTL))
        self._next_due = min(nxt) if nxt else None
        return len(expired)

    def handle_timeout(self, now: Instant) -> int:
        """End the sessions idle for their TTL and forget old tombstones; the number of sessions ended."""
        self._tick(now)
        if self._next_due is None or now < self._next_due:
            return 0
        return self._sweep(now)

    def poll_timeout(self) -> Instant | None:
        """When something may next expire (never before the last ``now``); ``None`` when empty."""
        if self._next_due is None:
            return None
        return max(self._next_due, self._now)


# --------------------------------------------------------------------------------------------------
# Proxy-IP translations (§2.5, §8.5).


@dataclass(slots=True)
class TranslationState:
    """What one proxy IP stands for."""

    resource_id: uuid.UUID
    resolved_ip: IPAddress | None
    """``None``: the domain has no address of this family; traffic gets ICMP unreachable."""
    domain: str
    proxy_ip: IPAddress | None = None
    """The proxy IP itself (set by :class:`DnsResourceNat`)."""
    real_key: int = -1
    """:func:`addr_key` of ``resolved_ip`` (set by :class:`DnsResourceNat`)."""


def _ip_order(ip: IPAddress) -> tuple[int, IPAddress]:
    return (ip.version, ip)


def pair_proxy_ips(
    proxy_ips: Iterable[IPAddress], resolved_ips: Iterable[IPAddress]
) -> list[tuple[IPAddress, IPAddress | None]]:
    """Pair every proxy IP with a real IP of its family, round robin over sorted, de-duplicated sets.

    This is the fixed pairing of Firezone ``cbe07caaea`` (decision 0044): both families are mapped
    independently, whatever the counts.
    """
    proxies = sorted(set(proxy_ips), key=_ip_order)
    reals = sorted(set(resolved_ips), key=_ip_order)
    out: list[tuple[IPAddress, IPAddress | None]] = []
    for version in (4, 6):
        fam = [r for r in reals if r.version == version]
        for i, p in enumerate(q for q in proxies if q.version == version):
            out.append((p, fam[i % len(fam)] if fam else None))
    return out


class SetupNatError(StrEnum):
    UNKNOWN_RESOURCE = "unknown resource"
    NOT_DNS_RESOURCE = "not a DNS resource"
    DOMAIN_MISMATCH = "domain does not match the resource's address"


class NatVerdict(StrEnum):
    """Outcome of an outbound packet to a proxy IP, other than a drop."""

    SEND = "send"
    """Translated in place; write it to the TUN."""
    UNREACHABLE = "unreachable"
    """No usable mapping: answer with ICMP network/address unreachable (§6.1)."""


def _key(domain: str) -> str:
    return domain.lower()


class DnsResourceNat:
    """One client's proxy-IP translations and NAT sessions."""

    __slots__ = ("_by_key", "table", "translations")

    def __init__(self, max_sessions: int = MAX_NAT_SESSIONS) -> None:
        self.translations: dict[IPAddress, TranslationState] = {}
        self._by_key: dict[int, TranslationState] = {}  # the same, by addr_key(proxy IP)
        self.table = NatTable(max_sessions)

    def _set(self, proxy: IPAddress, state: TranslationState) -> None:
        state.proxy_ip = proxy
        state.real_key = -1 if state.resolved_ip is None else addr_key(state.resolved_ip)
        self.translations[proxy] = state
        self._by_key[addr_key(proxy)] = state

    def setup_nat(
        self,
        domain: str,
        authorization: Authorization | None,
        resolved_ips: Iterable[IPAddress],
        proxy_ips: Iterable[IPAddress],
    ) -> SetupNatError | None:
        """Map ``proxy_ips`` of ``domain`` to its ``resolved_ips`` (§8.5); ``None`` on success.

        ``authorization`` is the client's authorisation of the resource named in the request (``None``
        if it has none). The request is validated before anything changes (decision 0045). Proxy IPs
        outside the proxy ranges are ignored (decision 0047). On success the resource records
        ``domain -> resolved_ips``; the caller then rebuilds the client's filter table.
        """
        if authorization is None:
            return SetupNatError.UNKNOWN_RESOURCE
        resource = authorization.resource
        if not isinstance(resource, DnsResource):
            return SetupNatError.NOT_DNS_RESOURCE
        if not is_subdomain(domain, resource.address):
            return SetupNatError.DOMAIN_MISMATCH
        proxies: list[IPAddress] = []
        for ip in proxy_ips:
            if is_proxy_ip(ip):
                proxies.append(ip)
            else:
                log.warning("assigned_ips for %s: ignoring %s outside the proxy ranges", domain, ip)
        resolved = frozenset(resolved_ips)
        rid = resource.id
        if any(
            (st := self.translations.get(p)) is not None
            and (st.resource_id != rid or _key(st.domain) != _key(domain))
            for p in proxies
        ):
            log.info("client re-assigned proxy IPs (%s); resetting its DNS resource NAT", domain)
            self.clear()
        if not resolved:
            log.debug("no A / AAAA records for %s", domain)
        for proxy, real in pair_proxy_ips(proxies, resolved):
            current = self.translations.get(proxy)
            if current is not None and current.resolved_ip != real and self.table.has_inside_ip(proxy):
                log.debug("keeping %s -> %s: it has open NAT sessions", proxy, current.resolved_ip)
                continue
            self._set(proxy, TranslationState(rid, real, domain))
        authorization.domains[_key(domain)] = resolved
        return None

    def handle_domain_resolved(
        self,
        domain: str,
        authorization: Authorization | None,
        resolved_ips: Iterable[IPAddress] | None,
        proxy_ips: Iterable[IPAddress],
    ) -> NatStatus:
        """The ``domain_status`` to send after a resolution (``None``: it failed) (§8.5)."""
        if resolved_ips is None:
            return NatStatus.INACTIVE
        err = self.setup_nat(domain, authorization, resolved_ips, proxy_ips)
        if err is not None:
            log.debug("setup_nat for %s failed: %s", domain, err.value)
            return NatStatus.INACTIVE
        return NatStatus.ACTIVE

    def proxy_translations(self) -> list[tuple[IPAddress, uuid.UUID]]:
        """``(proxy IP, resource)`` pairs for :func:`gateway_core.policy.filters.build_filter_table`."""
        return [(ip, st.resource_id) for ip, st in self.translations.items()]

    def clear(self) -> None:
        self.translations.clear()
        self._by_key.clear()
        self.table.clear()

    # --- packets ---

    def translate_outbound_packet(self, buf: bytearray, now: Instant) -> NatVerdict | DropReason:
        """Translate, in place, a client packet whose destination is a proxy IP (§4 step 5.2, §9.2)."""
        try:
            proto, off, end = l4_info(buf)
        except DecodeError:
            return DropReason.MALFORMED_L4
        v6 = buf[0] >> 4 == 6
        dst = int.from_bytes(buf[24:40], "big") | _V6_FLAG if v6 else int.from_bytes(buf[16:20], "big")
        return self.translate_outbound_parsed(buf, now, dst, proto, off, end)

    def translate_outbound_parsed(
        self, buf: bytearray, now: Instant, dst_key: int, proto: int, off: int, end: int
    ) -> NatVerdict | DropReason:
        """:meth:`translate_outbound_packet` for a packet already located: ``dst_key`` is
        ``addr_key(destination)``, ``proto``/``off``/``end`` as :func:`gateway_core.wire.ip.l4_info`."""
        st = self._by_key.get(dst_key)
        if st is None or st.resolved_ip is None or (st.real_key >= _V6_FLAG) != (dst_key >= _V6_FLAG):
            return NatVerdict.UNREACHABLE
        assert st.proxy_ip is not None
        try:
            kind, value, _, rst = _nat_fields(buf, buf[0] >> 4, proto, off, end)
            if kind < 0:
                return DropReason.NAT_UNSUPPORTED_PROTOCOL
            s = self.table.translate_outgoing_key(
                kind, value, st.proxy_ip, dst_key, st.resolved_ip, st.real_key, now, rst
            )
            if isinstance(s, DropReason):
                return s
            nat_rewrite(buf, dst=s.real_ip, sport=s.outside_value)
        except DecodeError:
            return DropReason.MALFORMED_L4
        return NatVerdict.SEND

    def translate_inbound_packet(
        self, buf: bytearray, now: Instant, client_v4: IPAddress, client_v6: IPAddress
    ) -> bytes | bytearray | DropReason:
        """Reverse-translate a packet from the TUN (§5 step 4.2, §9.3, §6.3).

        Returns ``buf`` (rewritten in place, or untouched when no session applies), a fresh ICMP error
        for the client, or a drop reason. Other IP protocols have no session and pass untouched
        (decision 0046); unsupported ICMP types are dropped, as in the reference.
        """
        try:
            proto, off, end = l4_info(buf)
            version = buf[0] >> 4
            if (
                proto == (PROTO_ICMP if version == 4 else PROTO_ICMPV6)
                and end - off >= 1
                and buf[off] not in _ECHO_TYPES[(version, proto)]
            ):
                return self._inbound_icmp_error(buf, client_v4, client_v6)
            kind, _, value, rst = _nat_fields(buf, version, proto, off, end)
            if kind < 0:
                return buf
            src = (
                int.from_bytes(buf[8:24], "big") | _V6_FLAG
                if version == 6
                else int.from_bytes(buf[12:16], "big")
            )
            s = self.table.translate_incoming_key(kind, value, src, now, rst)
            if s is None:
                return DropReason.NAT_SESSION_EXPIRED if self.table.is_expired_key(kind, value, src) else buf
            nat_rewrite(buf, src=s.proxy_ip, dport=s.inside_value)
        except DecodeError:
            return DropReason.MALFORMED_L4
        return buf

    def _inbound_icmp_error(
        self, buf: bytearray, client_v4: IPAddress, client_v6: IPAddress
    ) -> bytes | bytearray | DropReason:
        try:
            err = parse_icmp_error(buf)
        except UnsupportedIcmpError:
            return DropReason.NAT_UNSUPPORTED_PROTOCOL
        if err is None:  # pragma: no cover - only echo types return None, and those never get here
            return buf
        kind = L4_ICMP if err.inner_proto in (PROTO_ICMP, PROTO_ICMPV6) else err.inner_proto
        s = self.table.lookup_icmp_error(kind, err.inner_sport, err.inner_dst)
        if s is not None:
            client = client_v4 if err.version == 4 else client_v6
            return translate_icmp_error(err, s.proxy_ip, s.inside_value, client)
        if self.table.is_expired(kind, err.inner_sport, err.inner_dst):
            return DropReason.NAT_SESSION_EXPIRED
        return buf

    def handle_timeout(self, now: Instant) -> int:
        return self.table.handle_timeout(now)

    def poll_timeout(self) -> Instant | None:
        return self.table.poll_timeout()


# --------------------------------------------------------------------------------------------------
# Packet field access (no objects per packet beyond the address).

_ECHO_TYPES = {
    (4, PROTO_ICMP): (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY),
    (6, PROTO_ICMPV6): (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY),
}


def _nat_fields(buf: bytearray, version: int, proto: int, off: int, end: int) -> tuple[int, int, int, bool]:
    """``(kind, source value, destination value, rst)``; kind -1 when the NAT cannot handle the packet."""
    if proto in (PROTO_TCP, PROTO_UDP):
        if end - off < (20 if proto == PROTO_TCP else 8):
            raise DecodeError("transport header truncated")
        sport = (buf[off] << 8) | buf[off + 1]
        dport = (buf[off + 2] << 8) | buf[off + 3]
        rst = proto == PROTO_TCP and bool(buf[off + 13] & TCP_RST)
        return proto, sport, dport, rst
    echo = _ECHO_TYPES.get((version, proto))
    if echo is not None:
        if end - off < 8:
            raise DecodeError("ICMP header truncated")
        if buf[off] in echo:
            ident = (buf[off + 4] << 8) | buf[off + 5]
            return L4_ICMP, ident, ident, False
    return -1, 0, 0, False
