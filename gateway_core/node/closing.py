"""Closing a connection: the goodbye, and a connection kept until its goodbye has left (decision 0172).

Theory of operation
-------------------
snownet's ``close_connection`` (``rust/connlib/snownet/src/node.rs``) encrypts the goodbye for the client,
sends what the tunnel returns and forgets the connection at once. When the tunnel has no session it may
send on (a responder whose new session the client has not confirmed yet, an initiator's session past
its use), WireGuard queues the goodbye and returns a Handshake Initiation instead; the client's response
then finds no connection and the goodbye is never sent. Here such a connection is kept as *closing*:

- it leaves :attr:`Node.connections` at once, with its ``ConnectionClosed`` event: the gateway forgets
  the client, nothing is encapsulated for it, no upsert, candidate, relay change or ICE check reaches
  it, and STUN naming it goes unmatched;
- the IP packets that waited in its tunnel are dropped (``CONNECTION_CLOSING``): only the goodbye waits;
- it keeps its tunnel, path, relay and index (no new connection gets that index): a Handshake Response,
  Cookie Reply or data message naming the index goes to its tunnel, and anything the tunnel decrypts is
  dropped (``CONNECTION_CLOSING``), never returned; an Initiation is not routed to it (it is matched by
  the client's key, which only live connections hold);
- its tunnel's timers run at their own exact deadlines (the initiation is retransmitted after 5 s);
- it is forgotten as soon as nothing waits in its tunnel (the goodbye left: ``node.goodbye_sent_late``),
  when the tunnel gives up or :data:`CLOSE_GIVE_UP` after the close (``node.goodbye_given_up``), or at
  once when a connection with the same id is made or the connection is removed (the client came back or
  said goodbye itself: ``node.goodbye_superseded``; the goodbye would only tear down the new
  connection). ``node.goodbye_waits`` counts the connections kept.

Closing connections have their own kept deadlines (:class:`TimerHeap` by index), so they cost no work
while nothing is due, and their tunnels' counters stay in :meth:`NodeClosing.tunnel_stats`.
"""

from __future__ import annotations

from collections import deque

from gateway_core.addr import SocketAddr
from gateway_core.clock import Duration, Instant
from gateway_core.contract import Deadline, TimerHeap, earliest
from gateway_core.errors import DropReason
from gateway_core.node.connection import Connection, ConnState
from gateway_core.node.events import ConnectionClosed, NodeEvent
from gateway_core.stats import Stats
from gateway_core.wireguard.timers import REKEY_ATTEMPT_TIME

CLOSE_GIVE_UP: Duration = REKEY_ATTEMPT_TIME
"""A closing connection is forgotten at the latest this long after its close: as long as its WireGuard
tunnel tries one handshake (15 s, the attempt time snownet sets: the first initiation and two
retransmissions 5 s apart), so the goodbye gets the chances any packet waiting for a session gets. The
tunnel usually gives up at the same moment; this bound holds for any ``Tunnel``. Firezone keeps nothing
(0 s: the goodbye is lost)."""


