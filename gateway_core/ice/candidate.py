"""ICE candidates as Firezone signals them (str0m's ``src/ice/candidate.rs`` and ``src/ice/preference.rs``).

A :class:`Candidate` is immutable. Its identity for invalidation is ``(addr, base, raddr, kind)``
(:meth:`Candidate.key`), not its string. Priorities follow RFC 8445 with str0m's type preferences
(host 126, prflx 110, srflx 100, relay 2) and local preferences (see :func:`local_preference`).

String form (the SDP ``candidate:`` attribute value, no ``a=``)::

    candidate:<foundation> 1 udp <priority> <ip> <port> typ <kind>[ raddr <ip> rport <port>][ ufrag <u>]

``raddr``/``rport`` are written for srflx/prflx/relay and are always the unspecified address and port 0
(str0m never reveals the related address). :func:`parse` accepts str0m's grammar: optional suffixes
``tcptype``, ``raddr/rport``, ``generation``, ``network-id``, ``ufrag``, ``network-cost`` in that order;
anything after the last suffix it recognises is ignored. It raises :class:`DecodeError` only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError


class Kind(StrEnum):
    HOST = "host"
    PRFLX = "prflx"
    SRFLX = "srflx"
    RELAY = "relay"


TYPE_PREFERENCE: dict[Kind, int] = {Kind.HOST: 126, Kind.PRFLX: 110, Kind.SRFLX: 100, Kind.RELAY: 2}
"""str0m ``candidate.rs:385-429``: relayed is 2, not RFC 8445's recommended 0."""
LOCAL_PREF_START: dict[Kind, int] = {
    Kind.HOST: 65535,
    Kind.PRFLX: 49151,
    Kind.SRFLX: 32767,
    Kind.RELAY: 16383,
}
"""str0m ``preference.rs``: where the local preference of each kind starts (decreasing per candidate)."""
RELAY_FAMILY_PUNISHMENT = 1000
"""str0m: a relayed candidate of a family other than its local interface's loses 1000 local preference."""
COMPONENT = 1
"""RTP component; Firezone has exactly one."""

UNSPECIFIED_V4 = SocketAddr(IPv4Address(0), 0)
UNSPECIFIED_V6 = SocketAddr(IPv6Address(0), 0)


def unspecified(like: SocketAddr) -> SocketAddr:
    return UNSPECIFIED_V4 if like.ip.version == 4 else UNSPECIFIED_V6


def default_local_preference(addr: SocketAddr) -> int:
    """str0m's default for a candidate never added to an agent: 65535 IPv6, 65534 IPv4."""
    return 65535 if addr.ip.version == 6 else 65534


def compute_priority(kind: Kind, local_pref: int, component: int = COMPONENT) -> int:
    """RFC 8445 §5.1.2.1: ``type_pref << 24 | local_pref << 8 | (256 - component)``."""
    return (TYPE_PREFERENCE[kind] << 24) | (local_pref << 8) | (256 - component)


def local_preference(kind: Kind, addr: SocketAddr, same_kind: int, local_if: SocketAddr | None = None) -> int:
    """Local preference the agent assigns when a candidate is added (str0m ``preference.rs``).

    ``start(kind) - (1 if IPv4) - 2 * same_kind - punishment``; ``same_kind`` counts local candidates
    already in the agent of the same kind and family (discarded ones included).
    """
    pref = LOCAL_PREF_START[kind] - (1 if addr.ip.version == 4 else 0) - 2 * same_kind
    if kind is Kind.RELAY and local_if is not None and local_if.ip.version != addr.ip.version:
        pref -= RELAY_FAMILY_PUNISHMENT
    return max(pref, 0)


def foundation_for(kind: Kind, base: SocketAddr, raddr: SocketAddr | None, priority: int) -> str:
    """8 hex digits of the byte-swapped priority then a 64-bit hash of (kind, base IP, raddr IP, proto)."""
    swapped = int.from_bytes(priority.to_bytes(4, "big"), "little")
    h = hashlib.sha256(f"{kind}|{base.ip}|{raddr.ip if raddr else ''}|udp".encode()).digest()
    return f"{swapped:08x}{int.from_bytes(h[:8], 'big'):x}"


