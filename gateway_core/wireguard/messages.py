"""WireGuard message layouts (boringtun ``noise/mod.rs:81-168``).

Four messages, all integers little-endian, the first four bytes a u32 type (one type byte and three zero
bytes). Handshake messages and cookie replies have exact lengths; transport data is at least 32 bytes.
The decoders raise :class:`DecodeError` only; the hot path (transport data) uses :data:`DATA_HEADER`
directly instead of building an object.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from gateway_core.errors import DecodeError

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_COOKIE_REPLY = 3
MSG_DATA = 4

INITIATION_LEN = 148
"""Handshake Initiation: 4 type, 4 sender, 32 ephemeral, 48 static, 28 timestamp, 16 mac1, 16 mac2."""
RESPONSE_LEN = 92
"""Handshake Response: 4 type, 4 sender, 4 receiver, 32 ephemeral, 16 empty, 16 mac1, 16 mac2."""
COOKIE_REPLY_LEN = 64
"""Cookie Reply: 4 type, 4 receiver, 24 nonce, 32 encrypted cookie."""
DATA_HEADER_LEN = 16
"""Transport data header: 4 type, 4 receiver, 8 counter."""
DATA_MIN_LEN = 32
"""Smallest transport data message: header plus a Poly1305 tag (a keepalive)."""

TYPE = struct.Struct("<I")
DATA_HEADER = struct.Struct("<IIQ")
"""type, receiver_index, counter."""
_INIT = struct.Struct("<II32s48s28s16s16s")
_RESP = struct.Struct("<III32s16s16s16s")
_COOKIE = struct.Struct("<II24s32s")


class Initiation(NamedTuple):
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes


class Response(NamedTuple):
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes


class CookieReply(NamedTuple):
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


class DataHeader(NamedTuple):
    receiver: int
    counter: int


def message_type(data: bytes) -> int:
    """The message type of ``data`` if its first four bytes name one of the four messages and its length
    fits that message; else :class:`DecodeError`."""
    if len(data) < 4:
        raise DecodeError("wireguard: shorter than the type field")
    (t,) = TYPE.unpack_from(data)
    n = len(data)
    if (
        (t == MSG_DATA and n >= DATA_MIN_LEN)
        or (t == MSG_INITIATION and n == INITIATION_LEN)
        or (t == MSG_RESPONSE and n == RESPONSE_LEN)
        or (t == MSG_COOKIE_REPLY and n == COOKIE_REPLY_LEN)
    ):
        return int(t)
    raise DecodeError(f"wireguard: type {t} with length {n}")


def decode_initiation(data: bytes) -> Initiation:
    if message_type(data) != MSG_INITIATION:
        raise DecodeError("wireguard: not a handshake initiation")
    _, *fields = _INIT.unpack(data)
    return Initiation(*fields)


def decode_response(data: bytes) -> Response:
    if message_type(data) != MSG_RESPONSE:
        raise DecodeError("wireguard: not a handshake response")
    _, *fields = _RESP.unpack(data)
    return Response(*fields)


def decode_cookie_reply(data: bytes) -> CookieReply:
    if message_type(data) != MSG_COOKIE_REPLY:
        raise DecodeError("wireguard: not a cookie reply")
    _, *fields = _COOKIE.unpack(data)
    return CookieReply(*fields)


def decode_data_header(data: bytes) -> DataHeader:
    if message_type(data) != MSG_DATA:
        raise DecodeError("wireguard: not transport data")
    _, receiver, counter = DATA_HEADER.unpack_from(data)
    return DataHeader(receiver, counter)


def encode_initiation(m: Initiation) -> bytes:
    return _INIT.pack(MSG_INITIATION, *m)


def encode_response(m: Response) -> bytes:
    return _RESP.pack(MSG_RESPONSE, *m)


def encode_cookie_reply(m: CookieReply) -> bytes:
    return _COOKIE.pack(MSG_COOKIE_REPLY, *m)


def encode_data(receiver: int, counter: int, ciphertext: bytes) -> bytes:
    return DATA_HEADER.pack(MSG_DATA, receiver, counter) + ciphertext
