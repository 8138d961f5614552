"""The node's datagram path: classifying a UDP datagram and handing it to the relay allocation, the ICE
agent or the WireGuard tunnel it belongs to (snownet's ``Node::decapsulate`` in
``rust/connlib/snownet/src/node.rs``), with WireGuard's handshake order (decision 0115).

Methods mixed into :class:`gateway_core.node.node.Node` (kept apart to keep that module small); all state
(allocations, connections, indices, the rate limiter, queues) lives in the node. Every drop path counts
one :class:`DropReason` and returns :data:`_DROPPED`: no logging, no object beyond the counter, and no
timer work, because nothing changed.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Transmit
from gateway_core.contract import advance
from gateway_core.errors import DecodeError, DropReason
from gateway_core.node.connection import Connection, ConnState
from gateway_core.node.events import ConnectionEstablished, NodeEvent
from gateway_core.stats import Stats
from gateway_core.turn.allocation import Allocation
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Class, Method
from gateway_core.wireguard.noise import Initiator
from gateway_core.wireguard.ratelimit import VERIFY_COOKIE_SENT, VERIFY_OK

TURN_PORT = 3478
"""snownet recognises relay traffic only by this source port (``Node::decapsulate``)."""
_WG_TYPE_LEN = {1: 148, 2: 92, 3: 64}
"""Exact sizes of WireGuard handshake messages (boringtun ``noise/mod.rs:133-168``); data is >= 32 bytes."""
_U32LE = struct.Struct("<I")
_ZERO3 = b"\x00\x00\x00"
_DATA_TYPE = b"\x04\x00\x00\x00"
"""The first four bytes of a WireGuard data message (type 4, three reserved zero bytes)."""
_FAILED = ConnState.FAILED
_CONNECTED = ConnState.CONNECTED
InitiatorLookup = Callable[[bytes], Initiator | None]
"""Handshake Initiation -> its initiator (``wireguard.noise.InitiatorIdentifier``): one X25519 exchange."""
_DROPPED: tuple[str, bytes] = ("", b"")
"""What :meth:`NodeDataPath._route` returns for a datagram it dropped without changing any state: no
timer work follows (compared by identity)."""


class HandshakeLimiter(Protocol):
    """The node-wide WireGuard handshake limiter (``wireguard.RateLimiter`` fits)."""

    def verify(
        self, msg: bytes, src: IPAddress | None, now: Instant
    ) -> tuple[int, DropReason | bytes | None]: ...

    def reset_count(self, now: Instant) -> None: ...

    def next_reset(self) -> Instant | None: ...


class NodeDataPath:
    """Datagram-path methods of :class:`~gateway_core.node.node.Node`."""

    allocations: dict[str, Allocation]
    connections: dict[str, Connection]
    rate_limiter: HandshakeLimiter
    stats: Stats
    _by_index: dict[int, str]
    _by_key: dict[bytes, str]
    _identify: InitiatorLookup
    _transmits: deque[Transmit]
    _events: deque[NodeEvent]
    _now: Instant
    _touched: set[str]
    _by_ufrag: dict[str, set[str]]
    _closing_index: dict[int, Connection]
    _closing_input: Callable[[Instant, Connection, bytes, SocketAddr], None]
    """``NodeClosing._closing_input``: a message for a closing connection (decision 0172)."""

    def handle_timeout(self, now: Instant) -> None:
        raise NotImplementedError

    def _drain_tunnel(self, conn: Connection, now: Instant) -> None:
        raise NotImplementedError

    def handle_datagram(
        self, now: Instant, local: SocketAddr, from_: SocketAddr, data: bytes
    ) -> tuple[str, bytes] | None:
        """Classify and route one datagram (snownet's ``Node::decapsulate``); an IP packet for the TUN comes
        back."""
        if now != self._now:
            self._now = advance(self._now, now)
        if from_.port != TURN_PORT and data[:4] == _DATA_TYPE and len(data) >= 32:
            # The hot path: a data message straight from a peer (what ``_wireguard`` does first, inline).
            conn = self.connections.get(self._by_index.get(_U32LE.unpack_from(data, 4)[0] >> 8, ""))
            if conn is not None and conn.state is not _FAILED:
                tunnel = conn.tunnel
                packet = tunnel.decapsulate(now, data, from_.ip)
                if tunnel.queued:
                    self._drain_tunnel(conn, now)
                if packet:
                    if conn.state is _CONNECTED:
                        conn.last_activity = now  # (``Connection.stimulus`` of a connected connection)
                    else:
                        conn.stimulus(now)
                    return conn.cid, packet
                self.handle_timeout(now)
                return None
        out = self._route(now, local, from_, data)
        if out is None:
            self.handle_timeout(now)
        elif out is _DROPPED:
            return None  # nothing changed: nothing to drain (a flood of garbage costs no timer work)
        return out

    def _route(
        self, now: Instant, local: SocketAddr, from_: SocketAddr, data: bytes
    ) -> tuple[str, bytes] | None:
        """``(cid, IP packet)``; ``None`` when consumed (state may have changed: timers follow);
        :data:`_DROPPED` when dropped without any change. No drop path logs or allocates beyond its
        counter."""
        destination = local
        via: Allocation | None = None
        if from_.port == TURN_PORT and data:
            kind = tw.classify(data)
            if kind is tw.Kind.STUN:
                try:
                    msg = stun.decode(data)
                except DecodeError:
                    msg = None
                if msg is not None:
                    alloc = self._alloc_for(from_)
                    if alloc is None:
                        self.stats.drop(DropReason.TURN_UNKNOWN_RELAY)
                        return _DROPPED
                    if msg.cls != Class.INDICATION:
                        alloc.handle_input(from_, local, msg, now)
                        return None
                    got = alloc.decapsulate_indication(from_, msg)
                    if got is None:
                        return _DROPPED
                    from_, data, destination = got
                    via = alloc
            elif kind is tw.Kind.CHANNEL_DATA:
                try:
                    number, payload = tw.decode_channel_data(data, exact=False)
                except DecodeError:
                    number = -1
                if number >= 0:
                    alloc = self._alloc_for(from_)
                    if alloc is None:
                        self.stats.drop(DropReason.TURN_UNKNOWN_RELAY)
                        return _DROPPED
                    got = alloc.decapsulate(from_, number, payload, now)
                    if got is None:
                        return _DROPPED
                    from_, data, destination = got
                    via = alloc
        if data[:1] and data[0] < 4:
            try:
                msg = stun.decode(data)
            except DecodeError:
                msg = None
            if msg is not None:
                if msg.method == Method.BINDING:
                    for cid in self._stun_owners(msg):
                        agent = self.connections[cid].agent
                        if agent.accepts(msg):
                            agent.handle_stun(now, from_, destination, msg)
                            self._touched.add(cid)
                            return None
                self.stats.drop(DropReason.STUN_UNMATCHED)
                return _DROPPED
        return self._wireguard(now, from_, data, destination, via)

    def _stun_owners(self, msg: stun.StunMessage) -> list[str]:
        """The connections that may own a binding message, in id order, without asking every agent: a
        request names its agent by our username fragment; a response carries the connection's index in
        the first three bytes of its transaction id (``IceAgent(tid_prefix=...)``)."""
        if msg.cls == Class.REQUEST:
            user = msg.text(stun.Attr.USERNAME)
            if user is None:
                return []
            return sorted(self._by_ufrag.get(user.partition(":")[0], ()))
        cid = self._by_index.get(int.from_bytes(msg.transaction_id[:3], "big"))
        return [] if cid is None else [cid]

    def _alloc_for(self, relay: SocketAddr) -> Allocation | None:
        for rid in sorted(self.allocations):
            if self.allocations[rid].server.matches(relay):
                return self.allocations[rid]
        return None

    def _wireguard(
        self, now: Instant, from_: SocketAddr, data: bytes, local: SocketAddr, via: Allocation | None
    ) -> tuple[str, bytes] | None:
        if len(data) >= 32 and data[0] == 4 and data[1:4] == _ZERO3:  # data message: the hot path
            conn = self.connections.get(self._by_index.get(_U32LE.unpack_from(data, 4)[0] >> 8, ""))
            if conn is not None and conn.state is not _FAILED:
                packet = conn.tunnel.decapsulate(now, data, from_.ip)
                self._drain_tunnel(conn, now)
                if packet:
                    conn.stimulus(now)
                    return conn.cid, packet
                return None
        if len(data) < 4 or data[1:4] != _ZERO3 or not 1 <= data[0] <= 4:
            self.stats.drop(DropReason.DATAGRAM_UNCLASSIFIED)
            return _DROPPED
        mtype = data[0]
        if (mtype in _WG_TYPE_LEN and len(data) != _WG_TYPE_LEN[mtype]) or (mtype == 4 and len(data) < 32):
            self.stats.drop(DropReason.WG_MALFORMED)
            return _DROPPED
        initiator: Initiator | None = None
        if mtype <= 2:
            # WireGuard's order: mac1 (one keyed BLAKE2s) and the load first, once for the node; only a
            # message that passes costs a Diffie-Hellman (decision 0115).
            verdict, extra = self.rate_limiter.verify(data, from_.ip, now)
            if verdict != VERIFY_OK:
                if verdict == VERIFY_COOKIE_SENT:
                    assert isinstance(extra, bytes)
                    self._cookie_reply(extra, local, from_, via, now)
                    self.stats.drop(DropReason.WG_COOKIE_REQUIRED)
                else:
                    assert isinstance(extra, DropReason)
                    self.stats.drop(extra)
                return _DROPPED
            if mtype == 1:
                initiator = self._identify(data)
                cid = self._by_key.get(initiator.static_public) if initiator is not None else None
            else:
                cid = self._by_index.get(_U32LE.unpack_from(data, 8)[0] >> 8)
        else:
            cid = self._by_index.get(_U32LE.unpack_from(data, 4)[0] >> 8)
        conn = self.connections.get(cid) if cid is not None else None
        if conn is None or conn.state is ConnState.FAILED:
            if mtype != 1 and self._closing_index:  # by receiver index: a closing connection's?
                closing = self._closing_index.get(_U32LE.unpack_from(data, 8 if mtype == 2 else 4)[0] >> 8)
                if closing is not None:
                    self._closing_input(now, closing, data, from_)
                    return None
            self.stats.drop(DropReason.WG_UNKNOWN_INDEX)
            return _DROPPED
        tunnel = conn.tunnel
        drops_before = tunnel.stats.total_drops
        if mtype <= 2:
            tunnel.handle_handshake(now, data, initiator)
            if tunnel.stats.total_drops != drops_before:
                return _DROPPED  # rejected: a tunnel changes no state for a message it rejects
            self._touched.add(conn.cid)
            if not conn.established_signalled:
                conn.established_signalled = True
                self._events.append(ConnectionEstablished(conn.cid))
        else:
            tunnel.decapsulate(now, data, from_.ip)
        self._drain_tunnel(conn, now)
        return None

    def _cookie_reply(
        self, reply: bytes, local: SocketAddr, to: SocketAddr, via: Allocation | None, now: Instant
    ) -> None:
        """Send a Cookie Reply back the way the handshake message came: to its source address, directly or
        through the relay allocation it arrived on (WireGuard answers the sender, whoever it claims to
        be; never the connection's path)."""
        if via is None:
            self._transmits.append(Transmit(local, to, reply))
            return
        t = via.encapsulate(to, reply, now)
        if t is not None:
            self._transmits.append(t)
