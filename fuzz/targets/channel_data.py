"""ChannelData (``gateway_core/wire/turn.py``): ``decode_channel_data`` returns or raises ``DecodeError``
in both modes; the exact mode accepts a subset of the lax one with the same result; encoding what was
decoded gives the frame back (exact) or its prefix (lax, padding and trailing bytes dropped).
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.wire import turn


def test_one_input(data: bytes) -> None:
    try:
        lax = turn.decode_channel_data(data, exact=False)
    except DecodeError:
        lax = None
    try:
        exact = turn.decode_channel_data(data)
    except DecodeError:
        exact = None
    if exact is not None:
        assert lax == exact
        assert turn.encode_channel_data(*exact) == data
    if lax is not None:
        frame = turn.encode_channel_data(*lax)
        assert data.startswith(frame)
        assert turn.decode_channel_data(frame) == lax
