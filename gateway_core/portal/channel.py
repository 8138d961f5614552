"""The portal channel: Phoenix over one WebSocket, joined to topic ``gateway`` (Firezone:
``rust/connlib/phoenix-channel/src/lib.rs``).

Theory of operation
-------------------
The machine owns no socket. It orders the driver to open a WebSocket (:class:`ConnectPortal`), write text
frames (:class:`SendPortalFrame`) and close (:class:`ClosePortal`); the driver reports back what happened
as inputs (:class:`PortalConnected`, :class:`PortalConnectFailed` with the HTTP status of a refused upgrade,
:class:`PortalDisconnected`, :class:`PortalFrameReceived`, :class:`PortalSendFailed`). Every order and
report carries the connection number ``conn``; reports about an older connection are ignored, so the
driver never has to worry about races between an old socket's last words and a new attempt.

States (one transition table, :data:`TRANSITIONS`, checked and logged by ``_transition``)::

    IDLE --start--> CONNECTING --connected--> JOINING --ok reply--> JOINED
    CONNECTING/JOINING/JOINED --transient error--> CONNECTING (delay 0) or WAITING --timer--> CONNECTING
    JOINED --phx_error / "unmatched topic"--> JOINING (rejoin on the same socket)
    any --fatal (4xx, bad certificate, join refused, token expired, backoff exhausted)--> FAILED
    JOINING/JOINED --shutdown--> CLOSING --closed or grace over--> CLOSED; IDLE/CONNECTING/WAITING --> CLOSED

Timers (at most one is due per state, :meth:`poll_timeout` returns the earliest): connect timeout
(CONNECTING), retry (WAITING), join timeout (JOINING), heartbeat and heartbeat-reply timeout (JOINED),
close grace (CLOSING). A heartbeat is sent 30 s after the last frame written. Retries follow Firezone's
backoff (first retry at once, then 0.5 s x 1.5^n +-50 %, give up 15 min after the first failure), drawn
from the injected entropy; the backoff restarts after every successful WebSocket handshake.

Outbound application frames get their ref when queued (one counter for every frame the gateway creates,
as Firezone) and wait in a FIFO while the channel is not joined; the FIFO survives reconnects and is
emptied when a push finds more than 32 frames queued (Firezone's limit). The FIFO and the pushes waiting
for their reply are the channel's :class:`~gateway_core.portal.outbox.Outbox`.

The inputs, commands and events are defined in :mod:`gateway_core.portal.channel_types` and re-exported
here.

Deliberate deviations from Firezone 1.4.18 (``docs/decisions/0030-portal-*.md``): a heartbeat without a
reply within 30 s means a dead connection (Phoenix's JavaScript client does the same; Firezone has no such
timeout); ``phx_error`` on the gateway topic makes the channel rejoin (Firezone only logs it); the join
timeout and the connect timeout have their own timers.

What the gateway must know comes out of :meth:`poll_event`: :class:`PortalJoined`,
:class:`PortalMessageReceived` (a decoded application message), :class:`PortalReplyError`,
:class:`PortalHiccup`, :class:`PortalFailed` (fatal: the daemon exits 1) and :class:`PortalStopped` (after a
shutdown).
"""

from __future__ import annotations

import logging
from collections import deque
from enum import Enum
from typing import assert_never

from gateway_core.backoff import Backoff
from gateway_core.clock import Instant, fmt
from gateway_core.contract import Deadline, advance
from gateway_core.entropy import Entropy
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.inputs import Input, ShutdownRequested
from gateway_core.portal import phoenix
from gateway_core.portal.channel_types import (
    ChannelConfig,
    ClosePortal,
    ConnectPortal,
    FatalKind,
    PortalCommand,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalEvent,
    PortalFailed,
    PortalFrameReceived,
    PortalHiccup,
    PortalInput,
    PortalJoined,
    PortalMessageReceived,
    PortalReplyError,
    PortalSendFailed,
    PortalStopped,
    SendPortalFrame,
)
from gateway_core.portal.login import LoginUrl
from gateway_core.portal.messages import OutboundMessage, UnknownEvent, decode_inbound
from gateway_core.portal.model import Json
from gateway_core.portal.outbox import Outbox
from gateway_core.stats import Stats

log = logging.getLogger("gateway_core.portal.channel")

LOGIN_TOPIC = "gateway"
"""The topic the gateway joins and uses for every application message (``eventloop.rs:35``)."""

ChannelInput = PortalInput | ShutdownRequested
"""What :meth:`PortalChannel.handle_input` takes: the driver's reports, and a shutdown (a graceful close)."""


# --------------------------------------------------------------------------------------------------
# The machine


