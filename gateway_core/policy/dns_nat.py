"""DNS-resource translations: which real IP each proxy IP stands for, and the packets through the NAT
(Firezone: ``setup_nat``, ``transform_network_to_tun`` and ``transform_tun_to_network`` in
``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``; the sessions in
``rust/connlib/tunnel/src/gateway/nat_table.rs``).

Theory of operation. The client invents *proxy IPs* for a DNS-resource domain and tells the gateway
(``assigned_ips``). After resolving the domain, :meth:`DnsResourceNat.setup_nat` validates the request
(decision 0045), drops proxy IPs outside the proxy ranges (decision 0047), forgets the translation and
sessions of each proxy IP the client re-numbered to another name (decision 0178), and pairs each proxy IP
with a real IP of its family (:func:`pair_proxy_ips`, decision 0044). A proxy IP with open sessions keeps
its old real IP (as in the reference). Packets then go through the client's
:class:`~gateway_core.policy.nat.NatTable`: :meth:`DnsResourceNat.translate_outbound_packet` rewrites
destination and source port (or echo id) in place, :meth:`DnsResourceNat.translate_inbound_packet` the
reverse, and re-addresses ICMP errors quoting a session's packet. Header rewriting uses
:mod:`gateway_core.wire.rewrite` and :mod:`gateway_core.wire.icmp`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.contract import Deadline
from gateway_core.dns.patterns import is_subdomain
from gateway_core.errors import DecodeError, DropReason
from gateway_core.policy.authorizations import Authorization
from gateway_core.policy.filters import L4_ICMP, L4_OTHER, is_proxy_ip
from gateway_core.policy.nat import MAX_NAT_SESSIONS, V6_FLAG, NatSession, NatTable, addr_key, no_change
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

log = logging.getLogger("gateway_core.policy.dns_nat")


# --------------------------------------------------------------------------------------------------
# Proxy-IP translations (the reference's ``TranslationState`` and ``setup_nat``).


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
    """:func:`addr_key` of ``resolved_ip`` (set by :class:`DnsResourceNat`; -1 without one)."""


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
    """No usable mapping: answer with ICMP network/address unreachable."""


def _key(domain: str) -> str:
    """A name for caseless comparison (names are ASCII: the decoder refuses anything else)."""
    return domain.casefold()


class DnsResourceNat:
    """One client's proxy-IP translations and NAT sessions."""

    __slots__ = ("_by_key", "table", "translations")

    def __init__(self, max_sessions: int = MAX_NAT_SESSIONS, changed: Callable[[], None] = no_change) -> None:
        self.translations: dict[IPAddress, TranslationState] = {}
        self._by_key: dict[int, TranslationState] = {}  # the same, by addr_key(proxy IP)
        self.table = NatTable(max_sessions, changed)
        """``changed`` is called whenever a translation or a session changes (the flow cache's clear)."""

    def _set(self, proxy: IPAddress, state: TranslationState) -> None:
        self.table.changed()
        state.proxy_ip = proxy
        if state.resolved_ip is not None:
            state.real_key = addr_key(state.resolved_ip)
        self.translations[proxy] = state
        self._by_key[addr_key(proxy)] = state

    def setup_nat(
        self,
        domain: str,
        authorization: Authorization | None,
        resolved_ips: Iterable[IPAddress],
        proxy_ips: Iterable[IPAddress],
    ) -> SetupNatError | None:
        """Map ``proxy_ips`` of ``domain`` to its ``resolved_ips`` (``setup_nat``); ``None`` on success.

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
        for p in proxies:
            st = self.translations.get(p)
            if st is not None and (st.resource_id != rid or _key(st.domain) != _key(domain)):
                # Re-numbered (a client restart): this proxy IP's old translation and sessions go, the
                # rest stays (decision 0178; the reference resets the client's whole NAT here).
                log.info("client re-assigned proxy IP %s from %s to %s", p, st.domain, domain)
                self._forget(p)
        log.debug("%s resolved to %s", domain, sorted(resolved, key=_ip_order) or "no A / AAAA records")
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
        """The ``domain_status`` to send after a resolution (``None``: it failed), as
        ``handle_domain_resolved`` in ``rust/connlib/tunnel/src/gateway.rs``."""
        if resolved_ips is None:
            return NatStatus.INACTIVE
        err = self.setup_nat(domain, authorization, resolved_ips, proxy_ips)
        if err is not None:
            log.debug("setup_nat for %s failed: %s", domain, err.value)
            return NatStatus.INACTIVE
        return NatStatus.ACTIVE

    def _forget(self, proxy: IPAddress) -> None:
        del self.translations[proxy]
        del self._by_key[addr_key(proxy)]
        self.table.forget_inside_ip(proxy)
        self.table.changed()

    def proxy_translations(self) -> list[tuple[IPAddress, uuid.UUID]]:
        """``(proxy IP, resource)`` pairs for :func:`gateway_core.policy.filters.build_filter_table`."""
        return [(ip, st.resource_id) for ip, st in self.translations.items()]

    def clear(self) -> None:
        self.translations.clear()
        self._by_key.clear()
        self.table.clear()

    # --- packets ---

    def translate_outbound_packet(self, buf: bytearray, now: Instant) -> NatVerdict | DropReason:
        """Translate, in place, a client packet whose destination is a proxy IP (``translate_outgoing``)."""
        try:
            proto, off, end = l4_info(buf)
        except DecodeError:
            return DropReason.MALFORMED_L4
        v6 = buf[0] >> 4 == 6
        dst = int.from_bytes(buf[24:40], "big") | V6_FLAG if v6 else int.from_bytes(buf[16:20], "big")
        out = self.translate_outbound_parsed(buf, now, dst, proto, off, end)
        return NatVerdict.SEND if isinstance(out, NatSession) else out

    def translate_outbound_parsed(
        self, buf: bytearray, now: Instant, dst_key: int, proto: int, off: int, end: int
    ) -> NatSession | NatVerdict | DropReason:
        """:meth:`translate_outbound_packet` for a packet already located: ``dst_key`` is
        ``addr_key(destination)``, ``proto``/``off``/``end`` as :func:`gateway_core.wire.ip.l4_info`.
        Translated and sent: the session it went through."""
        st = self._by_key.get(dst_key)
        if st is None or st.resolved_ip is None or (st.real_key ^ dst_key) & V6_FLAG:
            return NatVerdict.UNREACHABLE  # (no real IP, or one of the other family: bit 128 differs)
        assert st.proxy_ip is not None
        try:
            kind, value, _, rst = _nat_fields(buf, buf[0] >> 4, proto, off, end)
            if kind == L4_OTHER:
                return DropReason.NAT_UNSUPPORTED_PROTOCOL
            s = self.table.translate_outgoing_key(
                kind, value, st.proxy_ip, dst_key, st.resolved_ip, st.real_key, now, rst
            )
            if isinstance(s, DropReason):
                return s
            nat_rewrite(buf, dst=s.real_ip, sport=s.outside_value)
        except DecodeError:
            return DropReason.MALFORMED_L4
        return s

    def translate_inbound_packet(
        self, buf: bytearray, now: Instant, client_v4: IPAddress, client_v6: IPAddress
    ) -> bytes | bytearray | DropReason:
        """Reverse-translate a packet from the TUN (``translate_incoming``).

        Returns ``buf`` (rewritten in place, or untouched when no session applies), a fresh ICMP error
        for the client, or a drop reason. Other IP protocols have no session and pass untouched
        (decision 0046); unsupported ICMP types are dropped, as in the reference.
        """
        try:
            proto, off, end = l4_info(buf)
        except DecodeError:
            return DropReason.MALFORMED_L4
        version = buf[0] >> 4
        if is_icmp_error(buf, version, proto, off, end):
            return self.translate_icmp_error_packet(buf, client_v4, client_v6)
        src = (
            int.from_bytes(buf[8:24], "big") | V6_FLAG if version == 6 else int.from_bytes(buf[12:16], "big")
        )
        out = self.translate_inbound_parsed(buf, now, src, proto, off, end)
        return out if isinstance(out, DropReason) else buf

    def translate_inbound_parsed(
        self, buf: bytearray, now: Instant, src_key: int, proto: int, off: int, end: int
    ) -> NatSession | DropReason | None:
        """Reverse NAT of a packet that is not an ICMP error, already located (``src_key`` is
        ``addr_key(source)``): the session it was rewritten for (in place), ``None`` when no session
        applies (untouched), or a drop reason."""
        try:
            kind, _, value, rst = _nat_fields(buf, buf[0] >> 4, proto, off, end)
            if kind == L4_OTHER:
                return None
            s = self.table.translate_incoming_key(kind, value, src_key, now, rst)
            if s is None:
                return (
                    DropReason.NAT_SESSION_EXPIRED
                    if self.table.is_expired_key(kind, value, src_key)
                    else None
                )
            nat_rewrite(buf, src=s.proxy_ip, dport=s.inside_value)
        except DecodeError:
            return DropReason.MALFORMED_L4
        return s

    def translate_icmp_error_packet(
        self, buf: bytearray, client_v4: IPAddress, client_v6: IPAddress
    ) -> bytes | bytearray | DropReason:
        """An ICMP error from the TUN: re-addressed to the client if it quotes a session's packet
        (a fresh ``bytes``), ``buf`` untouched if it quotes none, or a drop reason."""
        try:
            err = parse_icmp_error(buf)
        except UnsupportedIcmpError:
            return DropReason.NAT_UNSUPPORTED_PROTOCOL
        except DecodeError:
            return DropReason.MALFORMED_L4
        if err is None:
            return buf
        kind = L4_ICMP if err.inner_proto in (PROTO_ICMP, PROTO_ICMPV6) else err.inner_proto
        s = self.table.lookup_icmp_error(kind, err.inner_sport, err.inner_dst)
        if s is not None:
            client = client_v4 if err.version == 4 else client_v6
            return translate_icmp_error(err, s.proxy_ip, s.inside_value, client)
        if self.table.is_expired(kind, err.inner_sport, err.inner_dst):
            return DropReason.NAT_SESSION_EXPIRED
        return buf

    def handle_timeout(self, now: Instant) -> None:
        self.table.handle_timeout(now)

    def poll_timeout(self) -> Deadline | None:
        return self.table.poll_timeout()


# --------------------------------------------------------------------------------------------------
# Packet field access (no objects per packet beyond the address).

_ECHO_TYPES = {
    (4, PROTO_ICMP): (ICMPV4_ECHO_REQUEST, ICMPV4_ECHO_REPLY),
    (6, PROTO_ICMPV6): (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY),
}


def is_icmp_error(buf: bytes | bytearray, version: int, proto: int, off: int, end: int) -> bool:
    """Whether a located packet is an ICMP(v6) message of the packet's family other than an echo (an
    error, or an unsupported type that :func:`parse_icmp_error` rejects)."""
    if proto != (PROTO_ICMP if version == 4 else PROTO_ICMPV6) or end <= off:
        return False
    return buf[off] not in _ECHO_TYPES[(version, proto)]


def _nat_fields(buf: bytearray, version: int, proto: int, off: int, end: int) -> tuple[int, int, int, bool]:
    """``(kind, source value, destination value, rst)``; kind ``L4_OTHER`` when the NAT cannot handle the
    packet."""
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
    return L4_OTHER, 0, 0, False