class NodeClosing:
    """Closing methods of :class:`~gateway_core.node.node.Node` (see the module docstring)."""

    connections: dict[str, Connection]
    stats: Stats
    retired_tunnels: Stats
    _events: deque[NodeEvent]

    def _forget(self, cid: str, *, retire: bool = True) -> Connection | None:
        raise NotImplementedError

    def _send(self, conn: Connection, payload: bytes, now: Instant) -> None:
        raise NotImplementedError

    def _init_closing(self) -> None:
        self.closing: dict[str, Connection] = {}
        """Closing connections by id (at most one per id), read-only for callers."""
        self._closing_index: dict[int, Connection] = {}
        self._closing_timers: TimerHeap[int] = TimerHeap()

    def close_connection(self, cid: str, goodbye: bytes, now: Instant) -> None:
        """Send ``goodbye`` and forget the connection; kept as closing while the goodbye waits for a
        WireGuard session (see the module docstring). A connection without a path gets no goodbye."""
        conn = self._forget(cid, retire=False)
        if conn is None:
            return
        if conn.state not in (ConnState.CONNECTED, ConnState.IDLE):
            self.retired_tunnels.merge(conn.tunnel.stats)
            return
        self._events.append(ConnectionClosed(cid))
        tunnel = conn.tunnel
        dropped = tunnel.drop_waiting()
        if dropped:
            self.stats.drop(DropReason.CONNECTION_CLOSING, dropped)
        wg = tunnel.encapsulate(now, goodbye)
        if wg is not None:
            self._send(conn, wg, now)
        if not tunnel.waiting:
            self.retired_tunnels.merge(conn.tunnel.stats)
            return
        self._drop_closing(cid)
        conn.closed_at = now
        self.closing[cid] = conn
        self._closing_index[conn.index] = conn
        self.stats.incr("node.goodbye_waits")
        self._serve_closing(conn, now)

    def close_all(self, goodbye: bytes, now: Instant) -> None:
        """Shutdown: close every connection with a goodbye (snownet ``close_all``)."""
        for cid in sorted(self.connections):
            self.close_connection(cid, goodbye, now)

    def _drop_closing(self, cid: str) -> None:
        """A connection with this id is made or removed: forget the closing one at once."""
        conn = self.closing.get(cid)
        if conn is not None:
            self.stats.incr("node.goodbye_superseded")
            self._retire_closing(conn)

    def _retire_closing(self, conn: Connection) -> None:
        del self.closing[conn.cid]
        del self._closing_index[conn.index]
        self._closing_timers.discard(conn.index)
        self.retired_tunnels.merge(conn.tunnel.stats)

    def _closing_input(self, now: Instant, conn: Connection, data: bytes, src: SocketAddr) -> None:
        """A WireGuard message naming a closing connection's index (not an Initiation): its tunnel takes
        it; a decrypted packet is dropped."""
        tunnel = conn.tunnel
        if data[0] == 2:
            tunnel.handle_handshake(now, data)
        elif tunnel.decapsulate(now, data, src.ip):
            self.stats.drop(DropReason.CONNECTION_CLOSING)
        self._serve_closing(conn, now)

    def _serve_closing(self, conn: Connection, now: Instant) -> None:
        """Run the tunnel's timers, send what it has, then forget the connection or keep its deadline."""
        tunnel = conn.tunnel
        tunnel.handle_timeout(now)
        while (wg := tunnel.poll_transmit()) is not None:
            self._send(conn, wg, now)
        if not tunnel.waiting and not tunnel.is_expired:
            self.stats.incr("node.goodbye_sent_late")
        elif tunnel.is_expired or now >= self._give_up(conn):
            self.stats.incr("node.goodbye_given_up")
        else:
            self._closing_timers.set(conn.index, self._closing_deadline(conn).at)
            return
        self._retire_closing(conn)

    def _give_up(self, conn: Connection) -> Instant:
        assert conn.closed_at is not None
        return Instant(conn.closed_at + CLOSE_GIVE_UP)

    def _closing_deadline(self, conn: Connection) -> Deadline:
        give_up = Deadline(self._give_up(conn), "goodbye give-up")
        d = earliest(conn.tunnel.poll_timeout(), give_up)
        return give_up if d is None else d

    def _tick_closing(self, now: Instant) -> None:
        """Serve the closing connections whose deadline has come."""
        for index in self._closing_timers.pop_due(now):
            conn = self._closing_index.get(index)
            if conn is not None:
                self._serve_closing(conn, now)

    def _closing_timeout(self, *, recomputed: bool = False) -> Deadline | None:
        """The earliest deadline of the closing connections (``recomputed``: asking each of them)."""
        if recomputed:
            return earliest(*(self._closing_deadline(c) for c in self.closing.values()))
        index = self._closing_index
        return self._closing_timers.earliest_exact(lambda i: self._closing_deadline(index[i]))

    def tunnel_stats(self) -> Stats:
        """The counters of every tunnel: removed, closing and live ones (cumulative: they never fall)."""
        out = Stats()
        out.merge(self.retired_tunnels)
        for group in (self.closing, self.connections):
            for cid in sorted(group):
                out.merge(group[cid].tunnel.stats)
        return out
