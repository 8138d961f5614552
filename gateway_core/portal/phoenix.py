"""Phoenix Channels V1 JSON framing, both sides (Firezone: ``rust/connlib/phoenix-channel/src/lib.rs``).

One JSON object per WebSocket text frame: ``{"topic", "event", "payload", "ref"}``. The gateway sends
them in that key order, always with ``payload`` and an integer ``ref``. On receipt ``ref`` may be an
integer (a reply to one of ours), ``null`` or absent (a portal push); any other type makes the frame
undecodable. Extra keys (``join_ref``) are ignored.

:func:`decode_frame` raises :class:`TruncatedFrame` for text that ends in the middle of a JSON value
(empty, cut short): Firezone treats that as a broken connection and reconnects. Every other problem is a
plain :class:`DecodeError`: the frame is dropped and the connection kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from gateway_core.errors import DecodeError
from gateway_core.portal.model import U64_MAX, Json

PHX_JOIN = "phx_join"
PHX_REPLY = "phx_reply"
PHX_ERROR = "phx_error"
PHX_CLOSE = "phx_close"
PHX_LEAVE = "phx_leave"
HEARTBEAT = "heartbeat"
DISCONNECT = "disconnect"
PHOENIX_TOPIC = "phoenix"
"""Topic of heartbeats (``lib.rs:650``)."""

MAX_DEPTH = 64
"""Nesting bound for decoded payloads: deeper JSON is refused before Python's recursion limit bites.
No portal message nests deeper than about 6 levels."""


class TruncatedFrame(DecodeError):
    """The text ends inside a JSON value (Firezone: 'unexpected end of input' -> reconnect)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One Phoenix message. ``ref`` is ``None`` for portal pushes."""

    topic: str
    event: str
    payload: Json
    ref: int | None

    def encode(self) -> str:
        return encode_frame(self.topic, self.event, self.payload, self.ref)


def encode_frame(topic: str, event: str, payload: Json, ref: int | None) -> str:
    """The compact JSON text of a frame, keys in Firezone's order ``topic, event, payload, ref``."""
    return json.dumps(
        {"topic": topic, "event": event, "payload": payload, "ref": ref},
        separators=(",", ":"),
        ensure_ascii=True,  # escapes keep any text (even lone surrogates) sendable as UTF-8
        allow_nan=False,
    )


def _depth_ok(value: Json, limit: int) -> bool:
    stack: list[tuple[Json, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def _reject_constant(name: str) -> Json:
    raise DecodeError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e999 is valid JSON syntax but no finite number: serde_json refuses it ("number out of range"),
        # and a decoded infinity could not be encoded again (json.dumps(allow_nan=False) raises).
        raise DecodeError(f"number out of range: {text[:20]}")
    return value


def parse_json(text: str) -> Json:
    """Strict JSON (no NaN/Infinity, no number beyond a double's range); :class:`TruncatedFrame` when the
    text ends too early."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip(" \t\r\n")) or e.msg.startswith("Unterminated string"):
            raise TruncatedFrame(f"unexpected end of input: {e.msg}") from None
        raise DecodeError(f"invalid JSON: {e.msg} at {e.pos}") from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer with too many digits
        raise DecodeError(f"invalid JSON: {e}") from None


def decode_frame(text: str) -> Frame:
    """Parse one received text frame (see the module docstring for the error classes)."""
    value = parse_json(text)
    if not isinstance(value, dict):
        raise DecodeError("frame is not a JSON object")
    topic = value.get("topic")
    event = value.get("event")
    if not isinstance(topic, str):
        raise DecodeError("frame: topic missing or not a string")
    if not isinstance(event, str):
        raise DecodeError("frame: event missing or not a string")
    ref = value.get("ref")
    if ref is not None and (not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref <= U64_MAX):
        raise DecodeError("frame: ref is not an unsigned integer or null")
    # No depth walk here: json.loads refuses what would exhaust the stack (RecursionError -> DecodeError)
    # and the typed decoders never recurse into a payload beyond its schema.
    return Frame(topic, event, value.get("payload"), ref)


def decode_client_frame(text: str) -> tuple[Frame, Json]:
    """Server side: parse a frame from any Phoenix client (V1 objects, string or integer refs).

    Returns the frame (``ref`` normalised to ``None``; the raw ``ref`` as second element, echoed verbatim
    in replies, as Phoenix does). Used by the stub and dev portals, which also serve the JavaScript client.
    """
    value = parse_json(text)
    if not isinstance(value, dict):
        raise DecodeError("frame is not a JSON object")
    for key in ("topic", "event", "payload", "ref"):
        # Phoenix's V1 decoder needs all four keys (Phoenix 1.8.1 lib/phoenix/socket/message.ex).
        if key not in value:
            raise DecodeError(f"frame: missing {key!r}")
    topic, event, raw_ref = value["topic"], value["event"], value["ref"]
    if not isinstance(topic, str) or not isinstance(event, str):
        raise DecodeError("frame: topic and event must be strings")
    if raw_ref is not None and (isinstance(raw_ref, bool) or not isinstance(raw_ref, int | str)):
        raise DecodeError("frame: ref must be a string, an integer or null")
    if not _depth_ok(value["payload"], MAX_DEPTH):
        raise DecodeError("frame: payload nested too deeply")
    return Frame(topic, event, value["payload"], None), raw_ref


def encode_server_frame(topic: str, event: str, payload: Json, ref: Json) -> str:
    """Server side: a V1 frame whose ``ref`` is echoed verbatim (string, integer or null)."""
    return json.dumps(
        {"topic": topic, "event": event, "payload": payload, "ref": ref},
        separators=(",", ":"),
        ensure_ascii=True,  # escapes keep any text (even lone surrogates) sendable as UTF-8
        allow_nan=False,
    )
