"""The DNS-resource NAT session table of one client (Firezone's
``rust/connlib/tunnel/src/gateway/nat_table.rs``).

Theory of operation:

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
- ICMP errors quoting a session's packet find it with :meth:`NatTable.lookup_icmp_error`; they do not
  refresh it.

Which real IP a proxy IP stands for, and the packet rewriting, live in
:mod:`gateway_core.policy.dns_nat`. Times are monotonic ``Instant`` nanoseconds. Addresses are keyed by
:func:`addr_key` integers; the per-packet path allocates one key tuple per lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import chain, takewhile
from typing import Any

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant, secs
from gateway_core.contract import Deadline, TimerHeap, advance
from gateway_core.errors import DropReason, UsageError
from gateway_core.policy.filters import L4_ICMP, L4_TCP, L4_UDP

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
OUTSIDE_VALUES = 65535
"""Outside values a new session can take towards one real IP (``value`` up to 65535, then 1 up to
``value - 1``; 0 only as the client's own). A table bound below it always leaves one free, so the search
for a free value never fails (Firezone's "Exhausted NAT" error cannot happen)."""

_TTL = {L4_TCP: TCP_TTL, L4_UDP: UDP_TTL, L4_ICMP: ICMP_TTL}

V6_FLAG = 1 << 128


def no_change() -> None:
    """The default ``changed`` callback of a table: nothing to tell."""


def addr_key(ip: IPAddress) -> int:
    """An address as a dict key: its integer, with bit 128 set for IPv6 so the families never collide.

    Integers hash in C; ``IPv4Address.__hash__`` is Python code and costs about as much as a NAT lookup.
    """
    return int(ip) | V6_FLAG if ip.version == 6 else int(ip)


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
    """The NAT sessions of one client, bounded and refreshed in both directions.

    Addresses are given as :class:`IPAddress` (and kept in the sessions for header rewriting); the
    ``*_key`` variants take :func:`addr_key` integers instead, for the per-packet path.
    """

    __slots__ = (
        "_by_inside",
        "_by_outside",
        "_inside_ips",
        "_next_due",
        "_now",
        "_owner",
        "_tombstones",
        "_watch",
        "changed",
        "max_sessions",
    )

    def __init__(self, max_sessions: int = MAX_NAT_SESSIONS, changed: Callable[[], None] = no_change) -> None:
        if not 0 < max_sessions < OUTSIDE_VALUES:
            raise UsageError("max_sessions must be 1 to 65534")
        self.max_sessions = max_sessions
        self.changed = changed
        """Called whenever a session is created or ends, or the table is cleared (the owner's flow cache
        of :mod:`gateway_core.policy.flowcache` is cleared)."""
        self._by_inside: dict[NatKey, NatSession] = {}
        self._by_outside: dict[NatKey, NatSession] = {}
        self._inside_ips: dict[int, int] = {}  # addr_key(proxy IP) -> number of sessions
        self._tombstones: dict[NatKey, Instant] = {}  # outside key -> when it ended (in time order)
        self._next_due: Instant | None = None
        self._now = Instant(0)
        self._watch: TimerHeap[Any] | None = None
        self._owner: object = None

    def watch(self, heap: TimerHeap[Any], owner: object) -> None:
        """Schedule ``owner`` in ``heap`` whenever this table's next deadline moves earlier (a new session
        or tombstone; a refresh only moves it later and costs nothing): the owner's kept deadline stays a
        lower bound without the per-packet path paying for it."""
        self._watch, self._owner = heap, owner

    def __len__(self) -> int:
        return len(self._by_inside)

    def _tick(self, now: Instant) -> None:
        if now != self._now:  # (per packet: the call to the R2 helper only when time moved)
            self._now = advance(self._now, now)

    def _due_at(self, t: Instant) -> None:
        if self._next_due is None or t < self._next_due:
            self._next_due = t
            if self._watch is not None:
                self._watch.schedule(self._owner, t)

    def _unlink(self, s: NatSession) -> None:
        """Remove ``s`` (no tombstone: a replaced or forgotten translation)."""
        self.changed()
        del self._by_inside[s.inside_key]
        del self._by_outside[s.outside_key]
        n = self._inside_ips[s.proxy_key] - 1
        if n:
            self._inside_ips[s.proxy_key] = n
        else:
            del self._inside_ips[s.proxy_key]

    def _end(self, s: NatSession, now: Instant) -> None:
        """End ``s`` (a reset, a timeout): removed, its outside key tombstoned."""
        self._unlink(s)
        # No tombstone of this key exists (creating the session removed it): appended, the tombstones
        # stay in time order.
        self._tombstones[s.outside_key] = now
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
        """The session for a client packet ``(proto, value) -> proxy_ip`` towards ``real_ip``
        (the reference's ``translate_outgoing``).

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
        rst: bool,
    ) -> NatSession | DropReason:
        """:meth:`translate_outgoing` with the addresses' keys already computed."""
        self._tick(now)
        inside = (proto, value, proxy_key)
        s = self._by_inside.get(inside)
        if s is not None and s.real_key == real_key:
            s.last_seen = now
            if rst:
                self._end(s, now)
            return s
        if s is None and len(self._by_inside) >= self.max_sessions:
            self._sweep(now)
            if len(self._by_inside) >= self.max_sessions:
                return DropReason.NAT_TABLE_FULL
        # At most max_sessions (< OUTSIDE_VALUES) values are taken towards real_key: one is free.
        outside_value = next(
            v
            for v in chain(range(value, 65536), range(1, value))
            if (proto, v, real_key) not in self._by_outside
        )
        if s is not None:
            self._unlink(s)  # the translation changed: replaced silently
        new = NatSession(proto, value, proxy_ip, outside_value, real_ip, now)
        self.changed()
        self._by_inside[inside] = new
        self._by_outside[new.outside_key] = new
        self._inside_ips[proxy_key] = self._inside_ips.get(proxy_key, 0) + 1
        self._tombstones.pop(new.outside_key, None)
        self._due_at(Instant(now + new.ttl))
        return new

    def translate_incoming(
        self, proto: int, value: int, src_ip: IPAddress, now: Instant, rst: bool = False
    ) -> NatSession | None:
        """The session a resource's packet ``src_ip -> (proto, value)`` belongs to, refreshed
        (the reference's ``translate_incoming``)."""
        return self.translate_incoming_key(proto, value, addr_key(src_ip), now, rst)

    def translate_incoming_key(
        self, proto: int, value: int, src_key: int, now: Instant, rst: bool
    ) -> NatSession | None:
        """:meth:`translate_incoming` with the source address as :func:`addr_key`."""
        self._tick(now)
        s = self._by_outside.get((proto, value, src_key))
        if s is None:
            return None
        s.last_seen = now
        if rst:
            self._end(s, now)
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

    def forget_inside_ip(self, proxy_ip: IPAddress) -> None:
        """Forget the sessions to ``proxy_ip`` without tombstones (the client gave it to another name,
        decision 0178)."""
        key = addr_key(proxy_ip)
        if key in self._inside_ips:
            for s in [s for s in self._by_inside.values() if s.proxy_key == key]:
                self._unlink(s)

    def clear(self) -> None:
        """Forget every session and tombstone (peer removal)."""
        self.changed()
        self._by_inside.clear()
        self._by_outside.clear()
        self._inside_ips.clear()
        self._tombstones.clear()
        self._next_due = None

    # --- time ---

    def _sweep(self, now: Instant) -> None:
        expired = [s for s in self._by_inside.values() if now - s.last_seen >= s.ttl]
        for s in expired:
            log.debug("NAT session expired: %r", s)
            self._end(s, now)
        tombs = self._tombstones  # in time order: the old ones lead
        for key in list(takewhile(lambda k: now - tombs[k] >= TOMBSTONE_TTL, tombs)):
            del tombs[key]
        nxt = [Instant(s.last_seen + s.ttl) for s in self._by_inside.values()]
        if self._tombstones:
            nxt.append(Instant(next(iter(self._tombstones.values())) + TOMBSTONE_TTL))
        self._next_due = min(nxt) if nxt else None

    def handle_timeout(self, now: Instant) -> None:
        """End the sessions idle for their TTL and forget old tombstones."""
        self._tick(now)
        if self._next_due is None or now < self._next_due:
            return
        self._sweep(now)

    def poll_timeout(self) -> Deadline | None:
        """When something may next expire (a lower bound, never before the last ``now``); ``None`` when
        empty."""
        if self._next_due is None:
            return None
        return Deadline(max(self._next_due, self._now), "nat expiry")
