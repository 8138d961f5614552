"""The portal's payloads (``gateway_core/portal/inbound.py``, ``outbound.py``, ``model.py``): every
message class's ``decode`` raises only ``DecodeError`` on any JSON value (called directly, not through
``decode_inbound``'s safety net, which would turn a ``TypeError`` into a drop and hide the bug), and
``decode(encode(m)) == m`` for every message it accepts.

Input: an event name, a newline, then the payload as JSON text (seeds are real payloads from the tests'
builders and the dev portal); an unknown event name fuzzes every decoder with the payload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway_core.errors import DecodeError
from gateway_core.portal import messages as m
from gateway_core.portal.model import Json
from gateway_core.portal.phoenix import parse_json

DECODERS: dict[str, Callable[[Json], Any]] = {
    c.EVENT: c.decode
    for c in (
        m.Init,
        m.AuthorizeFlow,
        m.RequestConnection,
        m.AllowAccess,
        m.RejectAccess,
        m.ResourceUpdated,
        m.AccessAuthorizationExpiryUpdated,
        m.RelaysPresence,
        m.IceCandidates,
        m.InvalidateIceCandidates,
        m.FlowAuthorized,
        m.ConnectionReady,
        m.BroadcastIceCandidates,
        m.BroadcastInvalidatedIceCandidates,
    )
}


def _check(decode: Callable[[Json], Any], payload: Json) -> None:
    try:
        msg = decode(payload)
    except DecodeError:
        return
    assert decode(msg.encode()) == msg, "decode(encode(m)) != m"


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    event, _, body = text.partition("\n")
    try:
        payload = parse_json(body)
    except DecodeError:
        return
    decode = DECODERS.get(event)
    if decode is not None:
        _check(decode, payload)
    else:
        for decode in DECODERS.values():
            _check(decode, payload)
    try:
        m.decode_inbound(event, payload)
    except DecodeError:
        pass