def is_valid_local_address(addr: SocketAddr) -> bool:
    """str0m rejects unspecified, IPv4 link-local/broadcast/multicast and IPv6 multicast host candidates."""
    ip = addr.ip
    if ip.is_unspecified or ip.is_multicast:
        return False
    return not (ip.version == 4 and (ip.is_link_local or ip == IPv4Address("255.255.255.255")))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ICE candidate (local or remote)."""

    kind: Kind
    addr: SocketAddr
    base: SocketAddr
    priority: int
    foundation: str
    raddr: SocketAddr | None = None
    ufrag: str | None = None
    local_if: SocketAddr | None = None
    """For relayed candidates: the local socket address the relay is reached from (not signalled)."""

    def key(self) -> tuple[SocketAddr, SocketAddr, SocketAddr | None, Kind]:
        """Identity for invalidation (str0m ``agent.rs:849-885``)."""
        return (self.addr, self.base, self.raddr, self.kind)

    def with_local_preference(self, local_pref: int, ufrag: str | None) -> Candidate:
        prio = compute_priority(self.kind, local_pref)
        return replace(
            self,
            priority=prio,
            foundation=foundation_for(self.kind, self.base, self.raddr, prio),
            ufrag=ufrag,
        )

    def to_sdp(self) -> str:
        s = (
            f"candidate:{self.foundation} {COMPONENT} udp {self.priority} {self.addr.ip} {self.addr.port} "
            f"typ {self.kind.value}"
        )
        if self.kind is not Kind.HOST:
            r = unspecified(self.addr)
            s += f" raddr {r.ip} rport {r.port}"
        if self.ufrag is not None:
            s += f" ufrag {self.ufrag}"
        return s


def _make(kind: Kind, addr: SocketAddr, base: SocketAddr, local_if: SocketAddr | None = None) -> Candidate:
    raddr = None if kind is Kind.HOST else unspecified(addr)
    prio = compute_priority(kind, default_local_preference(addr))
    return Candidate(kind, addr, base, prio, foundation_for(kind, base, raddr, prio), raddr, None, local_if)


def host(addr: SocketAddr) -> Candidate:
    return _make(Kind.HOST, addr, addr)


def server_reflexive(addr: SocketAddr, base: SocketAddr) -> Candidate:
    return _make(Kind.SRFLX, addr, base)


def relayed(addr: SocketAddr, local_if: SocketAddr) -> Candidate:
    return _make(Kind.RELAY, addr, addr, local_if)


def peer_reflexive(
    addr: SocketAddr, base: SocketAddr, priority: int, foundation: str = "tmp_prflx"
) -> Candidate:
    return Candidate(Kind.PRFLX, addr, base, priority, foundation, unspecified(addr))


# --- parsing ------------------------------------------------------------------------------------------------

_KINDS = {k.value: k for k in Kind}


def _parse_ip(s: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(s)
    except ValueError as e:
        raise DecodeError(f"bad IP {s!r}") from e


def _parse_int(s: str, hi: int) -> int:
    if not s.isascii() or not s.isdigit():
        raise DecodeError(f"bad number {s!r}")
    v = int(s)
    if v > hi:
        raise DecodeError(f"number out of range {s!r}")
    return v


def parse(text: str) -> Candidate:
    """Parse a ``candidate:`` string as str0m does; :class:`DecodeError` if malformed."""
    if text.startswith("a="):
        text = text[2:]
    if not text.startswith("candidate:"):
        raise DecodeError("no candidate: prefix")
    tok = text[len("candidate:") :].split(" ")
    if len(tok) < 8 or tok[6] != "typ":
        raise DecodeError("short candidate")
    foundation = tok[0]
    if not foundation:
        raise DecodeError("empty foundation")
    component = _parse_int(tok[1], 65535)
    if component != COMPONENT:
        raise DecodeError("component must be 1")
    if tok[2].lower() != "udp":
        raise DecodeError("only UDP candidates")
    priority = _parse_int(tok[3], 2**32 - 1)
    addr = SocketAddr(_parse_ip(tok[4]), _parse_int(tok[5], 65535))
    kind = _KINDS.get(tok[7])
    if kind is None:
        raise DecodeError(f"unknown candidate type {tok[7]!r}")
    rest = tok[8:]
    raddr: SocketAddr | None = None
    ufrag: str | None = None
    i = 0
    for name in ("tcptype", "raddr", "generation", "network-id", "ufrag", "network-cost"):
        if i + 1 < len(rest) and rest[i] == name:
            if name == "raddr":
                if i + 3 >= len(rest) or rest[i + 2] != "rport":
                    raise DecodeError("raddr without rport")
                raddr = SocketAddr(_parse_ip(rest[i + 1]), _parse_int(rest[i + 3], 65535))
                i += 4
                continue
            if name == "ufrag":
                ufrag = rest[i + 1]
            i += 2
    return Candidate(kind, addr, addr, priority, foundation, raddr, ufrag)
