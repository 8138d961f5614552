"""Server side of Phoenix Channels for one socket, pure (text frames in, text frames out).

Theory of operation: a :class:`PhoenixSocket` is one accepted WebSocket. It speaks the serializer the
client asked for with ``vsn`` (``1.0.0``: objects ``{topic, event, payload, ref}``, what Firezone's
gateway uses; ``2.0.0``: arrays ``[join_ref, ref, topic, event, payload]``, the JavaScript client's
default). Per topic it is either unjoined or joined (remembering the join's ``join_ref``). It handles the
framework events itself, as Phoenix does:

- ``heartbeat`` on topic ``phoenix`` -> ``phx_reply`` ok ``{}``;
- ``phx_join`` -> asks the :class:`ChannelHandler`; ok -> joined (a rejoin replaces the old join);
- ``phx_leave`` -> ok, then ``phx_close`` to the client, and the topic is unjoined;
- any other event on an unjoined topic -> error ``unmatched topic``;
- any other event on a joined topic -> the handler's ``handle_in``; it returns a reply or ``None``.

Refs are echoed exactly as received (string or integer). Pushes from the server carry ``ref: null``.
Frames that cannot be parsed are dropped and counted (Phoenix would close the socket; a dev portal is
more forgiving). Outgoing frames queue in :attr:`outbox`; the driver (IO or simulator) sends them.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from gateway_core.errors import DecodeError
from gateway_core.portal import phoenix
from gateway_core.portal.model import Json
from gateway_core.stats import Stats

log = logging.getLogger("devportal.phoenix")

V1 = "1.0.0"
V2 = "2.0.0"


@dataclass(frozen=True, slots=True)
class Reply:
    """A ``phx_reply`` payload: ``{"status": "ok"|"error", "response": ...}``."""

    ok: bool
    response: Json

    @staticmethod
    def success(response: Json = None) -> Reply:
        return Reply(True, {} if response is None else response)

    @staticmethod
    def error(reason: str) -> Reply:
        return Reply(False, {"reason": reason})

    def payload(self) -> Json:
        return {"status": "ok" if self.ok else "error", "response": self.response}


class ChannelHandler(Protocol):
    """What the application behind a socket decides."""

    def join(self, sock: PhoenixSocket, topic: str, payload: Json) -> Reply: ...

    def joined(self, sock: PhoenixSocket, topic: str) -> None:
        """After the ok reply to a join was queued (e.g. push ``init``)."""
        ...

    def handle_in(self, sock: PhoenixSocket, topic: str, event: str, payload: Json) -> Reply | None: ...


class PhoenixSocket:
    """One client socket; see the module docstring."""

    def __init__(self, handler: ChannelHandler, vsn: str | None = None, ident: str = "") -> None:
        self.handler = handler
        self.vsn = V2 if (vsn or V1).startswith("2.") else V1
        self.ident = ident
        self.joins: dict[str, Json] = {}
        """Joined topics -> the join_ref (V2) or the join's ref (V1)."""
        self.outbox: deque[str] = deque()
        self.stats = Stats()
        self.closed = False

    def poll_frame(self) -> str | None:
        return self.outbox.popleft() if self.outbox else None

    # --------------------------------------------------------------- encoding

    def _encode(self, join_ref: Json, ref: Json, topic: str, event: str, payload: Json) -> str:
        if self.vsn == V2:
            return json.dumps([join_ref, ref, topic, event, payload], separators=(",", ":"))
        return phoenix.encode_server_frame(topic, event, payload, ref)

    def _decode(self, text: str) -> tuple[Json, Json, str, str, Json]:
        if self.vsn == V1:
            frame, ref = phoenix.decode_client_frame(text)
            return None, ref, frame.topic, frame.event, frame.payload
        value = phoenix.parse_json(text)
        if not isinstance(value, list) or len(value) != 5:
            raise DecodeError("V2 frame is not a 5-element array")
        join_ref, ref, topic, event, payload = value
        if not isinstance(topic, str) or not isinstance(event, str):
            raise DecodeError("V2 frame: topic and event must be strings")
        return join_ref, ref, topic, event, payload

    # --------------------------------------------------------------- API

    def push(self, topic: str, event: str, payload: Json) -> bool:
        """Queue a server push on a joined topic; ``False`` if the topic is not joined."""
        if topic not in self.joins or self.closed:
            return False
        self.outbox.append(self._encode(self.joins[topic], None, topic, event, payload))
        self.stats.incr("pushes")
        return True

    def close_topic(self, topic: str, event: str = phoenix.PHX_CLOSE) -> None:
        """Stop a channel from the server side (``phx_close``; ``phx_error`` for a crash)."""
        if topic in self.joins:
            jr = self.joins.pop(topic)
            self.outbox.append(self._encode(jr, jr, topic, event, {}))

    def handle_text(self, text: str) -> None:
        """One frame from the client."""
        self.stats.incr("frames_in")
        try:
            join_ref, ref, topic, event, payload = self._decode(text)
        except DecodeError as e:
            log.warning("%s: dropping frame: %s", self.ident or "socket", e)
            self.stats.incr("frames_dropped")
            return
        if topic == phoenix.PHOENIX_TOPIC and event == phoenix.HEARTBEAT:
            self.stats.incr("heartbeats")
            self._reply(None, ref, topic, Reply.success())
            return
        if event == phoenix.PHX_JOIN:
            reply = self.handler.join(self, topic, payload)
            if reply.ok:
                self.joins[topic] = join_ref if self.vsn == V2 else ref
                self._reply(join_ref, ref, topic, reply)
                self.stats.incr("joins")
                self.handler.joined(self, topic)
            else:
                self._reply(join_ref, ref, topic, reply)
            return
        if topic not in self.joins:
            self._reply(join_ref, ref, topic, Reply.error("unmatched topic"))
            return
        if event == phoenix.PHX_LEAVE:
            self._reply(join_ref, ref, topic, Reply.success())
            self.close_topic(topic)
            return
        answer = self.handler.handle_in(self, topic, event, payload)
        if answer is not None:
            self._reply(join_ref, ref, topic, answer)

    def _reply(self, join_ref: Json, ref: Json, topic: str, reply: Reply) -> None:
        self.outbox.append(self._encode(join_ref, ref, topic, phoenix.PHX_REPLY, reply.payload()))
