"""One WireGuard tunnel to one peer, as Firezone's boringtun fork runs it (``boringtun@069a483``,
``boringtun/src/noise/mod.rs``, ``session.rs``, ``timers.rs``).

Theory of operation
-------------------
The tunnel owns a :class:`Handshake` (Noise IKpsk2, both roles), up to eight :class:`Session` objects in
slot ``local_index % 8``, a ``current`` slot used for sending, a queue of IP packets waiting for a usable
session, and the timers of boringtun ``noise/timers.rs``. It does no IO and reads no clock: every call
takes ``now``.

Data plane (direct results, no per-packet objects):

- :meth:`encapsulate` returns the datagram to send for an IP packet: the transport message on the current
  session, or, when no session may be used, a Handshake Initiation (the packet is queued; ``None`` if a
  handshake is already in progress).
- :meth:`decapsulate` returns the IP packet carried by a transport message, or ``None``. Handshake
  responses, cookie replies, keepalives and flushed queued packets it produces are queued for
  :meth:`poll_transmit`. A handshake message given to :meth:`decapsulate` is checked here (mac1, load,
  mac2: the tunnel's :class:`RateLimiter`); a node that already checked it with the node-wide limiter
  hands it to :meth:`handle_handshake` instead, so it is checked and counted once. Anything malformed,
  forged, replayed or unexpected is dropped and counted in :attr:`stats` under a :class:`DropReason`; no
  input raises.

Sessions: the initiator makes its new session current when the response arrives and sends a keepalive on
it; the responder stores its new session but switches to it only on the first data packet received on it
(keepalive included). A data packet on any live session makes that session current unless the current
one was established later. The initiator stops sending on a session older than 170 s; the responder of
the last handshake keeps sending until the session is discarded at 180 s.

Timers (:meth:`handle_timeout`, in boringtun's order): a scheduled (jittered) initiation is sent when due;
sessions older than 180 s are discarded; a cookie older than 120 s is forgotten; 540 s without a new
session expires the tunnel; an unanswered initiation is retransmitted after 5 s and abandoned 15 s after
the attempt began (the tunnel then expires); the initiator rekeys at 120 s if it sent on the session (165 s
if it received); either side rekeys when it sent data and heard nothing for 15 s; a passive keepalive goes
out 10 s after received data that was not answered. Every required handshake is scheduled
``now + uniform(0..=333 ms)``. :meth:`poll_timeout` reports the earliest of exactly the deadlines that
:meth:`handle_timeout` acts on (boringtun reports only two and relies on a 1 s tick; we report all).
"""

from __future__ import annotations

import struct
from collections.abc import Sized
from enum import StrEnum

from cryptography.exceptions import InvalidTag

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.contract import Deadline, advance
from gateway_core.entropy import Entropy
from gateway_core.errors import DecodeError, DropReason
from gateway_core.stats import Stats
from gateway_core.wireguard.messages import (
    DATA_HEADER,
    DATA_MIN_LEN,
    MSG_COOKIE_REPLY,
    MSG_DATA,
    MSG_INITIATION,
    decode_cookie_reply,
    decode_initiation,
    decode_response,
    message_type,
)
from gateway_core.wireguard.noise import Handshake, HandshakeRejected, Initiator
from gateway_core.wireguard.ratelimit import VERIFY_COOKIE_SENT, VERIFY_DROP, RateLimiter
from gateway_core.wireguard.session import REPLAY_WINDOW, Session
from gateway_core.wireguard.timers import N_SESSIONS, WireGuardConfig

_SLOT_MASK = N_SESSIONS - 1
_REPLAY_SLOT = REPLAY_WINDOW - 1
_HDR = DATA_HEADER
_NONCE = struct.Struct("<IQ")
"""ChaCha20-Poly1305 nonce: four zero bytes and the little-endian 64-bit counter."""


class WgEvent(StrEnum):
    """What the tunnel tells its owner (drained with :meth:`WireGuardPeer.poll_event`)."""

    SESSION_ESTABLISHED = "session_established"
    """A handshake completed (either role)."""
    CONNECTION_EXPIRED = "connection_expired"
    """Handshake attempts gave up or no session for 540 s: the tunnel is dead (snownet fails it)."""


