"""The connectivity node: TURN allocations + ICE agents + WireGuard tunnels on one UDP socket per family.

Theory of operation (Firezone's ``rust/connlib/snownet/src/node.rs``)
---------------------------------------------------------------------
Inputs: :meth:`Node.update_relays` (portal relays), :meth:`Node.upsert_connection` (authorize_flow),
:meth:`Node.add_remote_candidate` / :meth:`Node.remove_remote_candidate` (trickled candidates),
:meth:`Node.handle_datagram` (every UDP datagram; returns ``(client id, IP packet)`` or ``None``),
:meth:`Node.encapsulate` (an IP packet for a client; returns the ``Transmit`` or ``None``),
:meth:`Node.close_connection` (``closing.py``: a goodbye waiting for a WireGuard session keeps its
connection as closing, decision 0172), :meth:`Node.handle_timeout`. Outputs: :meth:`Node.poll_command`
(TURN control messages of every allocation first, then the node's own queue) and :meth:`Node.poll_event`
(:attr:`Node.queued_events` tells, without a call, whether there is one).

A datagram is classified by snownet's byte rules (:meth:`Node.handle_datagram`, in ``datapath.py``): from
port 3478, first byte 0-3 is a STUN message for the allocation of that relay (Data indications are
unwrapped), 0x40-0x4F is ChannelData unwrapped by that allocation into ``(peer, payload, our relayed
address)``; then a STUN binding message goes to the agent it names (a request by our username fragment, a
response by the connection index in its transaction id); anything else is WireGuard,
routed by the receiver index (types 2-4) or, after the node-wide rate limiter passed it, by the
initiator's static key (type 1; decision 0115). Inputs that were consumed run :meth:`Node.handle_timeout`
at once (snownet's drain rule: Firezone's tunnel loop in ``rust/connlib/tunnel/src/lib.rs`` does so), so
TURN responses and nominations take effect within the same call; a datagram dropped without any change
runs nothing more. ``handle_timeout`` works in the order of snownet's ``Node::handle_timeout``:
allocations, their candidate events, connections, freeing dead allocations, re-homing connections,
removing failed ones; but of the connections it ticks only those whose kept deadline has come or that an
input touched since (decision 0140), and :meth:`Node.poll_timeout` reads their kept deadlines.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Transmit, transmit
from gateway_core.contract import Deadline, advance, earliest
from gateway_core.entropy import Entropy
from gateway_core.errors import DecodeError, DropReason
from gateway_core.ice import candidate as cand
from gateway_core.ice.agent import IceAgent, NominatedSend
from gateway_core.node.closing import NodeClosing
from gateway_core.node.connection import Connection, ConnState, ConnTimers, PathKind, PeerSocket, Tunnel
from gateway_core.node.datapath import HandshakeLimiter, InitiatorLookup, NodeDataPath
from gateway_core.node.events import (
    ConnectionFailed,
    InvalidateIceCandidate,
    NewIceCandidate,
    NodeEvent,
)
from gateway_core.stats import Stats
from gateway_core.turn.allocation import Allocation, RelaySocket

log = logging.getLogger(__name__)

_CONNECTED = ConnState.CONNECTED
_FAILED = ConnState.FAILED
_DIRECT = (PathKind.PEER_TO_PEER, PathKind.PEER_TO_RELAY)
"""Path kinds whose datagrams go straight to the peer (no ChannelData framing)."""
MAX_OPTIMISTIC = 2
"""snownet synthesises at most 2 optimistic srflx candidates per ``add_remote_candidate`` call
(``generate_optimistic_candidates`` in ``rust/connlib/snownet/src/node.rs``)."""

TunnelFactory = Callable[[str, bytes, bytes | None, int, Instant], Tunnel]
"""``(client id, remote static public key, psk, 24-bit index, now) -> Tunnel``."""
ICE_UFRAG_LEN = 16
"""str0m ``IceCreds::new()``: random ufrag length (legacy ``accept_connection``)."""
ICE_PWD_LEN = 22
"""str0m ``IceCreds::new()``: random password length."""
_ICE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """One relay from the portal (``init`` / ``relays_presence``)."""

    id: str
    socket: RelaySocket
    username: str
    password: str
    realm: str = "firezone"


class Node(NodeClosing, NodeDataPath):
    """See the module docstring."""

    def __init__(
        self,
        entropy: Entropy,
        now: Instant,
        make_tunnel: TunnelFactory,
        identify_initiator: InitiatorLookup,
        *,
        rate_limiter: HandshakeLimiter,
        controlling: bool = False,
        software: str = "snownet; session=python",
    ) -> None:
        self._entropy = entropy
        self.rate_limiter = rate_limiter
        """Checks every handshake message once, before any Diffie-Hellman (mac1, load, mac2); reset here
        once per second unless all connections are idle."""
        self._make_tunnel = make_tunnel
        self._identify = identify_initiator
        self.controlling = controlling
        self.software = software
        self.allocations: dict[str, Allocation] = {}
        self.connections: dict[str, Connection] = {}
        self._by_index: dict[int, str] = {}
        self._by_key: dict[bytes, str] = {}
        self._transmits: deque[Transmit] = deque()
        self._events: deque[NodeEvent] = deque()
        self.queued_events: Sized = self._events
        """The queued events, read-only: truthy when :meth:`poll_event` has one. The gateway peeks after
        every packet, so this is an attribute (a plain truth test), not a method call."""
        self._now = now
        self.stats = Stats()
        self.retired_tunnels = Stats()
        """The counters of the WireGuard tunnels of connections since removed (kept for the metrics)."""
        self._timers = ConnTimers()
        """Kept deadlines of the connections (decision 0140): :meth:`handle_timeout` ticks only the
        connections whose kept time has come and those an input touched; :meth:`poll_timeout` reads the
        heap instead of asking every connection."""
        self._touched: set[str] = set()
        """Connections an input changed since the last :meth:`handle_timeout` (which ticks them)."""
        self._by_ufrag: dict[str, set[str]] = {}
        """Local ICE username fragment -> connections: a binding request names its agent by it."""
        self._rehome_due = False
        self._init_closing()

    # --- relays -----------------------------------------------------------------------------------------

    def update_relays(self, to_remove: list[str], to_add: list[RelayConfig], now: Instant) -> None:
        self._now = advance(self._now, now)
        departed: dict[str, Allocation] = {}
        for rid in sorted(to_remove):
            old = self.allocations.pop(rid, None)
            if old is not None:
                self._invalidate_relayed(old)
                departed[rid] = old
        added = set()
        for rc in to_add:
            added.add(rc.id)
            cur = self.allocations.get(rc.id)
            if (
                cur is not None
                and cur.matches_credentials(rc.username, rc.password)
                and cur.server == rc.socket
            ):
                continue
            if cur is not None:
                self._invalidate_relayed(cur)
            # Same relay (also removed and re-added in one update), rotated credentials: our 5-tuple may
            # still hold the old allocation, which on coturn only the old credentials can delete
            # (decision 0020, "Rotated credentials").
            prev = cur or departed.get(rc.id)
            stale = prev.handover() if prev is not None and prev.server == rc.socket else None
            self.allocations[rc.id] = Allocation(
                rc.socket,
                rc.username,
                rc.password,
                rc.realm,
                now,
                self._entropy,
                software=self.software,
                stale=stale,
            )
        for rid in sorted(self.allocations):
            if rid not in added:
                self.allocations[rid].refresh(now)
        self.handle_timeout(now)

    def _invalidate_relayed(self, alloc: Allocation) -> None:
        self._rehome_due = True
        for c in alloc.relay_candidates():
            for cid in sorted(self.connections):
                self._remove_local(cid, c)

    # --- connections ------------------------------------------------------------------------------------

    def upsert_connection(
        self,
        cid: str,
        remote_public: bytes,
        psk: bytes | None,
        local_creds: tuple[str, str],
        remote_creds: tuple[str, str],
        now: Instant,
    ) -> bool:
        """Create or reuse the connection; ``False`` when there is no relay at all (snownet NoTurnServers)."""
        self._now = advance(self._now, now)
        self._drop_closing(cid)
        cur = self.connections.get(cid)
        if cur is not None:
            a = cur.agent
            same = (a.local_ufrag, a.local_pwd) == local_creds and (
                a.remote_ufrag,
                a.remote_pwd,
            ) == remote_creds
            if same and self._by_key.get(remote_public) == cid:
                self._touched.add(cid)
                cur.stimulus(now)
                self._seed(cur)
                if self.controlling and cur.reuse_handshake(now):  # snownet: initiate_wg_session
                    self._drain_tunnel(cur, now)
                self.handle_timeout(now)
                return True
            self._forget(cid)
        if not self.allocations:
            return False
        relays = sorted(self.allocations)
        relay = relays[self._entropy.randbelow(len(relays))]
        index = self._new_index()
        agent = IceAgent(
            *local_creds,
            *remote_creds,
            self._entropy,
            controlling=self.controlling,
            tid_prefix=index.to_bytes(3, "big"),
        )
        conn = Connection(
            cid,
            agent,
            self._make_tunnel(cid, remote_public, psk, index, now),
            index,
            relay,
            now,
            self._timers,
        )
        self.connections[cid] = conn
        self._by_index[index] = cid
        self._by_key[remote_public] = cid
        self._by_ufrag.setdefault(agent.local_ufrag, set()).add(cid)
        self._touched.add(cid)
        self._seed(conn)
        agent.handle_timeout(now)
        self.handle_timeout(now)
        return True

    def _new_index(self) -> int:
        while True:
            idx = self._entropy.randbelow(1 << 24)
            if idx not in self._by_index and idx not in self._closing_index:
                return idx

    def _seed(self, conn: Connection) -> None:
        conn.srflx_signalled = ()  # a (re)seed signals every server-reflexive candidate again, as snownet's
        seen: list[cand.Candidate] = []
        for rid in sorted(self.allocations):
            for c in self.allocations[rid].host_and_srflx_candidates():
                if c not in seen:
                    seen.append(c)
        sel = self.allocations.get(conn.relay or "")
        if sel is not None:
            seen.extend(sel.relay_candidates())
        for c in sorted(seen, key=lambda c: -c.priority):
            self._add_local(conn, c)

    def _add_local(self, conn: Connection, c: cand.Candidate) -> None:
        self._touched.add(conn.cid)
        if c.kind is cand.Kind.SRFLX:
            if c not in conn.srflx_signalled:
                conn.srflx_signalled += (c,)
                self._events.append(NewIceCandidate(conn.cid, c.to_sdp()))
            return
        adopted = conn.agent.add_local_candidate(c)
        if adopted is not None:
            self._events.append(NewIceCandidate(conn.cid, adopted.to_sdp()))

    def _remove_local(self, cid: str, c: cand.Candidate) -> None:
        conn = self.connections.get(cid)
        if conn is None:
            return
        self._touched.add(cid)
        if c.kind is cand.Kind.SRFLX:
            conn.srflx_signalled = tuple(s for s in conn.srflx_signalled if s != c)
        if c.kind is cand.Kind.SRFLX or conn.agent.invalidate_candidate(c):
            self._events.append(InvalidateIceCandidate(cid, c.to_sdp()))

    def add_remote_candidate(self, cid: str, sdp: str, now: Instant) -> None:
        self.add_remote_candidates(cid, (sdp,), now)

    def add_remote_candidates(self, cid: str, sdps: Iterable[str], now: Instant) -> None:
        """Every candidate of one signalling message, then one :meth:`handle_timeout`: the first checks
        of the new pairs leave after every channel the message asked for is in flight (Firezone's event
        loops add a whole ``ice_candidates`` message before they drive the node again). Taking them one
        by one would check a relayed pair towards a host candidate before the channel its srflx twin
        binds exists, drop that check and wait 250 ms for its retransmission (decision 0130)."""
        self._now = advance(self._now, now)
        conn = self.connections.get(cid)
        if conn is None:
            return
        self._touched.add(cid)
        for sdp in sdps:
            try:
                c = cand.parse(sdp)
            except DecodeError:
                self.stats.incr("node.bad_candidate")
                continue
            conn.agent.add_remote_candidate(c)
            self._optimistic(conn)
            if c.kind is not cand.Kind.HOST:
                alloc = self.allocations.get(conn.relay or "")
                if alloc is not None:
                    alloc.bind_channel(c.addr, now)
                    conn.stimulus(now)
        self.handle_timeout(now)

    def _optimistic(self, conn: Connection) -> None:
        remotes = conn.agent.remote_candidates()
        srflx = [r for r in remotes if r.kind is cand.Kind.SRFLX and r.addr.ip.version == 4]
        hosts = [r for r in remotes if r.kind is cand.Kind.HOST and r.addr.ip.version == 4]
        added = 0
        for s in srflx:
            for h in hosts:
                if added >= MAX_OPTIMISTIC:
                    return
                o = cand.server_reflexive(SocketAddr(s.addr.ip, h.addr.port), h.addr)
                if o not in remotes and conn.agent.add_remote_candidate(o):
                    added += 1

    def remove_remote_candidate(self, cid: str, sdp: str, now: Instant) -> None:
        self._now = advance(self._now, now)
        conn = self.connections.get(cid)
        if conn is None:
            return
        try:
            conn.agent.invalidate_candidate(cand.parse(sdp))
        except DecodeError:
            return
        self._touched.add(cid)
        self.handle_timeout(now)

    def accept_connection(
        self, cid: str, remote_public: bytes, psk: bytes | None, remote_creds: tuple[str, str], now: Instant
    ) -> tuple[str, str] | None:
        """Legacy offer/answer (``request_connection``): random local credentials, returned as the answer;
        ``None`` when there is no relay (snownet's ``NoTurnServers``)."""
        ufrag = "".join(_ICE_CHARS[self._entropy.randbelow(len(_ICE_CHARS))] for _ in range(ICE_UFRAG_LEN))
        pwd = "".join(_ICE_CHARS[self._entropy.randbelow(len(_ICE_CHARS))] for _ in range(ICE_PWD_LEN))
        if not self.upsert_connection(cid, remote_public, psk, (ufrag, pwd), remote_creds, now):
            return None
        return ufrag, pwd

    def remove_connection(self, cid: str) -> None:
        self._forget(cid)
        self._drop_closing(cid)

    def _forget(self, cid: str, *, retire: bool = True) -> Connection | None:
        """Unlink the connection (``retire``: its tunnel's counters go to :attr:`retired_tunnels`)."""
        conn = self.connections.pop(cid, None)
        if conn is None:
            return None
        if retire:
            self.retired_tunnels.merge(conn.tunnel.stats)
        self._by_index.pop(conn.index, None)
        for k in [k for k, v in self._by_key.items() if v == cid]:
            del self._by_key[k]
        ufrag = conn.agent.local_ufrag
        same = self._by_ufrag.get(ufrag)
        if same is not None:
            same.discard(cid)
            if not same:
                del self._by_ufrag[ufrag]
        self._timers.heap.discard(cid)
        self._touched.discard(cid)
        if conn.state is not ConnState.IDLE:
            self._timers.nonidle -= 1
        conn.timers = None
        return conn

    # --- data plane -------------------------------------------------------------------------------------

    def _drain_tunnel(self, conn: Connection, now: Instant) -> None:
        while (wg := conn.tunnel.poll_transmit()) is not None:
            if conn.peer_socket is None:
                conn.buffer(wg)
            else:
                self._send(conn, wg, now)

    def encapsulate(self, cid: str, packet: bytes, now: Instant) -> Transmit | None:
        """Encrypt ``packet`` for ``cid`` and frame it for the nominated path (``Node::encapsulate``)."""
        if now != self._now:  # (per packet: the R2 helper only when time moved)
            self._now = advance(self._now, now)
        conn = self.connections.get(cid)
        if conn is not None and conn.state is _CONNECTED and conn.peer_socket is not None:
            conn.last_activity = now  # (``Connection.stimulus`` of a connected connection)
        elif conn is None or conn.peer_socket is None or conn.state is _FAILED:
            self.stats.drop(DropReason.NO_CONNECTION)
            self.handle_timeout(now)
            return None
        else:
            conn.stimulus(now)
        tunnel = conn.tunnel
        wg = tunnel.encapsulate(now, packet)
        if tunnel.queued:
            self._drain_tunnel(conn, now)
        if wg is not None:
            ps = conn.peer_socket
            if ps is not None:
                # The datagram carries the inner packet's ECN bits, as snownet's (an ECN-capable flow
                # stays ECN-capable on the underlay, where a router may mark it CE for the peer to merge);
                # inline wire.rewrite.ecn_of (per packet). Only IP packets get here (versions 4 and 6).
                ecn = 0 if len(packet) < 2 else packet[1] & 3 if packet[0] < 0x60 else (packet[1] >> 4) & 3
                if ps.kind in _DIRECT:  # the hot path: no relay framing
                    return transmit(ps.source, ps.dest, wg, ecn)
                t = self._frame(conn, wg, now, ecn)
                if t is not None:
                    return t
        self.handle_timeout(now)
        return None

    def _frame(self, conn: Connection, payload: bytes, now: Instant, ecn: int = 0) -> Transmit | None:
        ps = conn.peer_socket
        if ps is None:
            return None
        if not ps.via_relay:
            return Transmit(ps.source, ps.dest, payload, ecn)
        alloc = self.allocations.get(conn.relay or "")
        return None if alloc is None else alloc.encapsulate(ps.dest, payload, now, ecn)

    def _send(self, conn: Connection, payload: bytes, now: Instant) -> None:
        t = self._frame(conn, payload, now)
        if t is not None:
            self._transmits.append(t)

    # --- time -------------------------------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        """Serve what is due: every allocation (there are few), then only the connections whose kept
        deadline has come or that an input touched, in id order (snownet's order: allocations, their
        candidate events, connections, freeing dead allocations, re-homing, removing failed ones)."""
        self._now = advance(self._now, now)
        for rid in sorted(self.allocations):
            self.allocations[rid].handle_timeout(now)
        for rid in sorted(self.allocations):
            alloc = self.allocations[rid]
            while (ev := alloc.poll_event()) is not None:
                for cid in sorted(self.connections):
                    conn = self.connections[cid]
                    if ev.new and (conn.relay == rid or ev.candidate.kind is not cand.Kind.RELAY):
                        self._add_local(conn, ev.candidate)
                    elif not ev.new:
                        self._remove_local(cid, ev.candidate)
        timers = self._timers
        work = self._touched
        work.update(timers.heap.pop_due(now))
        self._touched = set()
        for cid in sorted(work):
            c = self.connections.get(cid)
            if c is not None:
                for nom in c.tick(now):
                    self._nominated(c, nom, now)
                self._drain_agent(c)
                self._drain_tunnel(c, now)
        if timers.nonidle:
            self.rate_limiter.reset_count(now)  # snownet's quirk kept: no reset while everything is idle
        for rid in sorted(self.allocations):
            if self.allocations[rid].can_be_freed() is not None:
                del self.allocations[rid]
                self._rehome_due = True
        if self._rehome_due:
            self._rehome_due = False
            self._rehome(now)
        if self.closing:
            self._tick_closing(now)
        work |= self._touched  # (none in practice: only allocation events and re-homing touch, above)
        self._touched = set()
        for cid in sorted(work):
            c = self.connections.get(cid)
            if c is None:
                continue
            if c.state is ConnState.FAILED:
                self._forget(cid)
                self._events.append(ConnectionFailed(cid))
                continue
            d = c.poll_timeout()
            timers.heap.set(cid, None if d is None else d.at)

    def _nominated(self, conn: Connection, nom: NominatedSend, now: Instant) -> None:
        src_relay = any(a.has_socket(nom.source) for a in self.allocations.values())
        dst_relay = any(
            r.kind is cand.Kind.RELAY and r.addr == nom.destination for r in conn.agent.remote_candidates()
        )
        kind = {
            (False, False): PathKind.PEER_TO_PEER,
            (False, True): PathKind.PEER_TO_RELAY,
            (True, False): PathKind.RELAY_TO_PEER,
            (True, True): PathKind.RELAY_TO_RELAY,
        }[(src_relay, dst_relay)]
        for wg in conn.on_nominated(nom, PeerSocket(kind, nom.source, nom.destination), now):
            self._send(conn, wg, now)
        init = getattr(conn.tunnel, "initiate", None)
        if self.controlling and callable(init):
            init(now)
            conn.last_proactive_handshake = now
            self._drain_tunnel(conn, now)

    def _drain_agent(self, conn: Connection) -> None:
        while (t := conn.agent.poll_transmit()) is not None:
            src = t.src
            alloc = next(
                (
                    self.allocations[r]
                    for r in sorted(self.allocations)
                    if src and self.allocations[r].has_socket(src)
                ),
                None,
            )
            if alloc is not None:
                relayed = alloc.encapsulate(t.dst, t.payload, self._now)
                if relayed is not None:
                    self._transmits.append(relayed)
            else:
                self._transmits.append(t)

    def _rehome(self, now: Instant) -> None:
        for cid in sorted(self.connections):
            conn = self.connections[cid]
            if conn.relay in self.allocations or not self.allocations:
                continue
            relays = sorted(self.allocations)
            conn.relay = relays[self._entropy.randbelow(len(relays))]
            for c in self.allocations[conn.relay].relay_candidates():
                self._add_local(conn, c)

    def _all_idle(self) -> bool:
        return self._timers.nonidle == 0

    def _own_deadlines(self) -> Deadline | None:
        best = earliest(*(a.poll_timeout() for a in self.allocations.values()))
        if self._timers.nonidle:
            at = self.rate_limiter.next_reset()
            if at is not None:
                best = earliest(best, Deadline(at, "handshake limiter reset"))
        return best

    def _finish(self, best: Deadline | None) -> Deadline | None:
        return None if best is None else Deadline(Instant(max(best.at, self._now)), best.reason)

    def poll_timeout(self) -> Deadline | None:
        """The allocations' deadlines, the limiter's, and the connections' from their kept deadlines
        (:meth:`TimerHeap.earliest_exact`: O(1) for an idle connection, whatever the number)."""
        conns = self.connections
        kept = self._timers.heap.earliest_exact(lambda cid: conns[cid].poll_timeout())
        return self._finish(earliest(self._own_deadlines(), kept, self._closing_timeout()))

    def stale_kept_deadlines(self) -> list[str]:
        """Connections whose kept deadline is not a lower bound of their real one (O(n), for the contract
        checker): each would be served late. Empty when the heap is sound."""
        heap = self._timers.heap
        out = []
        for cid in sorted(self.connections):
            d = self.connections[cid].poll_timeout()
            kept = heap.kept(cid)
            if d is not None and (kept is None or kept > d.at):
                out.append(f"connection {cid}: kept {kept}, due {d.at} ({d.reason})")
        return out

    def poll_timeout_recomputed(self) -> Deadline | None:
        """:meth:`poll_timeout` the slow way, asking every connection (O(n)): the contract checker compares
        the two, so a kept deadline that went stale is a contract violation (R4/R5), not a slow drift."""
        return self._finish(
            earliest(
                self._own_deadlines(),
                self._closing_timeout(recomputed=True),
                *(c.poll_timeout() for c in self.connections.values()),
            )
        )

    def poll_command(self) -> Transmit | None:
        for rid in sorted(self.allocations):
            t = self.allocations[rid].poll_transmit()
            if t is not None:
                return t
        return self._transmits.popleft() if self._transmits else None

    def poll_event(self) -> NodeEvent | None:
        return self._events.popleft() if self._events else None

    def relay_addresses(self) -> frozenset[IPAddress]:
        """Every address of every relay we hold an allocation with (the IO layer exempts them from its
        per-source budget)."""
        return frozenset(a.ip for alloc in self.allocations.values() for a in alloc.server.addrs())

    def session_indices(self) -> frozenset[int]:
        """The 24-bit connection part of the receiver index of every live connection: a WireGuard data
        message for us carries one of these in bytes 5-7 (the IO layer exempts such datagrams from its
        per-source budget, so a client's own traffic is never metered)."""
        return frozenset(c.index for c in self.connections.values() if c.state is not ConnState.FAILED)

    def remote_ip(self, cid: str) -> IPAddress | None:
        conn = self.connections.get(cid)
        return conn.peer_socket.dest.ip if conn and conn.peer_socket else None
