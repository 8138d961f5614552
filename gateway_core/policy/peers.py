"""Every client's policy on this gateway: the peer store and the gateway-wide operations on it
(Firezone: ``GatewayState`` in ``rust/connlib/tunnel/src/gateway.rs`` and
``rust/connlib/tunnel/src/peer_store.rs``).

Theory of operation. :class:`Peers` owns one :class:`~gateway_core.policy.client.ClientPolicy` per client
that has (or had) an authorisation, indexed by client id and by each tunnel address ever given for it
(a ``/32`` and a ``/128`` per client; a later client with the same address takes it over, with a
warning). It knows nothing of connections: each operation returns what the owner must do about them
(say goodbye, send a control packet, resolve a domain).

- ``init`` sets the gateway's tunnel addresses (:meth:`Peers.set_tunnel_ips`); without them
  authorisations are not recorded (the reference only asserts in debug builds and drops them).
- Authorisations come and go per (client, resource); a client left without resources is removed and
  must be sent a ``goodbye`` (:meth:`Peers.remove_access`, and the periodic sweep).
- On the ticks of a one-second grid (:data:`~gateway_core.policy.authorizations.EXPIRE_RESOURCES_INTERVAL`,
  :meth:`Peers.handle_timeout`) expired authorisations are removed, NAT sessions are aged, and empty
  clients are removed (each goes out through :meth:`Peers.poll_removed`: say goodbye). Expiry is therefore
  enforced within a second, as in the reference. Only the clients with something due are visited: each
  client's next deadline is kept in one of two :class:`~gateway_core.contract.TimerHeap` (NAT sessions and
  "empty, remove me" in monotonic time; authorisation expiry in wall-clock time, so a new wall-clock
  anchor moves them all at once without rescheduling), and the grid ticks at which nothing is due are
  skipped (decision 0140). A NAT table tells its heap when a new session makes its deadline earlier; a
  refresh by a packet only makes it later, so the kept one is rechecked when it comes, never missed.
- A p2p control packet from a client (:meth:`Peers.handle_control`): ``assigned_ips`` for a resource
  the client has becomes a :class:`ResolveRequest` (the owner resolves the domain and calls
  :meth:`Peers.domain_resolved`, which returns the ``domain_status`` packet); for any other resource the
  ``Inactive`` reply comes at once; ``goodbye`` removes the client.
- Packets from the TUN are routed by destination (:meth:`Peers.route_tun`): outside the tunnel ranges
  or to no known client they are dropped silently.
- Each policy counts its own drops; :meth:`Peers.policy_stats` adds up every policy's counters, those of
  clients since removed (or replaced) included, for the gateway's statistics.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.contract import Deadline, TimerHeap, advance, earliest
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.policy.authorizations import ExpiryTimer, InitAuthorization
from gateway_core.policy.client import ClientPolicy, ClientProperties
from gateway_core.policy.nat import MAX_NAT_SESSIONS, V6_FLAG, addr_key
from gateway_core.policy.p2p_control import (
    AssignedIps,
    Goodbye,
    NatStatus,
    build_domain_status,
    gateway_read_control,
)
from gateway_core.policy.resources import ResourceDescription
from gateway_core.stats import Stats

log = logging.getLogger("gateway_core.policy.peers")

IPV4_TUNNEL = IPv4Network("100.64.0.0/11")
"""Client and gateway tunnel addresses (Firezone ``IPV4_TUNNEL``, ``lib.rs:57``)."""
IPV6_TUNNEL = IPv6Network("fd00:2021:1111::/107")
"""The same for IPv6 (Firezone ``IPV6_TUNNEL``, ``lib.rs:61``)."""

_V4_TUN_SHIFT = 32 - IPV4_TUNNEL.prefixlen
_V4_TUN_KEY = int(IPV4_TUNNEL.network_address) >> _V4_TUN_SHIFT
_V6_TUN_SHIFT = 128 - IPV6_TUNNEL.prefixlen
_V6_TUN_KEY = int(IPV6_TUNNEL.network_address) >> _V6_TUN_SHIFT
_V4_ADDR = struct.Struct("!I")
_V6_ADDR = struct.Struct("!QQ")


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """Resolve ``domain`` for ``client``'s DNS resource ``resource`` (then :meth:`Peers.domain_resolved`)."""

    client: uuid.UUID
    resource: uuid.UUID
    domain: str
    proxy_ips: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class ControlReply:
    """Send ``packet`` (a p2p control packet) to the client that sent the control packet."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class ClientGone:
    """The client said goodbye: its policy is removed; drop its connection (no reply)."""

    client: uuid.UUID


ControlOutcome = ResolveRequest | ControlReply | ClientGone | DropReason | None
"""``None``: an event the gateway ignores (``domain_status``, unknown types)."""


class Peers:
    """All clients' policies, indexed by id and by tunnel address."""

    __slots__ = (
        "_by_ip",
        "_mono",
        "_now",
        "_removed",
        "_retired",
        "_stats_of",
        "_utc",
        "_wall",
        "by_cid",
        "by_tunnel_address",
        "clients",
        "expiry",
        "gateway_ips",
        "max_nat_sessions",
    )

    def __init__(
        self, max_nat_sessions: int = MAX_NAT_SESSIONS, wall_clock: Callable[[Instant], int] | None = None
    ) -> None:
        """``wall_clock(now)``: wall-clock UTC nanoseconds at ``now`` (the gateway's anchor); the default
        is ``now`` itself (tests)."""
        self.clients: dict[uuid.UUID, ClientPolicy] = {}
        self.by_cid: dict[str, ClientPolicy] = {}
        """The same policies by ``str(client id)``, the node's name of the client's connection: the data
        path's key (a ``str`` caches its hash; a ``UUID`` hashes in Python, about 0.2 us a lookup)."""
        self._by_ip: dict[int, ClientPolicy] = {}  # addr_key(tunnel IP) -> its client's policy
        self.by_tunnel_address: dict[bytes, ClientPolicy] = {}
        """The same for the addresses inside the tunnel ranges, keyed by the packed address: the data path
        looks a TUN packet's destination up with one slice (what :meth:`route_tun` finds for it)."""
        self.gateway_ips: tuple[IPv4Address, IPv6Address] | None = None
        """The gateway's tunnel addresses (``init``); ``None`` before."""
        self.expiry = ExpiryTimer()
        self.max_nat_sessions = max_nat_sessions
        self._stats_of: dict[uuid.UUID, Stats] = {}  # the counters of each client's latest policy
        self._retired = Stats()  # the counters of policies since removed or replaced
        self._wall: Callable[[Instant], int] = wall_clock or (lambda now: now)
        self._now = Instant(0)
        self._mono: TimerHeap[uuid.UUID] = TimerHeap()  # NAT deadlines, "empty: remove" (monotonic)
        self._utc: TimerHeap[uuid.UUID] = TimerHeap()  # earliest authorisation expiry (wall clock)
        self._removed: deque[uuid.UUID] = deque()

    def _schedule(self, cid: uuid.UUID) -> None:
        """Keep ``cid``'s deadlines exactly (control plane: after any change to the client)."""
        client = self.clients.get(cid)
        if client is None or client.is_empty():
            self._mono.set(cid, None if client is None else self._now)
            self._utc.discard(cid)
            return
        d = client.poll_timeout()
        self._mono.set(cid, None if d is None else d.at)
        self._utc.set(cid, client.earliest_expiry())

    def _want(self, cid: uuid.UUID) -> Deadline | None:
        """When ``cid`` next needs a sweep, from scratch (monotonic; before the grid)."""
        client = self.clients[cid]
        if client.is_empty():
            return Deadline(self._now, "resource expiry")
        nat = client.poll_timeout()
        exp = client.earliest_expiry()
        return earliest(
            None if nat is None else Deadline(nat.at, "resource expiry"),
            None if exp is None else Deadline(Instant(exp - self._offset()), "resource expiry"),
        )

    def _offset(self) -> int:
        return self._wall(self._now) - self._now

    # --- addresses ------------------------------------------------------------------------------

    def set_tunnel_ips(self, v4: IPv4Address, v6: IPv6Address) -> None:
        """``init``: the gateway's tunnel addresses.

        Existing clients keep the gateway addresses they were created with (as in the reference).
        """
        self.gateway_ips = (v4, v6)

    def _index(self, client: ClientPolicy, ip: IPAddress) -> None:
        key = addr_key(ip)
        other = self._by_ip.get(key)
        if other is not None and other.client_id != client.client_id:
            log.warning(
                "tunnel address %s moves from client %s to client %s", ip, other.client_id, client.client_id
            )
        self._by_ip[key] = client
        if (ip in IPV4_TUNNEL) if isinstance(ip, IPv4Address) else (ip in IPV6_TUNNEL):
            self.by_tunnel_address[ip.packed] = client

    def client_by_ip(self, ip: IPAddress) -> ClientPolicy | None:
        return self._by_ip.get(addr_key(ip))

    def route_tun(self, buf: bytes | bytearray) -> ClientPolicy | DropReason:
        """The client a packet read from the TUN is for (as ``handle_tun_input``), or why it is dropped
        silently."""
        if len(buf) < 20:
            return DropReason.MALFORMED_IP
        version = buf[0] >> 4
        if version == 4:
            dst = _V4_ADDR.unpack_from(buf, 16)[0]
            if dst >> _V4_TUN_SHIFT != _V4_TUN_KEY:
                return DropReason.UNROUTABLE
            key = dst
        elif version == 6 and len(buf) >= 40:
            hi, lo = _V6_ADDR.unpack_from(buf, 24)
            dst = (hi << 64) | lo
            if dst >> _V6_TUN_SHIFT != _V6_TUN_KEY:
                return DropReason.UNROUTABLE
            key = dst | V6_FLAG
        else:
            return DropReason.MALFORMED_IP
        client = self._by_ip.get(key)
        return DropReason.UNKNOWN_CLIENT if client is None else client

    def may_query(self, ip: IPAddress, name: str) -> bool:
        """Whether the client at ``ip`` may have ``name`` resolved (for the DNS forwarder)."""
        client = self.client_by_ip(ip)
        return client is not None and client.may_query(name)

    # --- authorisations -------------------------------------------------------------------------

    def allow_access(
        self,
        client_id: uuid.UUID,
        client_v4: IPv4Address,
        client_v6: IPv6Address,
        resource: ResourceDescription,
        expires_at: int | None,
        properties: ClientProperties | None = None,
    ) -> bool:
        """Authorise ``resource`` for the client, creating its policy if needed; False before ``init`` (not
        recorded)."""
        if self.gateway_ips is None:
            log.warning("authorisation of %s for %s before init: not recorded", resource.id, client_id)
            return False
        client = self.clients.get(client_id)
        if client is None:
            gv4, gv6 = self.gateway_ips
            client = ClientPolicy(
                client_id, client_v4, client_v6, gv4, gv6, properties, self.max_nat_sessions
            )
            self.clients[client_id] = client
            self.by_cid[client.cid] = client
            client.nat.table.watch(self._mono, client_id)
        client.allow(resource, expires_at)
        self._schedule(client_id)
        self._index(client, client_v4)
        self._index(client, client_v6)
        old = self._stats_of.get(client_id)
        if old is not None and old is not client.stats:
            self._retired.merge(old)
        self._stats_of[client_id] = client.stats
        return True

    def remove_access(self, client_id: uuid.UUID, rid: uuid.UUID) -> bool:
        """``reject_access``; True if the client has nothing left and was removed (say goodbye)."""
        client = self.clients.get(client_id)
        if client is None:
            log.debug("reject_access for unknown client %s", client_id)
            return False
        client.remove(rid)
        if client.is_empty():
            self.remove_client(client_id)
            return True
        self._schedule(client_id)
        return False

    def update_resource(self, resource: ResourceDescription) -> None:
        """``resource_updated``: the filters of every client that has the resource are replaced."""
        for cid in sorted(self.clients):
            self.clients[cid].update_resource(resource)

    def update_expiry(self, client_id: uuid.UUID, rid: uuid.UUID, expires_at: int | None) -> None:
        """``access_authorization_expiry_updated`` (an unknown client or resource: logged, nothing else)."""
        client = self.clients.get(client_id)
        if client is None:
            log.debug("expiry update for unknown client %s", client_id)
            return
        client.update_expiry(rid, expires_at)
        self._schedule(client_id)

    def apply_init(self, entries: Iterable[InitAuthorization]) -> None:
        """``init.authorizations``: every client keeps only its listed resources (a client the list does
        not name keeps none: decision 0123), then the expiries apply. Clients left empty go at the next
        sweep."""
        entries = list(entries)
        listed: dict[uuid.UUID, set[uuid.UUID]] = {}
        for e in entries:
            listed.setdefault(e.client_id, set()).add(e.resource_id)
        for cid in sorted(self.clients):
            self.clients[cid].retain(listed.get(cid, set()))
            self._schedule(cid)
        for e in entries:
            self.update_expiry(e.client_id, e.resource_id, e.expires_at)

    def remove_client(self, client_id: uuid.UUID) -> None:
        """Forget the client and its addresses (goodbye received, or no resources left)."""
        client = self.clients.pop(client_id, None)
        if client is None:
            return
        self._mono.discard(client_id)
        self._utc.discard(client_id)
        del self.by_cid[client.cid]
        for key in [k for k, c in self._by_ip.items() if c is client]:
            del self._by_ip[key]
        for packed in [k for k, c in self.by_tunnel_address.items() if c is client]:
            del self.by_tunnel_address[packed]

    def shutdown(self) -> list[uuid.UUID]:
        """Every client, in id order, each to be sent a goodbye; all state is cleared."""
        gone = sorted(self.clients)
        self.clients.clear()
        self.by_cid.clear()
        self._by_ip.clear()
        self.by_tunnel_address.clear()
        self._mono = TimerHeap()
        self._utc = TimerHeap()
        return gone

    # --- time -----------------------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        """At a tick of the expiry grid, sweep the clients with something due: expired authorisations go,
        NAT sessions age, and clients left without resources are removed (drain :meth:`poll_removed`)."""
        self._now = advance(self._now, now)
        tick = self.expiry.handle_timeout(now)
        if tick is None:
            return
        # The sweep of the last tick reached: what became due after it waits for the next tick, as in the
        # reference, which sweeps at every tick (a call between ticks follows a tick skipped for having
        # nothing due; sweeping "now" would remove an authorisation expiring since that tick too early).
        utc_ns = self._wall(now) - (now - tick)
        due = set(self._mono.pop_due(tick))
        due.update(self._utc.pop_due(utc_ns))
        for cid in sorted(due):
            client = self.clients.get(cid)
            if client is None:
                continue
            client.expire(utc_ns)
            client.handle_timeout(now)
        for cid in sorted(due):
            client = self.clients.get(cid)
            if client is None:
                continue
            if client.is_empty():
                log.info("client %s has no resources left; removing it", cid)
                self.remove_client(cid)
                self._removed.append(cid)
            else:
                self._schedule(cid)

    def poll_removed(self) -> uuid.UUID | None:
        """The next client the sweep removed for having no resource left (say goodbye to it)."""
        return self._removed.popleft() if self._removed else None

    def _grid(self, want: Deadline | None) -> Deadline | None:
        if want is None:
            return None
        tick = self.expiry.tick_at_or_after(want.at)
        return None if tick is None else Deadline(Instant(max(tick, self._now)), "resource expiry")

    def poll_timeout(self) -> Deadline | None:
        """The first tick of the grid at or after the earliest kept deadline (nothing when no client has
        anything to expire: an idle gateway does not wake for the sweep)."""
        off = self._offset()
        mono = self._mono.earliest_exact(self._want)
        exp = self._utc.earliest_exact(self._want_utc)
        return self._grid(
            earliest(mono, None if exp is None else Deadline(Instant(exp.at - off), exp.reason))
        )

    def _want_utc(self, cid: uuid.UUID) -> Deadline | None:
        d = self._want(cid)
        return None if d is None else Deadline(Instant(d.at + self._offset()), d.reason)

    def stale_kept_deadlines(self) -> list[str]:
        """Clients whose kept deadline is not a lower bound of their real one (O(n), for the contract
        checker)."""
        off = self._offset()
        out = []
        for cid in sorted(self.clients):
            want = self._want(cid)
            mono, utc = self._mono.kept(cid), self._utc.kept(cid)
            kept = earliest(
                None if mono is None else Deadline(mono, ""),
                None if utc is None else Deadline(Instant(utc - off), ""),
            )
            if want is not None and (kept is None or kept.at > want.at):
                out.append(f"client {cid}: kept {None if kept is None else kept.at}, due {want.at}")
        return out

    def poll_timeout_recomputed(self) -> Deadline | None:
        """:meth:`poll_timeout` the slow way, asking every client (for the contract checker)."""
        return self._grid(earliest(*(self._want(cid) for cid in self.clients)))

    # --- DNS resources --------------------------------------------------------------------------

    def handle_control(self, client_id: uuid.UUID, packet: bytes | bytearray) -> ControlOutcome:
        """A p2p control packet from ``client_id`` (as ``handle_assigned_ips_event`` in ``gateway.rs``)."""
        try:
            msg = gateway_read_control(packet)
        except DecodeError as e:
            log.debug("malformed control packet from %s: %s", client_id, e)
            return DropReason.P2P_CONTROL_MALFORMED
        if isinstance(msg, Goodbye):
            self.remove_client(client_id)
            return ClientGone(client_id)
        if not isinstance(msg, AssignedIps):
            log.debug("ignoring control event %d from %s", msg.event, client_id)
            return None
        client = self.clients.get(client_id)
        if client is None or not client.is_allowed(msg.resource):
            return ControlReply(build_domain_status(msg.resource, msg.domain, NatStatus.INACTIVE))
        return ResolveRequest(client_id, msg.resource, msg.domain, msg.proxy_ips)

    def domain_resolved(self, request: ResolveRequest, resolved_ips: Iterable[IPAddress] | None) -> bytes:
        """The ``domain_status`` packet for ``request`` after resolving (``None``: the resolution failed)."""
        client = self.clients.get(request.client)
        if client is None:
            status = NatStatus.INACTIVE
        else:
            status = client.handle_domain_resolved(
                request.domain, request.resource, resolved_ips, request.proxy_ips
            )
        return build_domain_status(request.resource, request.domain, status)

    def policy_stats(self) -> Stats:
        """The counters of every client's policy, those of clients since removed included."""
        total = Stats()
        total.merge(self._retired)
        for cid in sorted(self._stats_of):
            client = self.clients.get(cid)
            st = self._stats_of[cid]
            if client is None or client.stats is not st:
                self._retired.merge(st)
                del self._stats_of[cid]
            total.merge(st)
        return total

    def __len__(self) -> int:
        return len(self.clients)

    def check(self) -> None:
        """Internal consistency (for tests): every indexed address belongs to a known client."""
        for key, client in self._by_ip.items():
            if self.clients.get(client.client_id) is not client:
                raise UsageError(f"address key {key} indexes unknown client {client.client_id}")
        for packed, client in self.by_tunnel_address.items():
            header = b"\x45" + bytes(15) + packed if len(packed) == 4 else b"\x60" + bytes(23) + packed
            if self.route_tun(header) is not client:
                raise UsageError(f"tunnel address {packed.hex()} is not routed to its client")
        if {c.cid: c for c in self.clients.values()} != self.by_cid:
            raise UsageError("the index by connection name does not match the clients")