class ChannelState(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    WAITING = "waiting"
    JOINING = "joining"
    JOINED = "joined"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


S = ChannelState
_TRANSIENT = "transient error (backoff says: now)"
_BACKOFF = "transient error (backoff says: later)"
TRANSITIONS: dict[ChannelState, dict[ChannelState, str]] = {
    S.IDLE: {S.CONNECTING: "start", S.CLOSED: "shutdown"},
    S.CONNECTING: {
        S.JOINING: "upgrade ok: send phx_join",
        S.CONNECTING: _TRANSIENT,
        S.WAITING: _BACKOFF,
        S.FAILED: "HTTP 4xx, bad certificate, backoff exhausted",
        S.CLOSED: "shutdown",
    },
    S.WAITING: {S.CONNECTING: "retry timer, reconnect()", S.CLOSED: "shutdown"},
    S.JOINING: {
        S.JOINED: "ok reply to the join",
        S.CONNECTING: _TRANSIENT + ", reconnect()",
        S.WAITING: _BACKOFF,
        S.FAILED: "join refused, token expired, backoff exhausted",
        S.CLOSING: "shutdown",
    },
    S.JOINED: {
        S.JOINING: "phx_error, unmatched topic: rejoin",
        S.CONNECTING: _TRANSIENT + ", reconnect()",
        S.WAITING: _BACKOFF,
        S.FAILED: "token expired, backoff exhausted",
        S.CLOSING: "shutdown",
    },
    S.CLOSING: {S.CLOSED: "closed, or close grace over"},
    S.CLOSED: {},
    S.FAILED: {},
}
"""Every allowed move and what causes it; ``_transition`` refuses any other (an AssertionError: a bug).
Transient errors: connect/join/heartbeat timeout, connection lost, send failed, phx_close, truncated
frame, HTTP 3xx/5xx."""


def transition_diagram() -> str:
    """The state diagram of :data:`TRANSITIONS` as Mermaid text (docs/design/portal.md embeds it)."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for src, dsts in TRANSITIONS.items():
        for dst, why in dsts.items():
            lines.append(f"    {src.value} --> {dst.value}: {why}")
    lines += ["    closed --> [*]", "    failed --> [*]"]
    return "\n".join(lines)


class PortalChannel:
    """The Phoenix channel machine (see the module docstring)."""

    def __init__(
        self,
        url: LoginUrl,
        user_agent: str,
        entropy: Entropy,
        config: ChannelConfig | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.url = url
        self.user_agent = user_agent
        self.config = config or ChannelConfig()
        self.stats = stats if stats is not None else Stats()
        self._entropy = entropy
        self._state = ChannelState.IDLE
        self._now = Instant(0)
        self._conn = 0
        self._backoff: Backoff | None = None
        self._last_error = ""
        self._outbox = Outbox(self.config.max_in_flight)
        self._commands: deque[PortalCommand] = deque()
        self._events: deque[PortalEvent] = deque()
        self._join_ref: int | None = None
        self._last_sent = Instant(0)
        self._heartbeat_ref: int | None = None
        self._heartbeat_sent = Instant(0)
        self._deadline_at: Instant | None = None  # connect / retry / join / close timer of the state

    # ---------------------------------------------------------------- introspection

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def conn(self) -> int:
        return self._conn

    @property
    def queued(self) -> int:
        return len(self._outbox)

    # ---------------------------------------------------------------- driving contract

    def _advance(self, now: Instant) -> None:
        self._now = advance(self._now, now)

    def poll_command(self) -> PortalCommand | None:
        return self._commands.popleft() if self._commands else None

    def poll_event(self) -> PortalEvent | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> Deadline | None:
        st = self._state
        if st in (S.CONNECTING, S.WAITING, S.JOINING, S.CLOSING) and self._deadline_at is not None:
            reason = {
                S.CONNECTING: "portal connect timeout",
                S.WAITING: "portal reconnect",
                S.JOINING: "portal join timeout",
                S.CLOSING: "portal close grace",
            }[st]
            return Deadline(max(self._deadline_at, self._now), reason)
        if st is S.JOINED:
            hb = Deadline(Instant(self._last_sent + self.config.heartbeat_interval), "portal heartbeat")
            if self._heartbeat_ref is not None:
                to = Instant(self._heartbeat_sent + self.config.heartbeat_timeout)
                if to <= hb.at:
                    hb = Deadline(to, "portal heartbeat timeout")
            return Deadline(max(hb.at, self._now), hb.reason)
        return None

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)
        st = self._state
        if st in (S.CONNECTING, S.WAITING, S.JOINING, S.CLOSING):
            if self._deadline_at is None or now < self._deadline_at:
                return
            if st is S.CONNECTING:
                self._transient("connect timeout")
            elif st is S.WAITING:
                self._connect()
            elif st is S.JOINING:
                self._transient("join timeout")
            else:  # the close handshake did not finish in time: drop the connection
                self._commands.append(ClosePortal(self._conn, graceful=False))
                self._closed()
        elif st is S.JOINED:
            cfg = self.config
            if self._heartbeat_ref is not None and now >= self._heartbeat_sent + cfg.heartbeat_timeout:
                self.stats.incr("portal.heartbeat_timeouts")
                self._transient("heartbeat not answered")
                return
            if now >= self._last_sent + cfg.heartbeat_interval:
                ref = self._outbox.new_ref()
                text = phoenix.encode_frame(phoenix.PHOENIX_TOPIC, phoenix.HEARTBEAT, {}, ref)
                if self._heartbeat_ref is None:
                    self._heartbeat_sent = now
                    self._heartbeat_ref = ref
                else:  # still waiting for an older one: keep its deadline, match either reply
                    self._outbox.expect_reply(ref, phoenix.HEARTBEAT)
                self._write(text)
                self.stats.incr("portal.heartbeats")

    def handle_input(self, now: Instant, inp: Input) -> None:
        """One of :data:`ChannelInput` (anything else: :class:`UsageError`)."""
        self._advance(now)
        if not isinstance(inp, ChannelInput):
            raise UsageError(f"portal channel cannot handle {type(inp).__name__}")
        match inp:
            case ShutdownRequested():
                self.close(now)
            case PortalFrameReceived(conn=c, data=data):
                if self._live(c):
                    self._on_frame(data)
            case PortalConnected(conn=c):
                if c == self._conn and self._state is S.CONNECTING:
                    self._on_connected()
                else:
                    self.stats.incr("portal.stale_inputs")
            case PortalConnectFailed(conn=c, error=err, status=status, certificate_invalid=bad_cert):
                if c != self._conn or self._state is not S.CONNECTING:
                    self.stats.incr("portal.stale_inputs")
                elif status is not None and 400 <= status <= 499:
                    self._fatal(FatalKind.CLIENT_ERROR, f"HTTP {status}: {err}", status)
                elif bad_cert:
                    self._fatal(FatalKind.FATAL_IO, err)
                else:
                    self._transient(f"HTTP {status}: {err}" if status is not None else err)
            case PortalDisconnected(conn=c, error=err):
                if c == self._conn and self._state is S.CLOSING:
                    self._closed()
                elif self._live(c):
                    self._transient(f"connection lost: {err}")
                else:
                    self.stats.incr("portal.stale_inputs")
            case PortalSendFailed(conn=c, text=text, error=err):
                if self._live(c):
                    # Put it back at the head; its ref and event are recovered from the text.
                    self._outbox.requeue(text)
                    self._transient(f"send failed: {err}")
            case _:
                assert_never(inp)

    def _live(self, conn: int) -> bool:
        return conn == self._conn and self._state in (S.JOINING, S.JOINED)

    # ---------------------------------------------------------------- gateway API

    def start(self, now: Instant) -> None:
        """Begin connecting (once, at start-up)."""
        self._advance(now)
        if self._state is not S.IDLE:
            raise UsageError(f"start() in state {self._state.value}")
        self._connect()

    def reconnect(self, now: Instant) -> None:
        """Reconnect at once with a fresh backoff (Firezone does so when it has no TURN servers,
        ``rust/gateway/src/eventloop.rs``).

        A connection attempt already under way is left alone (Firezone: same URL, nothing to do).
        """
        self._advance(now)
        if self._state in (S.CONNECTING, S.IDLE, S.CLOSING, S.CLOSED, S.FAILED):
            return
        self._backoff = None
        self._drop_connection()
        self._connect()

    def close(self, now: Instant) -> None:
        """Graceful close on shutdown: close handshake when connected, abandon an attempt otherwise."""
        self._advance(now)
        st = self._state
        if st in (S.JOINING, S.JOINED):
            self._commands.append(ClosePortal(self._conn, graceful=True))
            self._transition(S.CLOSING, "shutdown")
            self._deadline_at = Instant(now + self.config.close_grace)
        elif st in (S.IDLE, S.CONNECTING, S.WAITING):
            if st is S.CONNECTING:
                self._commands.append(ClosePortal(self._conn, graceful=False))
            self._closed()

    def send(self, now: Instant, message: OutboundMessage) -> int:
        """Queue an application message on the gateway topic; returns its ref."""
        return self.push(now, message.EVENT, message.encode())

    def push(self, now: Instant, event: str, payload: Json, topic: str = LOGIN_TOPIC) -> int:
        """Queue any push; it is written once the channel is joined. Returns its ref (-1 once closed)."""
        self._advance(now)
        if self._state in (S.CLOSING, S.CLOSED, S.FAILED):
            # Shutting down or given up: nothing will be sent any more (Firezone ignores them too).
            self.stats.incr("portal.pushes_after_close")
            return -1
        queued = len(self._outbox)
        if queued > self.config.queue_limit:
            log.debug("portal queue over %d frames: discarding %d", self.config.queue_limit, queued)
            self.stats.drop(DropReason.QUEUE_FULL, queued)
            self._outbox.discard_queue()
        ref = self._outbox.new_ref()
        self._outbox.queue(ref, event, phoenix.encode_frame(topic, event, payload, ref))
        if self._state is S.JOINED:
            self._flush()
        return ref

    # ---------------------------------------------------------------- internals

    def _transition(self, new: ChannelState, why: str) -> None:
        old = self._state
        assert new in TRANSITIONS[old], f"portal channel: no transition {old.value} -> {new.value} ({why})"
        log.debug("portal channel %s -> %s (%s)", old.value, new.value, why)
        self._state = new

    def _connect(self) -> None:
        self._conn += 1
        self._transition(S.CONNECTING, f"connection {self._conn}")
        self._deadline_at = Instant(self._now + self.config.connect_timeout)
        self._commands.append(ConnectPortal(self._conn, self.url, self.user_agent))
        self.stats.incr("portal.connect_attempts")

    def _on_connected(self) -> None:
        self._backoff = None  # success is the upgrade, not the join (lib.rs:398)
        self._last_sent = self._now
        self._outbox.forget_replies()
        self._heartbeat_ref = None
        self._transition(S.JOINING, "websocket up")
        self._send_join()

    def _send_join(self) -> None:
        ref = self._outbox.new_ref()
        self._join_ref = ref
        self._deadline_at = Instant(self._now + self.config.join_timeout)
        self._write(phoenix.encode_frame(LOGIN_TOPIC, phoenix.PHX_JOIN, None, ref))

    def _rejoin(self, why: str) -> None:
        if self._state is not S.JOINED:
            return  # a join is already pending
        self.stats.incr("portal.rejoins")
        self._heartbeat_ref = None
        self._transition(S.JOINING, why)
        self._send_join()

    def _write(self, text: str) -> None:
        self._commands.append(SendPortalFrame(self._conn, text))
        self._last_sent = self._now

    def _flush(self) -> None:
        for text in self._outbox.take():
            self._write(text)

    def _drop_connection(self) -> None:
        if self._state in (S.CONNECTING, S.JOINING, S.JOINED):
            self._commands.append(ClosePortal(self._conn, graceful=False))
        self._join_ref = None
        self._heartbeat_ref = None
        self._outbox.forget_replies()

    def _transient(self, error: str) -> None:
        """A recoverable failure: drop the connection, retry per the backoff."""
        self._drop_connection()
        self._last_error = error
        self.stats.incr("portal.hiccups")
        if self._backoff is None:
            self._backoff = Backoff(self.config.backoff, self._entropy)
        delay = self._backoff.next_delay(self._now)
        if delay is None:
            self._fatal(FatalKind.MAX_RETRIES, f"gave up reconnecting; last error: {error}")
            return
        log.info("portal hiccup (%s); reconnecting in %s", error, fmt(delay))
        self._events.append(PortalHiccup(delay, error))
        if delay == 0:
            self._connect()
        else:
            self._transition(S.WAITING, f"retry in {fmt(delay)}")
            self._deadline_at = Instant(self._now + delay)

    def _fatal(self, kind: FatalKind, error: str, status: int | None = None) -> None:
        self._drop_connection()
        log.error("portal: fatal %s: %s", kind.value, error)
        self._transition(S.FAILED, kind.value)
        self._deadline_at = None
        self._events.append(PortalFailed(kind, error, status))

    def _closed(self) -> None:
        self._transition(S.CLOSED, "closed")
        self._deadline_at = None
        self._join_ref = None
        self._events.append(PortalStopped())

    # ---------------------------------------------------------------- inbound frames

    def _on_frame(self, data: str | bytes) -> None:
        self.stats.incr("portal.frames_in")
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                log.warning("portal: frame is not UTF-8, skipped")
                self.stats.drop(DropReason.PORTAL_MALFORMED_FRAME)
                return
        else:
            text = data
        try:
            frame = phoenix.decode_frame(text)
        except phoenix.TruncatedFrame as e:
            self.stats.drop(DropReason.PORTAL_MALFORMED_FRAME)
            self._transient(str(e))
            return
        except DecodeError as e:
            log.warning("portal: dropping frame: %s", e)
            self.stats.drop(DropReason.PORTAL_MALFORMED_FRAME)
            return
        match frame.event:
            case phoenix.PHX_REPLY:
                self._on_reply(frame)
            case phoenix.PHX_ERROR:
                log.debug("portal: phx_error on %r", frame.topic)
                self.stats.incr("portal.phx_errors")
                if frame.topic == LOGIN_TOPIC and frame.ref != self._join_ref:
                    self._rejoin("phx_error")  # deliberate fix: Firezone only logs it
            case phoenix.PHX_CLOSE:
                self._transient("phx_close")
            case phoenix.DISCONNECT:
                p = frame.payload
                if isinstance(p, dict) and p.get("reason") == "token_expired":
                    self._fatal(FatalKind.TOKEN_EXPIRED, "token expired")
                else:
                    log.warning("portal: disconnect with unknown payload dropped")
                    self.stats.drop(DropReason.PORTAL_BAD_PAYLOAD)
            case _:
                try:
                    msg = decode_inbound(frame.event, frame.payload)
                except UnknownEvent:
                    log.warning("portal: unknown event %r dropped", frame.event)
                    self.stats.drop(DropReason.PORTAL_UNKNOWN_EVENT)
                    return
                except DecodeError as e:
                    log.warning("portal: %r dropped: %s", frame.event, e)
                    self.stats.drop(DropReason.PORTAL_BAD_PAYLOAD)
                    return
                self.stats.incr("portal.messages_in")
                self._events.append(PortalMessageReceived(msg))

    def _on_reply(self, frame: phoenix.Frame) -> None:
        p = frame.payload
        status = p.get("status") if isinstance(p, dict) else None
        if not isinstance(p, dict) or status not in ("ok", "error") or "response" not in p:
            log.warning("portal: malformed phx_reply dropped")
            self.stats.drop(DropReason.PORTAL_BAD_PAYLOAD)
            return
        ref = frame.ref
        if ref is None:
            log.warning("portal: phx_reply without ref dropped")
            self.stats.drop(DropReason.PORTAL_UNMATCHED_REPLY)
            return
        response = p["response"]
        if status == "ok":
            if response is None:
                self._outbox.answered(ref)
                return  # "success response": nothing to do
            if not isinstance(response, dict) or response:
                log.warning("portal: ok reply with unexpected response dropped")
                self.stats.drop(DropReason.PORTAL_BAD_PAYLOAD)
                return
            if ref == self._join_ref and self._state is S.JOINING:
                self._join_ref = None
                self._deadline_at = None
                self._transition(S.JOINED, "join ok")
                self.stats.incr("portal.joins")
                self._events.append(PortalJoined())
                self._flush()
            elif ref == self._heartbeat_ref:
                self._heartbeat_ref = None
            elif self._outbox.answered(ref) is None:
                self.stats.drop(DropReason.PORTAL_UNMATCHED_REPLY)
            return
        reason_v = response.get("reason") if isinstance(response, dict) else None
        if not isinstance(reason_v, str):
            log.warning("portal: error reply without reason dropped")
            self.stats.drop(DropReason.PORTAL_BAD_PAYLOAD)
            return
        if ref == self._join_ref and self._state is S.JOINING and frame.topic == LOGIN_TOPIC:
            self._fatal(FatalKind.LOGIN_FAILED, f"join refused: {reason_v}")
            return
        event = self._outbox.answered(ref)
        if reason_v == "unmatched topic":
            self._rejoin("unmatched topic")
            return
        log.warning("portal: error reply to %s (ref %d): %s", event or "?", ref, reason_v)
        self.stats.incr("portal.error_replies")
        self._events.append(PortalReplyError(ref, event, reason_v))


__all__ = [
    "LOGIN_TOPIC",
    "TRANSITIONS",
    "ChannelConfig",
    "ChannelInput",
    "ChannelState",
    "ClosePortal",
    "ConnectPortal",
    "FatalKind",
    "PortalChannel",
    "PortalCommand",
    "PortalConnectFailed",
    "PortalConnected",
    "PortalDisconnected",
    "PortalEvent",
    "PortalFailed",
    "PortalFrameReceived",
    "PortalHiccup",
    "PortalInput",
    "PortalJoined",
    "PortalMessageReceived",
    "PortalReplyError",
    "PortalSendFailed",
    "PortalStopped",
    "SendPortalFrame",
    "transition_diagram",
]
