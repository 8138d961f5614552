"""TURN on the wire (``gateway_core/wire/turn.py``): ``classify`` never raises and agrees with the
decoders (a STUN message ``decode`` accepts whose first byte is 0-3 is classified as STUN, a valid
ChannelData frame on a channel of RFC 8656's range is never classified otherwise);
``parse_data_indication`` on any decoded message returns or raises ``DecodeError``; a Data indication
rebuilt from what it carried parses back to the same peer and data.
"""

from __future__ import annotations

from gateway_core.errors import DecodeError
from gateway_core.wire import stun, turn
from gateway_core.wire.turn import Kind


def test_one_input(data: bytes) -> None:
    kind = turn.classify(data)
    try:
        msg = stun.decode(data)
    except DecodeError:
        msg = None
    try:
        channel, _ = turn.decode_channel_data(data, exact=False)
        # Channels 0x5000-0x7FFF decode (snownet's channel_data.rs accepts them) but the first-byte rule
        # (node.rs: 64..=79) sends them nowhere, exactly as in Firezone.
        is_channel = channel <= turn.CHANNEL_MAX
    except DecodeError:
        is_channel = False
    if msg is not None:
        # decode takes any 14-bit message type; the demultiplexing rule (RFC 7983, node.rs) only 0x00-0x03.
        assert kind is Kind.STUN or data[0] >= 4, f"a decodable STUN message classified as {kind!r}"
        try:
            peer, payload = turn.parse_data_indication(msg)
        except DecodeError:
            return
        rebuilt = stun.decode(turn.data_indication(msg.transaction_id, peer, payload).encode())
        assert turn.parse_data_indication(rebuilt) == (peer, payload)
    if is_channel:
        assert kind is Kind.CHANNEL_DATA, f"a ChannelData frame classified as {kind!r}"
