"""One connection to one client: ICE agent + WireGuard tunnel + state (snownet's ``Connection`` in
``rust/connlib/snownet/src/node.rs``).

Theory of operation
-------------------
States: ``CONNECTING`` (no path yet; WireGuard datagrams the tunnel produces are buffered, ring of 128),
``CONNECTED`` (a nominated :class:`PeerSocket`, ``last_activity``), ``IDLE`` (same path, agent on idle
STUN timings; its WireGuard timers are ticked only when one is due, on the same one-second grid) and
``FAILED`` (removed by the node at the end of its tick). Moves (:data:`TRANSITIONS`):

- CONNECTING -> CONNECTED when the agent announces a nominated pair (the buffer is flushed on it);
- CONNECTED -> IDLE after 20 s without application packets while the agent is exactly ``connected``;
- IDLE -> CONNECTED on a stimulus (upsert, non-host remote candidate, packet in or out);
- any -> FAILED: no remote candidate 10 s after creation, ICE ``disconnected`` for 2 s, or an expired tunnel.

The controlled side (the gateway) also starts a WireGuard handshake itself when none was accepted
:data:`HANDSHAKE_NUDGE_AFTER` after its first nomination (the peer holds a session we forgot, or lost both
its initiations) and sends :data:`NUDGE_KEEPALIVES` keepalives on the new session, one per WireGuard tick
(decision 0173; snownet has no such rule).

The tunnel is anything with the :class:`Tunnel` shape (the project's ``WireGuardPeer`` fits); the node
joins them. Timers run inside :meth:`Connection.tick`; the WireGuard timers are ticked once a second while
a path exists and the connection is in use (snownet's fixed cadence), and while it is idle only at the
first tick of that grid at or after the tunnel's own next deadline (decision 0140).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sized
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.contract import Deadline, TimerHeap, earliest
from gateway_core.ice.agent import IceAgent, IceState, IceStateChanged, NominatedSend
from gateway_core.ice.candidate import Candidate
from gateway_core.ice.pair import DEFAULT_TIMING, IDLE_TIMING
from gateway_core.stats import Stats
from gateway_core.wireguard.noise import Initiator
from gateway_core.wireguard.timers import REKEY_TIMEOUT

log = logging.getLogger(__name__)

CANDIDATE_TIMEOUT = secs(10)
"""snownet ``CANDIDATE_TIMEOUT``: fail if no remote candidate arrived 10 s after creation."""
DISCONNECT_TIMEOUT = secs(2)
"""snownet ``DISCONNECT_TIMEOUT``: grace period after ICE reports ``disconnected``."""
IDLE_AFTER = secs(20)
"""snownet: 20 s without application packets in either direction makes a connection idle."""
WG_TICK = secs(1)
"""snownet ticks the WireGuard timers once a second (``node.rs:1858-1868``)."""
PROACTIVE_HANDSHAKE_GAP = secs(20)
"""snownet ``initiate_wg_session``: no proactive handshake within 20 s of the last one (its re-key timeout
is 15 s, so after 20 s a handshake in progress has given up or succeeded)."""
WG_BUFFER = 128
"""snownet ``wg_buffer``: WireGuard datagrams kept while no path exists (oldest overwritten)."""
HANDSHAKE_NUDGE_AFTER = REKEY_TIMEOUT + secs(1)
"""The controlled side (the gateway) starts a WireGuard handshake of its own when none was accepted this long
after its path was nominated (decision 0173; snownet has no such rule). The controlling side sends its
initiation when it nominates, about when we learn of it, and the retransmission of a lost one 5 s later
(REKEY_TIMEOUT, plus at most 333 ms of jitter); one more second covers that and the path, so a nudge means
the peer sends none: it holds a session we no longer have (our goodbye was lost and it reused its
connection within snownet's 20 s) or both its initiations were lost. Less than ``IDLE_AFTER``: the
connection is still on the one-second WireGuard tick that checks it."""
NUDGE_KEEPALIVES = 3
"""Keepalives on the session a nudge made (the tunnel's own, then one per WireGuard tick): the peer answered
as responder and switches to the new session only when a packet arrives on it, and a keepalive is never
answered, so one lost keepalive would leave an idle peer sending on the forgotten session until it has
data and 15 s pass (WireGuard's no-reply rekey). Three make that 1e-6 at 1 % loss instead of 1e-2."""
HISTORY_LEN = 32
"""State changes a connection remembers: a connection can flap between states for as long as it lives, so
the record is a ring, never a list that grows with uptime (a handful covers any test or diagnosis)."""


class Tunnel(Protocol):
    """What the node needs from a WireGuard tunnel (``gateway_core.wireguard.WireGuardPeer`` has it)."""

    stats: Stats
    """Drops counted here tell the node whether a handshake message was accepted."""
    queued: Sized
    """Truthy when :meth:`poll_transmit` has a datagram (the node peeks after every packet)."""
    waiting: Sized
    """Truthy while an IP packet waits for a session that may carry it (a handshake is under way)."""

    def encapsulate(self, now: Instant, packet: bytes) -> bytes | None: ...

    def decapsulate(self, now: Instant, datagram: bytes, src: IPAddress | None = None) -> bytes | None: ...

    def handle_handshake(self, now: Instant, datagram: bytes, initiator: Initiator | None = None) -> None:
        """A handshake initiation or response the node already checked (mac1, load, mac2)."""

    def poll_transmit(self) -> bytes | None: ...

    def drop_waiting(self) -> int:
        """Forget the IP packets waiting for a session; how many there were."""

    def handle_timeout(self, now: Instant) -> None: ...

    def poll_timeout(self) -> Deadline | None: ...

    @property
    def is_expired(self) -> bool: ...


class ConnState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    IDLE = "idle"
    FAILED = "failed"


TRANSITIONS: frozenset[tuple[ConnState, ConnState, str]] = frozenset(
    {
        (ConnState.CONNECTING, ConnState.CONNECTED, "pair nominated"),
        (ConnState.CONNECTING, ConnState.FAILED, "no candidates / ICE disconnected / tunnel expired"),
        (ConnState.CONNECTED, ConnState.IDLE, "20 s without packets"),
        (ConnState.IDLE, ConnState.CONNECTED, "packet, upsert or candidate"),
        (ConnState.CONNECTED, ConnState.FAILED, "ICE disconnected / tunnel expired"),
        (ConnState.IDLE, ConnState.FAILED, "ICE disconnected / tunnel expired"),
    }
)


def transition_diagram() -> str:
    """Mermaid state diagram of :data:`TRANSITIONS` (``docs/design/ice-agent.md`` embeds it)."""
    order = list(ConnState)
    lines = ["stateDiagram-v2", "    [*] --> connecting"]
    for a, b, why in sorted(TRANSITIONS, key=lambda t: (order.index(t[0]), order.index(t[1]))):
        lines.append(f"    {a.value} --> {b.value}: {why}")
    lines.append("    failed --> [*]: removed, ConnectionFailed")
    return "\n".join(lines)


class PathKind(StrEnum):
    PEER_TO_PEER = "peer_to_peer"
    PEER_TO_RELAY = "peer_to_relay"
    RELAY_TO_PEER = "relay_to_peer"
    RELAY_TO_RELAY = "relay_to_relay"


@dataclass(frozen=True, slots=True)
class PeerSocket:
    """The nominated path (snownet's ``PeerSocket``): relayed kinds go through the connection's selected
    relay."""

    kind: PathKind
    source: SocketAddr
    dest: SocketAddr

    @property
    def via_relay(self) -> bool:
        return self.kind in (PathKind.RELAY_TO_PEER, PathKind.RELAY_TO_RELAY)


class ConnTimers:
    """The node's kept deadlines of its connections (one :class:`TimerHeap` keyed by connection id) and
    how many connections are not idle (the handshake limiter is reset only while one is). Every connection
    holds a reference, so the data path can tell the node about the one change it makes to a deadline
    that is not later than before (an idle connection woken by a packet)."""

    __slots__ = ("heap", "nonidle")

    def __init__(self) -> None:
        self.heap: TimerHeap[str] = TimerHeap()
        self.nonidle = 0


class Connection:
    """State of one client connection; the node owns sending and routing."""

    __slots__ = (
        "agent",
        "cid",
        "closed_at",
        "created_at",
        "disconnected_at",
        "established_signalled",
        "history",
        "index",
        "last_activity",
        "last_proactive_handshake",
        "next_wg_tick",
        "nominated_at",
        "nudge_keepalives",
        "peer_socket",
        "relay",
        "srflx_signalled",
        "state",
        "timers",
        "tunnel",
        "unexpected_transitions",
        "wg_buffer",
    )

    def __init__(
        self,
        cid: str,
        agent: IceAgent,
        tunnel: Tunnel,
        index: int,
        relay: str | None,
        now: Instant,
        timers: ConnTimers | None = None,
    ) -> None:
        self.timers = timers
        if timers is not None:
            timers.nonidle += 1
        self.cid = cid
        self.agent = agent
        self.tunnel = tunnel
        self.index = index
        self.relay = relay
        self.state = ConnState.CONNECTING
        self.peer_socket: PeerSocket | None = None
        self.last_activity = now
        self.created_at = now
        self.disconnected_at: Instant | None = None
        self.closed_at: Instant | None = None
        """When the node closed it while its goodbye waited for a session (``gateway_core.node.closing``)."""
        self.wg_buffer: deque[bytes] | None = None
        """Created on the first datagram buffered (most connections never buffer one)."""
        self.next_wg_tick = now
        self.established_signalled = False
        self.srflx_signalled: tuple[Candidate, ...] = ()
        """The server-reflexive candidates signalled for this connection (the agent does not hold them; a
        tuple, as most connections have one or two and the empty one costs nothing)."""
        self.last_proactive_handshake: Instant | None = None
        """When the controlling side last started a WireGuard handshake of its own (nomination, reuse)."""
        self.nominated_at: Instant | None = None
        """When the first path was nominated (the controlled side's handshake nudge counts from it)."""
        self.nudge_keepalives: int | None = None
        """``None`` until the controlled side nudged (:meth:`_nudge`); then the keepalives still to send."""
        self.unexpected_transitions = 0
        self.history: list[tuple[Instant, ConnState, ConnState]] = []
        """The last :data:`HISTORY_LEN` state changes ``(at, old, new)``, for diagnostics and tests (a list
        trimmed by hand: an empty deque costs 760 bytes, a list 56)."""

    def buffer(self, wg: bytes) -> None:
        """Keep a WireGuard datagram until a path exists (ring of :data:`WG_BUFFER`)."""
        if self.wg_buffer is None:
            self.wg_buffer = deque(maxlen=WG_BUFFER)
        self.wg_buffer.append(wg)

    def transition(self, new: ConnState, now: Instant) -> None:
        old = self.state
        if new is old:
            return
        if not any(a is old and b is new for a, b, _ in TRANSITIONS):
            self.unexpected_transitions += 1
            log.warning("connection %s: unexpected %s -> %s", self.cid, old, new)
        self.state = new
        self.history.append((now, old, new))
        if len(self.history) > HISTORY_LEN:
            del self.history[0]
        t = self.timers
        if t is not None:
            if old is ConnState.IDLE:
                t.nonidle += 1
            elif new is ConnState.IDLE:
                t.nonidle -= 1

    def stimulus(self, now: Instant) -> None:
        """Upsert, non-host candidate, packet in or out: Idle -> Connected, else refresh activity."""
        if self.state is ConnState.IDLE:
            self.transition(ConnState.CONNECTED, now)
            self.last_activity = now
            self.agent.set_timing(DEFAULT_TIMING, now)
            if self.next_wg_tick < now:  # the skipped idle ticks: back on the grid, as if each had run
                self.next_wg_tick = self._grid_after(Instant(now - 1))
            if self.timers is not None:  # faster ICE timings: the one deadline a packet moves earlier
                d = self.poll_timeout()
                self.timers.heap.schedule(self.cid, None if d is None else d.at)
        elif self.state is ConnState.CONNECTED:
            self.last_activity = now

    def reuse_handshake(self, now: Instant) -> bool:
        """The controlling side reuses this connection (an upsert with the same credentials and key): start
        a new WireGuard session, unless one started in the last :data:`PROACTIVE_HANDSHAKE_GAP` or is in
        progress (snownet's ``upsert_connection`` -> ``initiate_wg_session``), so a peer that lost its side
        of the connection and made a fresh one gets working keys again. True if a handshake was queued."""
        last = self.last_proactive_handshake
        if self.peer_socket is None:
            return False
        if last is not None and now - last < PROACTIVE_HANDSHAKE_GAP:
            return False
        if not self._initiate(now):
            return False  # one is in progress (or the tunnel cannot initiate)
        self.last_proactive_handshake = now
        return True

    def _initiate(self, now: Instant) -> bool | None:
        """Ask the tunnel for a handshake: whether an initiation went out (``False``: one was in
        progress), ``None`` for a tunnel that cannot initiate."""
        init = getattr(self.tunnel, "initiate", None)
        if not callable(init):
            return None
        sent = self.tunnel.stats.counters
        before = sent["initiations_sent"]
        init(now)
        return sent["initiations_sent"] != before

    def on_nominated(self, ev: NominatedSend, socket: PeerSocket, now: Instant) -> list[bytes]:
        """Apply a nomination; returns buffered WireGuard datagrams to flush on the new path."""
        if self.state is ConnState.FAILED:
            return []
        self.peer_socket = socket
        if self.nominated_at is None:
            self.nominated_at = now
        if self.state is ConnState.CONNECTING:
            self.transition(ConnState.CONNECTED, now)
            self.last_activity = now
            out = list(self.wg_buffer or ())
            self.wg_buffer = None
            return out
        return []

    def tick(self, now: Instant) -> list[NominatedSend]:
        """Timers in snownet's order (steps 1-5 of ``Connection::handle_timeout``); returns nominations."""
        self.agent.handle_timeout(now)
        if (
            self.state is ConnState.CONNECTED
            and now >= self.last_activity + IDLE_AFTER
            and self.agent.state is IceState.CONNECTED
        ):
            self.transition(ConnState.IDLE, now)
            self.agent.set_timing(IDLE_TIMING, now)
        if not self.agent.remote and now >= self.created_at + CANDIDATE_TIMEOUT:
            self.transition(ConnState.FAILED, now)
            return []
        if self.disconnected_at is not None and now >= self.disconnected_at + DISCONNECT_TIMEOUT:
            self.transition(ConnState.FAILED, now)
            return []
        if self.peer_socket is not None and now >= self.next_wg_tick:
            self.tunnel.handle_timeout(now)
            if self.state is ConnState.IDLE:  # ticks were skipped: stay on the grid
                self.next_wg_tick = self._grid_after(now)
            else:
                self.next_wg_tick = Instant(now + WG_TICK)
            if self.tunnel.is_expired:
                self.transition(ConnState.FAILED, now)
                return []
            if not self.agent.controlling:
                self._nudge(now)
        nominations: list[NominatedSend] = []
        while (e := self.agent.poll_event()) is not None:
            if isinstance(e, IceStateChanged):
                if e.state is IceState.DISCONNECTED:
                    self.disconnected_at = now
                elif e.state in (IceState.CHECKING, IceState.CONNECTED):
                    self.disconnected_at = None
            else:
                nominations.append(e)
        return nominations

    def _nudge(self, now: Instant) -> None:
        """Controlled side, on a WireGuard tick: no handshake accepted :data:`HANDSHAKE_NUDGE_AFTER` after
        the nomination -> start one ourselves (once); once a handshake is accepted, a keepalive per tick
        until :data:`NUDGE_KEEPALIVES` went out (the tunnel sent the first with its response)."""
        left = self.nudge_keepalives
        if left is None:
            at = self.nominated_at
            if self.established_signalled or at is None or now < at + HANDSHAKE_NUDGE_AFTER:
                return  # (every tick of every connection that handshook: two attribute reads)
            started = self._initiate(now)
            if started is None:
                return
            self.nudge_keepalives = NUDGE_KEEPALIVES - 1
            if started:  # (else one was running)
                self.tunnel.stats.incr("handshake_nudges")
        elif left > 0 and self.established_signalled:
            keepalive = getattr(self.tunnel, "keepalive", None)
            if callable(keepalive):
                keepalive(now)
            self.nudge_keepalives = left - 1

    def _grid_after(self, now: Instant) -> Instant:
        """The first tick of the WireGuard grid (``next_wg_tick`` + k s) strictly after ``now``."""
        return Instant(self.next_wg_tick + ((now - self.next_wg_tick) // WG_TICK + 1) * WG_TICK)

    def _wg_deadline(self) -> Deadline | None:
        """The WireGuard tick: once a second (snownet's cadence) while the connection is in use; while it
        is idle, the first tick of that one-second grid at or after the tunnel's own next deadline (the
        ticks before it would change nothing: the tunnel's deadlines are exact, decision 0011), so an idle
        client wakes the gateway only for what WireGuard needs (decision 0140)."""
        if self.peer_socket is None:
            return None
        at = self.next_wg_tick
        if self.state is ConnState.IDLE:
            t = self.tunnel.poll_timeout()
            if t is None:
                return None
            if t.at > at:
                at = Instant(at - ((at - t.at) // WG_TICK) * WG_TICK)
        return Deadline(at, "wg timers")

    def poll_timeout(self) -> Deadline | None:
        a = self.agent.poll_timeout()
        return earliest(
            None if a is None else Deadline(a.at, "ice"),
            self._wg_deadline(),
            None
            if self.agent.remote
            else Deadline(Instant(self.created_at + CANDIDATE_TIMEOUT), "candidate timeout"),
            None
            if self.disconnected_at is None
            else Deadline(Instant(self.disconnected_at + DISCONNECT_TIMEOUT), "disconnect timeout"),
            Deadline(Instant(self.last_activity + IDLE_AFTER), "idle")
            if self.state is ConnState.CONNECTED and self.agent.state is IceState.CONNECTED
            else None,
        )