class WireGuardPeer:
    """A WireGuard tunnel to one peer (see the module docstring)."""

    __slots__ = (
        "_current",
        "_entropy",
        "_events",
        "_keepalive",
        "_last_now",
        "_no_reply_rekey",
        "_owns_rate_limiter",
        "_queue",
        "_reject_msgs",
        "_rekey_msgs_minus_one",
        "_should_not_use",
        "_transmits",
        "_want_rekey",
        "cfg",
        "handshake",
        "is_initiator",
        "queued",
        "rate_limiter",
        "send_handshake_at",
        "sessions",
        "stats",
        "t_data_received",
        "t_data_sent",
        "t_handshake_started",
        "t_persistent_keepalive",
        "t_session_established",
        "waiting",
        "want_handshake_at",
        "want_passive_keepalive_at",
    )

    def __init__(
        self,
        *,
        static_private: bytes,
        peer_public: bytes,
        psk: bytes | None,
        global_index: int,
        entropy: Entropy,
        now: Instant,
        wall_unix_ns: int,
        rate_limiter: RateLimiter | None = None,
        config: WireGuardConfig | None = None,
    ) -> None:
        """``global_index`` (24 bits) names the tunnel in every session index; ``wall_unix_ns`` is the
        wall clock at ``now`` (for TAI64N). Without a shared ``rate_limiter`` the tunnel makes and resets
        its own (boringtun's per-tunnel default, limit 10)."""
        self.cfg = cfg = config or WireGuardConfig()
        # Config values the data path reads, cached as plain attributes.
        self._should_not_use = cfg.should_not_use_after
        self._reject_msgs = cfg.reject_after_messages
        self._rekey_msgs_minus_one = cfg.rekey_after_messages - 1
        self._no_reply_rekey = cfg.keepalive_timeout + cfg.rekey_timeout
        self._keepalive = cfg.keepalive_timeout
        self._entropy = entropy
        self.handshake = Handshake(static_private, peer_public, psk, global_index, now, wall_unix_ns)
        if rate_limiter is None:
            rate_limiter = RateLimiter(self.handshake.static_public, entropy, now, limit=10)
            self._owns_rate_limiter = True
        else:
            self._owns_rate_limiter = False
        self.rate_limiter = rate_limiter
        self.sessions: list[Session | None] = [None] * N_SESSIONS
        self._current = 0
        # Lists, not deques: they hold a handful of items for a moment, and an empty deque costs 760 bytes
        # (a 64-slot block) against 56 for a list: three per tunnel were a third of an idle client's memory.
        self._queue: list[bytes] = []
        self.waiting: Sized = self._queue
        """The IP packets held until a session may carry them, read-only: truthy while one waits."""
        self._transmits: list[bytes] = []
        self.queued: Sized = self._transmits
        """The datagrams :meth:`poll_transmit` will give, read-only: truthy when there is one (the node
        peeks after every packet, so this is an attribute, not a method call)."""
        self._events: list[WgEvent] = []
        self._last_now = now
        self.stats = Stats()
        self._clear_timers(now)
        self.is_initiator = False
        self.send_handshake_at: Instant | None = None
        self._want_rekey = False

    def _clear_timers(self, now: Instant) -> None:
        # boringtun Timers::clear: every timestamp becomes now, both "want" deadlines are cleared.
        self.t_session_established = now
        self.t_handshake_started = now
        self.t_data_received = now
        self.t_data_sent = now
        self.t_persistent_keepalive = now
        self.want_handshake_at: int | None = None
        self.want_passive_keepalive_at: int | None = None

    def _advance(self, now: Instant) -> None:
        if now != self._last_now:  # (per packet: the R2 helper is called only when time moved)
            self._last_now = advance(self._last_now, now)

    # --- queries -------------------------------------------------------------------------------------

    @property
    def is_expired(self) -> bool:
        return self.handshake.expired

    @property
    def current_session(self) -> Session | None:
        return self.sessions[self._current]

    def poll_transmit(self) -> bytes | None:
        """The next queued datagram for the peer (handshake, cookie reply, keepalive, flushed data)."""
        return self._transmits.pop(0) if self._transmits else None

    def poll_event(self) -> WgEvent | None:
        return self._events.pop(0) if self._events else None

    def drop_waiting(self) -> int:
        """Forget the IP packets held until a session may carry them; how many there were."""
        n = len(self._queue)
        self._queue.clear()
        return n

    # --- data plane ----------------------------------------------------------------------------------

    def encapsulate(self, now: Instant, packet: bytes) -> bytes | None:
        """The datagram to send for ``packet`` (an IP packet; empty = keepalive); see the module doc."""
        if now != self._last_now:  # (per packet: the R2 helper is called only when time moved)
            self._last_now = advance(self._last_now, now)
        # Hot path: cached config values, no allocation beyond the output; anything else queues.
        s = self.sessions[self._current]
        if s is not None:
            ctr = s.send_counter
            if (not self.is_initiator or now <= s.established_at + self._should_not_use) and (
                ctr < self._reject_msgs
            ):
                s.send_counter = ctr + 1
                out = _HDR.pack(MSG_DATA, s.peer_index, ctr) + s.encrypt(_NONCE.pack(0, ctr), packet, None)
                self.want_passive_keepalive_at = None
                if packet:
                    self.t_data_sent = now
                    if self.want_handshake_at is None:
                        self.want_handshake_at = now + self._no_reply_rekey
                if ctr >= self._rekey_msgs_minus_one:
                    self._want_rekey = True
                return out
        return self._queue_and_initiate(now, packet)

    def _queue_and_initiate(self, now: Instant, packet: bytes) -> bytes | None:
        """No session may carry ``packet``: queue it and start a handshake (its initiation, or ``None``)."""
        if len(self._queue) < self.cfg.max_queue_depth:
            self._queue.append(bytes(packet))
        else:
            self.stats.drop(DropReason.QUEUE_FULL)
        return self._initiate(now, force=False)

    def decapsulate(self, now: Instant, datagram: bytes, src: IPAddress | None = None) -> bytes | None:
        """The IP packet in ``datagram``, or ``None``; everything else goes to :meth:`poll_transmit`.

        ``src`` is the sender's IP address; it keys the cookie under load (without it, handshakes under
        load are dropped, as in boringtun)."""
        if now != self._last_now:  # (per packet: the R2 helper is called only when time moved)
            self._last_now = advance(self._last_now, now)
        if len(datagram) < DATA_MIN_LEN:
            self._handle_control(now, datagram, src)
            return None
        mtype, idx, ctr = _HDR.unpack_from(datagram)
        if mtype != MSG_DATA:
            self._handle_control(now, datagram, src)
            return None
        # --- transport data (hot path, kept in one function) ---
        slot = idx & _SLOT_MASK
        s = self.sessions[slot]
        if s is None:
            self.stats.drop(DropReason.WG_NO_SESSION)
            return None
        if s.local_index != idx:
            self.stats.drop(DropReason.WG_UNKNOWN_INDEX)
            return None
        # Replay check before paying for decryption (boringtun session.rs); marked after the tag verified.
        nxt = s.next
        if ctr >= nxt:
            if ctr >= self._reject_msgs:
                self.stats.drop(DropReason.WG_SESSION_EXPIRED)
                return None
        elif ctr + REPLAY_WINDOW < nxt or s.flags[ctr & _REPLAY_SLOT]:
            self.stats.drop(DropReason.WG_REPLAY)
            return None
        try:
            pt: bytes = s.decrypt(_NONCE.pack(0, ctr), datagram[16:], None)
        except InvalidTag:
            self.stats.drop(DropReason.WG_DECRYPT_FAILED)
            return None
        if ctr == nxt:  # in order: the common case
            s.flags[ctr & _REPLAY_SLOT] = 1
            s.next = ctr + 1
        else:
            s.mark(ctr)
        if slot != self._current:
            self._set_current(slot)
        self.want_handshake_at = None  # any authenticated packet received
        if not pt:
            return None  # keepalive
        # The plaintext is cut to the IP length (padding allowed) and must hold all of it (mod.rs:592-639).
        n = len(pt)
        b0 = pt[0]
        if 0x45 <= b0 <= 0x4F and n >= 20:  # IPv4 with a valid header length
            total = (pt[2] << 8) | pt[3]
            if not 20 <= total <= n:
                self.stats.drop(DropReason.MALFORMED_IP)
                return None
        elif b0 >> 4 == 6 and n >= 40:
            total = ((pt[4] << 8) | pt[5]) + 40
            if total > n:
                self.stats.drop(DropReason.MALFORMED_IP)
                return None
        else:
            self.stats.drop(DropReason.MALFORMED_IP)
            return None
        self.want_passive_keepalive_at = now + self._keepalive
        self.t_data_received = now
        return pt if total == n else pt[:total]

    def _set_current(self, slot: int) -> None:
        new = self.sessions[slot]
        assert new is not None
        cur = self.sessions[self._current]
        if cur is not None and cur.established_at > new.established_at:
            return
        self._current = slot
        self._flush_queue(self._last_now)

    def _flush_queue(self, now: Instant) -> None:
        """Send the packets that waited for a session (see docs/decisions/0010-wg-...)."""
        while self._queue:
            s = self.sessions[self._current]
            if s is None:
                return
            packet = self._queue.pop(0)
            out = self.encapsulate(now, packet)
            if out is not None:
                self._transmits.append(out)
            if self.sessions[self._current] is not s or self.handshake.in_progress:
                return

    # --- control messages ----------------------------------------------------------------------------

    def _handle_control(self, now: Instant, datagram: bytes, src: IPAddress | None) -> None:
        """Handshake messages and cookie replies (and anything malformed)."""
        try:
            mtype = message_type(datagram)
        except DecodeError:
            self.stats.drop(DropReason.WG_MALFORMED)
            return None
        if mtype == MSG_DATA:  # pragma: no cover - the fast path took every valid data message
            self.stats.drop(DropReason.WG_MALFORMED)
            return None
        try:
            if mtype == MSG_COOKIE_REPLY:
                self.handshake.consume_cookie_reply(now, decode_cookie_reply(datagram))
                self.want_handshake_at = None
                self.stats.incr("cookie_replies_received")
                return None
            verdict, extra = self.rate_limiter.verify(datagram, src, now)
            if verdict == VERIFY_DROP:
                assert isinstance(extra, DropReason)
                self.stats.drop(extra)
                return None
            if verdict == VERIFY_COOKIE_SENT:
                assert isinstance(extra, bytes)
                self._transmits.append(extra)
                self.stats.drop(DropReason.WG_COOKIE_REQUIRED)
                return None
            if mtype == MSG_INITIATION:
                self._on_initiation(now, datagram)
            else:
                self._on_response(now, datagram)
        except HandshakeRejected as e:
            self.stats.drop(e.reason)
        return None

    def handle_handshake(self, now: Instant, datagram: bytes, initiator: Initiator | None = None) -> None:
        """A Handshake Initiation or Response (exact length) whose mac1, load and mac2 its caller checked
        with the node-wide :class:`RateLimiter`: the tunnel neither checks nor counts it again. Outputs go
        to :meth:`poll_transmit` / :meth:`poll_event`; a rejected message is counted in :attr:`stats`.
        ``initiator``: what the node's ``InitiatorIdentifier`` found for this initiation (saves a DH)."""
        self._advance(now)
        try:
            if datagram[:1] == b"\x01":
                self._on_initiation(now, datagram, initiator)
            elif datagram[:1] == b"\x02":
                self._on_response(now, datagram)
            else:
                self.stats.drop(DropReason.WG_MALFORMED)
        except HandshakeRejected as e:
            self.stats.drop(e.reason)
        except DecodeError:
            self.stats.drop(DropReason.WG_MALFORMED)

    def _on_initiation(self, now: Instant, datagram: bytes, initiator: Initiator | None = None) -> None:
        response, session = self.handshake.consume_initiation(
            now, decode_initiation(datagram), self._entropy, initiator
        )
        self.sessions[session.local_index & _SLOT_MASK] = session
        self.want_handshake_at = None
        self.want_passive_keepalive_at = None
        self.t_session_established = now
        self.is_initiator = False
        self._transmits.append(response)
        self._events.append(WgEvent.SESSION_ESTABLISHED)
        self.stats.incr("handshakes_as_responder")

    def _on_response(self, now: Instant, datagram: bytes) -> None:
        session = self.handshake.consume_response(now, decode_response(datagram))
        slot = session.local_index & _SLOT_MASK
        self.sessions[slot] = session
        self.want_handshake_at = None
        self.t_session_established = now
        self.is_initiator = True
        self._events.append(WgEvent.SESSION_ESTABLISHED)
        self.stats.incr("handshakes_as_initiator")
        # Send a keepalive on the new session at once: it tells the responder to switch to it.
        ctr = session.send_counter
        session.send_counter = ctr + 1
        self._transmits.append(
            _HDR.pack(MSG_DATA, session.peer_index, ctr)
            + session.sender.encrypt(_NONCE.pack(0, ctr), b"", None)
        )
        self.want_passive_keepalive_at = None
        if slot != self._current:
            self._set_current(slot)
        else:
            self._flush_queue(now)

    def _initiate(self, now: Instant, *, force: bool) -> bytes | None:
        hs = self.handshake
        if hs.in_progress and not force:
            return None
        if hs.expired:
            self._clear_timers(now)
        starting = not hs.in_progress
        msg = hs.create_initiation(now, self._entropy)
        if starting:
            self.t_handshake_started = now
        self.want_passive_keepalive_at = None
        self.stats.incr("initiations_sent")
        return msg

    # --- timers --------------------------------------------------------------------------------------

    def handle_timeout(self, now: Instant) -> None:
        """Do everything due at ``now`` (see the module docstring); outputs go to :meth:`poll_transmit`
        and :meth:`poll_event`."""
        self._advance(now)
        if self._owns_rate_limiter:
            self.rate_limiter.reset_count(now)
        # A handshake scheduled with zero jitter is due at once: run the update again (bounded).
        for _ in range(4):
            self._update_timers(now)
            d = self._next_deadline()
            if d is None or d[0] > now:
                return
        raise AssertionError(f"wireguard timers did not settle at {now}: {d}")  # pragma: no cover

    def _update_timers(self, now: Instant) -> None:
        cfg = self.cfg
        hs = self.handshake
        if self.send_handshake_at is not None:
            if now >= self.send_handshake_at:
                self.send_handshake_at = None
                msg = self._initiate(now, force=True)
                if msg is not None:
                    self._transmits.append(msg)
            return
        required = False
        keepalive = False
        for i, s in enumerate(self.sessions):
            if s is not None and now > s.established_at + cfg.reject_after_time:
                self.sessions[i] = None
        if self.sessions[self._current] is None and not hs.in_progress and self.is_initiator:
            required = True
        if hs.expired:
            return
        cookie_expiry = hs.cookies.expiry()
        if cookie_expiry is not None and now >= cookie_expiry:
            hs.cookies.clear_cookie()
        established = self.t_session_established
        if now - established >= cfg.connection_expiry:
            self._expire(now)
            return
        st = hs.state
        if st is not None:
            if now - self.t_handshake_started >= cfg.rekey_attempt_time:
                self._expire(now)
                return
            if now - st.time_sent >= cfg.rekey_timeout:
                required = True
        else:
            if self.is_initiator:
                if established < self.t_data_sent and now - established >= cfg.rekey_after_time:
                    required = True
                if established < self.t_data_received and now - established >= cfg.rekey_on_receive_after:
                    required = True
            if self.want_handshake_at is not None and now >= self.want_handshake_at:
                required = True
            if self._want_rekey:
                required = True
            if not required:
                if self.want_passive_keepalive_at is not None and now >= self.want_passive_keepalive_at:
                    keepalive = True
                pk = cfg.persistent_keepalive
                if pk is not None and now - self.t_persistent_keepalive >= pk:
                    self.t_persistent_keepalive = now
                    keepalive = True
        if required:
            self._want_rekey = False
            jitter = self._entropy.randbelow(cfg.max_jitter + 1)
            self.send_handshake_at = Instant(now + jitter)
            return
        if keepalive:
            out = self.encapsulate(now, b"")
            if out is not None:
                self._transmits.append(out)
            self.stats.incr("keepalives_sent")

    def _expire(self, now: Instant) -> None:
        self.handshake.set_expired()
        self.sessions = [None] * N_SESSIONS
        self._queue.clear()
        self._clear_timers(now)
        self._events.append(WgEvent.CONNECTION_EXPIRED)
        self.stats.incr("connections_expired")

    def _next_deadline(self) -> tuple[Instant, str] | None:
        hs = self.handshake
        if self.send_handshake_at is not None:
            return self.send_handshake_at, "wg handshake"
        if hs.expired:
            return None
        cfg = self.cfg
        now = self._last_now
        best: tuple[int, str] | None = None

        def consider(at: int, why: str) -> None:
            nonlocal best
            if best is None or at < best[0]:
                best = (at, why)

        if self._owns_rate_limiter:
            r = self.rate_limiter.next_reset()
            if r is not None:
                consider(r, "wg rate limiter reset")
        for s in self.sessions:
            if s is not None:
                consider(s.established_at + cfg.reject_after_time + 1, "wg session expiry")
        if self.sessions[self._current] is None and hs.state is None and self.is_initiator:
            consider(now, "wg handshake (no session)")
        c = hs.cookies.expiry()
        if c is not None:
            consider(c, "wg cookie expiry")
        established = self.t_session_established
        consider(established + cfg.connection_expiry, "wg connection expiry")
        st = hs.state
        if st is not None:
            consider(self.t_handshake_started + cfg.rekey_attempt_time, "wg handshake give-up")
            consider(st.time_sent + cfg.rekey_timeout, "wg handshake retransmit")
        else:
            if self.is_initiator:
                if established < self.t_data_sent:
                    consider(established + cfg.rekey_after_time, "wg rekey")
                if established < self.t_data_received:
                    consider(established + cfg.rekey_on_receive_after, "wg rekey")
            if self.want_handshake_at is not None:
                consider(self.want_handshake_at, "wg rekey (no reply)")
            if self._want_rekey:
                consider(now, "wg rekey (messages)")
            if self.want_passive_keepalive_at is not None:
                consider(self.want_passive_keepalive_at, "wg keepalive")
            if cfg.persistent_keepalive is not None:
                consider(self.t_persistent_keepalive + cfg.persistent_keepalive, "wg persistent keepalive")
        if best is None:
            return None
        return Instant(best[0]), best[1]

    def poll_timeout(self) -> Deadline | None:
        """The next deadline (pure; never before the last ``now``)."""
        d = self._next_deadline()
        if d is None:
            return None
        return Deadline(Instant(max(d[0], self._last_now)), d[1])

    def keepalive(self, now: Instant) -> None:
        """Queue a keepalive on the current session if it may still carry one (nothing is queued and no
        handshake started otherwise): a responder switches to a new session on the first packet it gets
        on it (the node's handshake nudge, decision 0173)."""
        self._advance(now)
        s = self.sessions[self._current]
        if s is None or s.send_counter >= self._reject_msgs:
            return
        if self.is_initiator and now > s.established_at + self._should_not_use:
            return
        out = self.encapsulate(now, b"")
        if out is not None:
            self._transmits.append(out)
            self.stats.incr("keepalives_sent")

    def initiate(self, now: Instant) -> None:
        """Start a handshake now unless one is in progress (the Client's proactive initiation,
        snownet's ``initiate_wg_session`` in ``rust/connlib/snownet/src/node.rs``)."""
        self._advance(now)
        msg = self._initiate(now, force=False)
        if msg is not None:
            self._transmits.append(msg)
