"""STUN and TURN codecs (RFC 8489, RFC 8656) and ChannelData framing; see :mod:`gateway_core.stun.codec`."""

from gateway_core.stun.codec import Attr, Class, Method, StunMessage, decode, long_term_key
from gateway_core.stun.turn import Kind, classify, decode_channel_data, encode_channel_data

__all__ = [
    "Attr",
    "Class",
    "Kind",
    "Method",
    "StunMessage",
    "classify",
    "decode",
    "decode_channel_data",
    "encode_channel_data",
    "long_term_key",
]
