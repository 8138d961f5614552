"""Bugs the fuzz targets (``fuzz/``) found, each pinned on the component that had it; the crashing
inputs themselves are in ``fuzz/corpus/<target>/crash-*`` and replayed by ``tests/fuzz/test_fuzz.py``."""

from __future__ import annotations

import pytest

from gateway_core.errors import DecodeError
from gateway_core.portal import phoenix


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1.5e400"])
def test_phoenix_refuses_numbers_beyond_a_double(number: str) -> None:
    # Found by the phoenix target's round trip: 1e999 decoded as an infinity that encode_frame cannot
    # write back (ValueError from json.dumps); serde_json refuses such a number, and so do we now.
    text = '{"topic":"gateway","event":"x","payload":' + number + ',"ref":null}'
    with pytest.raises(DecodeError):
        phoenix.decode_frame(text)
    with pytest.raises(DecodeError):
        phoenix.decode_client_frame(text)


def test_phoenix_keeps_ordinary_floats() -> None:
    frame = phoenix.decode_frame('{"topic":"t","event":"e","payload":{"x":1.5e300,"y":-0.25},"ref":1}')
    assert frame.payload == {"x": 1.5e300, "y": -0.25}
    assert phoenix.decode_frame(frame.encode()) == frame
