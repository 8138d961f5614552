"""TURN (RFC 8656) messages on top of the STUN codec, ChannelData framing and datagram classification.

- Request builders (:func:`allocate`, :func:`refresh`, :func:`create_permission`, :func:`channel_bind`)
  and indications (:func:`send_indication`, :func:`data_indication`, :func:`parse_data_indication`).
- ChannelData (RFC 8656 §12.4): a 4-byte header (channel number, length) then the payload. Over UDP no
  padding is needed; :func:`decode_channel_data` is strict by default (the length must cover the rest of
  the datagram exactly, as snownet requires) and lenient on request (padding tolerated, as relays do).
- :func:`classify`: the first-byte rule of snownet's ``Node::decapsulate`` (0x00-0x03 STUN, 0x40-0x4F
  ChannelData, else WireGuard or unknown; ``rust/connlib/snownet/src/node.rs``). It only looks at bytes;
  the caller still has to decode.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError
from gateway_core.wire.stun import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    PROTO_UDP,
    Attr,
    Class,
    Method,
    StunMessage,
    encode_family,
)

CHANNEL_MIN = 0x4000
"""RFC 8656 §12: first valid channel number."""
CHANNEL_MAX = 0x4FFF
"""RFC 8656 §12: last valid channel number (4096 channels; snownet's range too)."""
CHANNEL_DATA_RX_MAX = 0x7FFF
"""snownet accepts 0x4000-0x7FFF on receipt (the RFC 7983 demultiplexing range); we do too."""
CHANNEL_HEADER_LEN = 4

CHANNEL_HEADER = struct.Struct("!HH")
_UNPACK_HEADER = CHANNEL_HEADER.unpack_from
_CH_NUM = struct.Struct("!HH")


class Kind(IntEnum):
    """What a datagram looks like by its first bytes (as snownet's ``Node::decapsulate``)."""

    STUN = 1
    CHANNEL_DATA = 2
    WIREGUARD = 3
    UNKNOWN = 4


def classify(data: bytes) -> Kind:
    """Classify by the first byte; WireGuard additionally needs bytes 1-3 zero and type 1-4."""
    if not data:
        return Kind.UNKNOWN
    b0 = data[0]
    if b0 < 4:
        if 1 <= b0 <= 4 and len(data) >= 4 and data[1] == 0 and data[2] == 0 and data[3] == 0:
            # ``01 00 00 00``..``03 00 00 00`` are WireGuard handshakes; a STUN message never has a zero
            # type low byte *and* zero length together with a 20+ byte size, the caller tries STUN first.
            return Kind.STUN if len(data) >= 20 and data[4:8] == b"\x21\x12\xa4\x42" else Kind.WIREGUARD
        return Kind.STUN
    if 0x40 <= b0 <= 0x4F:
        return Kind.CHANNEL_DATA
    if b0 == 4 and len(data) >= 4 and data[1] == 0 and data[2] == 0 and data[3] == 0:
        return Kind.WIREGUARD
    return Kind.UNKNOWN


# --- ChannelData --------------------------------------------------------------------------------------------


def encode_channel_data(channel: int, payload: bytes) -> bytes:
    """ChannelData header + payload, no padding (UDP)."""
    if not CHANNEL_MIN <= channel <= CHANNEL_DATA_RX_MAX:
        raise ValueError(f"channel 0x{channel:04x} out of range")
    if len(payload) > 0xFFFF:
        raise ValueError("payload too long for ChannelData")
    return CHANNEL_HEADER.pack(channel, len(payload)) + payload


def decode_channel_data(data: bytes, *, exact: bool = True) -> tuple[int, bytes]:
    """``(channel, payload)``; :class:`DecodeError` if malformed.

    ``exact``: the length field must equal the remaining size (snownet's
    ``rust/connlib/snownet/src/channel_data.rs``); otherwise it may be
    shorter (padding or trailing bytes tolerated, as the Firezone relay and RFC 8656 §12.5 over UDP).
    """
    n = len(data)
    if n < CHANNEL_HEADER_LEN:
        raise DecodeError("ChannelData shorter than its header")
    channel, length = _UNPACK_HEADER(data)
    if not CHANNEL_MIN <= channel <= CHANNEL_DATA_RX_MAX:
        raise DecodeError("ChannelData channel number out of range")
    rest = n - CHANNEL_HEADER_LEN
    if length == rest:  # the common case: one slice, no further checks
        return channel, bytes(data[CHANNEL_HEADER_LEN:])
    if length > rest or exact:
        raise DecodeError("ChannelData length mismatch")
    return channel, bytes(data[CHANNEL_HEADER_LEN : CHANNEL_HEADER_LEN + length])


# --- attribute values ---------------------------------------------------------------------------------------


def encode_channel_number(channel: int) -> bytes:
    """CHANNEL-NUMBER value: 16-bit number and 16 reserved bits."""
    return _CH_NUM.pack(channel, 0)


def encode_requested_transport(proto: int = PROTO_UDP) -> bytes:
    """REQUESTED-TRANSPORT value: protocol byte and 3 reserved bytes."""
    return bytes((proto, 0, 0, 0))


def family_of(addr: SocketAddr) -> int:
    return FAMILY_IPV4 if addr.ip.version == 4 else FAMILY_IPV6


# --- requests -----------------------------------------------------------------------------------------------


def allocate(
    tid: bytes,
    *,
    software: str | None = None,
    requested_family: int | None = None,
    additional_family: int | None = None,
    lifetime: int | None = None,
    draft_codepoint: bool = False,
) -> StunMessage:
    """An unauthenticated ALLOCATE request for a UDP relay (RFC 8656 §7.1). ``draft_codepoint``: carry
    ``additional_family`` at the TURN-bis draft codepoint too (coturn before 4.8.0 reads only that one; each
    server ignores the codepoint it does not know, as both are comprehension-optional)."""
    m = StunMessage(Method.ALLOCATE, Class.REQUEST, tid)
    m.add(Attr.REQUESTED_TRANSPORT, encode_requested_transport())
    if requested_family is not None:
        m.add(Attr.REQUESTED_ADDRESS_FAMILY, encode_family(requested_family))
    if additional_family is not None:
        m.add(Attr.ADDITIONAL_ADDRESS_FAMILY, encode_family(additional_family))
        if draft_codepoint:
            m.add(Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT, encode_family(additional_family))
    if lifetime is not None:
        m.add_u32(Attr.LIFETIME, lifetime)
    if software is not None:
        m.add_text(Attr.SOFTWARE, software)
    return m


def relayed_addresses(msg: StunMessage) -> tuple[SocketAddr | None, SocketAddr | None]:
    """The IPv4 and IPv6 XOR-RELAYED-ADDRESS of an ALLOCATE success (the first of each family). coturn
    reports a family it could not allocate as ``0.0.0.0:0`` / ``[::]:0`` (with ADDRESS-ERROR-CODE): no
    address."""
    got = [a for a in msg.addresses(Attr.XOR_RELAYED_ADDRESS) if a.port and not a.ip.is_unspecified]
    v4 = next((a for a in got if a.ip.version == 4), None)
    return v4, next((a for a in got if a.ip.version == 6), None)


def refresh(tid: bytes, *, software: str | None = None, lifetime: int | None = None) -> StunMessage:
    """A REFRESH request; ``lifetime=0`` deletes the allocation (RFC 8656 §7.2)."""
    m = StunMessage(Method.REFRESH, Class.REQUEST, tid)
    if lifetime is not None:
        m.add_u32(Attr.LIFETIME, lifetime)
    if software is not None:
        m.add_text(Attr.SOFTWARE, software)
    return m


def create_permission(tid: bytes, peers: list[SocketAddr], *, software: str | None = None) -> StunMessage:
    """CREATE-PERMISSION for the IPs of ``peers`` (ports are ignored by the server, RFC 8656 §9)."""
    m = StunMessage(Method.CREATE_PERMISSION, Class.REQUEST, tid)
    for p in peers:
        m.add_xor_address(Attr.XOR_PEER_ADDRESS, p)
    if software is not None:
        m.add_text(Attr.SOFTWARE, software)
    return m


def channel_bind(tid: bytes, peer: SocketAddr, channel: int, *, software: str | None = None) -> StunMessage:
    """CHANNEL-BIND of ``channel`` to ``peer`` (RFC 8656 §11)."""
    m = StunMessage(Method.CHANNEL_BIND, Class.REQUEST, tid)
    m.add_xor_address(Attr.XOR_PEER_ADDRESS, peer)
    m.add(Attr.CHANNEL_NUMBER, encode_channel_number(channel))
    if software is not None:
        m.add_text(Attr.SOFTWARE, software)
    return m


def send_indication(tid: bytes, peer: SocketAddr, data: bytes) -> StunMessage:
    """A Send indication carrying ``data`` to ``peer`` (RFC 8656 §10.1)."""
    m = StunMessage(Method.SEND, Class.INDICATION, tid)
    m.add_xor_address(Attr.XOR_PEER_ADDRESS, peer)
    m.add(Attr.DATA, data)
    return m


def data_indication(tid: bytes, peer: SocketAddr, data: bytes) -> StunMessage:
    """A Data indication from ``peer`` (what a server sends; used by tests and the simulator)."""
    m = StunMessage(Method.DATA, Class.INDICATION, tid)
    m.add_xor_address(Attr.XOR_PEER_ADDRESS, peer)
    m.add(Attr.DATA, data)
    return m


def parse_data_indication(msg: StunMessage) -> tuple[SocketAddr, bytes]:
    """``(peer, data)`` of a Data (or Send) indication; :class:`DecodeError` if not one."""
    if msg.cls != Class.INDICATION or msg.method not in (Method.DATA, Method.SEND):
        raise DecodeError("not a Data/Send indication")
    peer = msg.address(Attr.XOR_PEER_ADDRESS)
    data = msg.get(Attr.DATA)
    if peer is None or data is None:
        raise DecodeError("Data indication without XOR-PEER-ADDRESS or DATA")
    return peer, data
