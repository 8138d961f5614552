"""Phoenix frames (``gateway_core/portal/phoenix.py``): on any UTF-8 text (what a WebSocket text frame
carries) ``decode_frame``, ``decode_client_frame`` and ``parse_json`` return or raise ``DecodeError``
(``TruncatedFrame`` included); a decoded frame encodes (the gateway re-encodes what it decoded when it
logs or replies) and decodes back to an equal frame, on both sides.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.portal import phoenix


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # a WebSocket text frame is valid UTF-8 (the websockets library checks it)
    try:
        phoenix.parse_json(text)
    except DecodeError:
        pass
    try:
        frame = phoenix.decode_frame(text)
    except DecodeError:
        pass
    else:
        assert phoenix.decode_frame(frame.encode()) == frame
    try:
        client_frame, raw_ref = phoenix.decode_client_frame(text)
    except DecodeError:
        return
    again = phoenix.encode_server_frame(client_frame.topic, client_frame.event, client_frame.payload, raw_ref)
    assert phoenix.decode_client_frame(again) == (client_frame, raw_ref)
