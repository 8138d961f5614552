"""STUN message codec (RFC 8489) with the TURN (RFC 8656) and ICE (RFC 8445) attributes.

A :class:`StunMessage` is a method, a class, a 96-bit transaction id and an ordered list of raw
attributes ``(type, value)``. :func:`decode` parses a datagram strictly ("parse or :class:`DecodeError`"):

- the header: top two bits zero, magic cookie, length a multiple of 4 and equal to the bytes that follow
  (no trailing bytes, no truncation);
- every attribute TLV with its 4-byte padding;
- every *known* attribute's value (fixed lengths, address families, UTF-8 strings within RFC limits,
  ERROR-CODE classes), so that the typed accessors of a decoded message never fail;
- attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are ignored
  (RFC 8489 §14.5), anything after FINGERPRINT too; their TLV structure is still checked.

The decoded message remembers its raw bytes and where MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT start,
so :meth:`StunMessage.verify_integrity` and :meth:`StunMessage.verify_fingerprint` recompute over exactly
the bytes the sender signed. :meth:`StunMessage.encode` writes the attributes in order and can append
MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.

Keys: short-term credentials use the password's UTF-8 bytes (ICE); long-term credentials use
:func:`long_term_key` = MD5(``username:realm:password``), without SASLprep (Firezone's passwords are
base64 and coturn's REST passwords too).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError

MAGIC_COOKIE = 0x2112A442
"""RFC 8489 §5: fixed value in bytes 4-7 of every message."""
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
HEADER_LEN = 20
"""Type (2), length (2), cookie (4), transaction id (12)."""
FINGERPRINT_XOR = 0x5354554E
"""RFC 8489 §14.7: CRC-32 is XORed with ``"STUN"``."""
MAX_USERNAME = 513
"""RFC 8489 §14.3: USERNAME is less than 513 bytes."""
MAX_TEXT = 763
"""RFC 8489 §14.8-14.10: REALM, NONCE, SOFTWARE and the reason phrase are less than 763 bytes."""

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!BBH")


class Class(IntEnum):
    """The two class bits of the message type."""

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Method(IntEnum):
    """STUN/TURN methods this project uses (others decode as plain ints)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16.1)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    ADDITIONAL_ADDRESS_FAMILY_DRAFT = 0x8032
    """ADDITIONAL-ADDRESS-FAMILY at the codepoint of the TURN-bis drafts, which coturn before 4.8.0 (e.g.
    Debian's 4.6.1) reads instead of RFC 8656's 0x8000 (coturn's ``ns_turn_msg_defs_experimental.h``)."""


FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
PROTO_UDP = 17
"""REQUESTED-TRANSPORT value for UDP (the IP protocol number)."""

_FIXED_LEN: dict[int, int] = {
    Attr.MESSAGE_INTEGRITY: 20,
    Attr.CHANNEL_NUMBER: 4,
    Attr.LIFETIME: 4,
    Attr.REQUESTED_ADDRESS_FAMILY: 4,
    Attr.EVEN_PORT: 1,
    Attr.REQUESTED_TRANSPORT: 4,
    Attr.DONT_FRAGMENT: 0,
    Attr.RESERVATION_TOKEN: 8,
    Attr.PRIORITY: 4,
    Attr.USE_CANDIDATE: 0,
    Attr.ADDITIONAL_ADDRESS_FAMILY: 4,
    Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT: 4,
    Attr.FINGERPRINT: 4,
    Attr.ICE_CONTROLLED: 8,
    Attr.ICE_CONTROLLING: 8,
}
_FAMILY_ATTRS = frozenset(
    {Attr.REQUESTED_ADDRESS_FAMILY, Attr.ADDITIONAL_ADDRESS_FAMILY, Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT}
)
_ADDRESS_ATTRS = frozenset(
    {Attr.MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS, Attr.XOR_MAPPED_ADDRESS}
)
_XOR_ATTRS = frozenset({Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS, Attr.XOR_MAPPED_ADDRESS})
_TEXT_LIMITS: dict[int, int] = {
    Attr.USERNAME: MAX_USERNAME,
    Attr.REALM: MAX_TEXT,
    Attr.NONCE: MAX_TEXT,
    Attr.SOFTWARE: MAX_TEXT,
}


def message_type(method: int, cls: Class) -> int:
    """Interleave the 12 method bits and the 2 class bits into the 14-bit type (RFC 8489 §5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def split_type(t: int) -> tuple[int, Class]:
    """Inverse of :func:`message_type`."""
    method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80)
    return method, Class(((t >> 4) & 1) | ((t >> 7) & 2))


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 §9.2.2 key for MESSAGE-INTEGRITY: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


# --- attribute value codecs -------------------------------------------------------------------------------


def encode_address(addr: SocketAddr, tid: bytes | None) -> bytes:
    """(XOR-)MAPPED-ADDRESS style value; ``tid`` given means XOR-encoded."""
    packed = addr.ip.packed
    port = addr.port
    if tid is not None:
        port ^= MAGIC_COOKIE >> 16
        pad = MAGIC_COOKIE_BYTES + tid
        packed = bytes(a ^ b for a, b in zip(packed, pad, strict=False))
    family = FAMILY_IPV4 if len(packed) == 4 else FAMILY_IPV6
    return _ADDR_HEAD.pack(0, family, port) + packed


def decode_address(value: bytes, tid: bytes | None) -> SocketAddr:
    """Inverse of :func:`encode_address`; :class:`DecodeError` on a bad family or length."""
    if len(value) < 4:
        raise DecodeError("address attribute too short")
    _, family, port = _ADDR_HEAD.unpack_from(value)
    raw = value[4:]
    if family == FAMILY_IPV4:
        if len(raw) != 4:
            raise DecodeError("IPv4 address attribute of wrong length")
    elif family == FAMILY_IPV6:
        if len(raw) != 16:
            raise DecodeError("IPv6 address attribute of wrong length")
    else:
        raise DecodeError(f"address family {family}")
    if tid is not None:
        port ^= MAGIC_COOKIE >> 16
        pad = MAGIC_COOKIE_BYTES + tid
        raw = bytes(a ^ b for a, b in zip(raw, pad, strict=False))
    ip: IPv4Address | IPv6Address = IPv4Address(raw) if family == FAMILY_IPV4 else IPv6Address(raw)
    return SocketAddr(ip, port)


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE value: 21 reserved bits, class (3 bits), number (0-99), UTF-8 reason."""
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} out of range")
    return bytes((0, 0, code // 100, code % 100)) + reason.encode()


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise DecodeError("ERROR-CODE too short")
    cls, number = value[2] & 0x07, value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise DecodeError("ERROR-CODE out of range")
    reason = value[4:]
    if len(reason) >= MAX_TEXT:
        raise DecodeError("reason phrase too long")
    try:
        text = reason.decode()
    except UnicodeDecodeError as e:
        raise DecodeError("reason phrase not UTF-8") from e
    return cls * 100 + number, text


def encode_family(family: int) -> bytes:
    """REQUESTED-/ADDITIONAL-ADDRESS-FAMILY value: family byte and 3 reserved bytes."""
    return bytes((family, 0, 0, 0))


def _check_value(attr: int, value: bytes) -> None:
    """Validate a known attribute's value; unknown attributes pass."""
    n = len(value)
    want = _FIXED_LEN.get(attr)
    if want is not None:
        if n != want:
            raise DecodeError(f"attribute 0x{attr:04x} has length {n}, want {want}")
        if attr in _FAMILY_ATTRS and value[0] not in (
            FAMILY_IPV4,
            FAMILY_IPV6,
        ):
            raise DecodeError("address family")
        return
    if attr in _ADDRESS_ATTRS:
        decode_address(value, None)
    elif attr in _TEXT_LIMITS:
        if n >= _TEXT_LIMITS[attr]:
            raise DecodeError(f"attribute 0x{attr:04x} too long")
        try:
            value.decode()
        except UnicodeDecodeError as e:
            raise DecodeError(f"attribute 0x{attr:04x} not UTF-8") from e
    elif attr == Attr.ERROR_CODE:
        decode_error_code(value)
    elif attr == Attr.MESSAGE_INTEGRITY_SHA256:
        if n < 16 or n > 32 or n % 4:
            raise DecodeError("MESSAGE-INTEGRITY-SHA256 length")
    elif attr == Attr.UNKNOWN_ATTRIBUTES:
        if n % 2:
            raise DecodeError("UNKNOWN-ATTRIBUTES length")
    elif attr == Attr.ADDRESS_ERROR_CODE:
        if n < 4 or value[0] not in (FAMILY_IPV4, FAMILY_IPV6):
            raise DecodeError("ADDRESS-ERROR-CODE")
        decode_error_code(bytes(2) + value[2:])


# --- the message ------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class StunMessage:
    """A STUN message (see the module docstring): build with ``add_*``, send with :meth:`encode`."""

    method: int
    cls: Class
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)
    raw: bytes = b""
    """The datagram this message was decoded from (empty for a message built locally)."""
    integrity_at: int | None = None
    """Offset in :attr:`raw` of the MESSAGE-INTEGRITY attribute header."""
    integrity_sha256_at: int | None = None
    fingerprint_at: int | None = None

    # -- building --

    def add(self, attr: int, value: bytes) -> StunMessage:
        self.attributes.append((attr, value))
        return self

    def add_xor_address(self, attr: int, addr: SocketAddr) -> StunMessage:
        return self.add(attr, encode_address(addr, self.transaction_id))

    def add_text(self, attr: int, text: str) -> StunMessage:
        return self.add(attr, text.encode())

    def add_u32(self, attr: int, v: int) -> StunMessage:
        return self.add(attr, _U32.pack(v))

    def add_u64(self, attr: int, v: int) -> StunMessage:
        return self.add(attr, _U64.pack(v))

    def add_error(self, code: int, reason: str) -> StunMessage:
        return self.add(Attr.ERROR_CODE, encode_error_code(code, reason))

    def with_transaction_id(self, tid: bytes) -> StunMessage:
        """A copy under another transaction id; XOR-encoded addresses are re-encoded for it (IPv6 XORs
        with the transaction id, so copying their bytes would change the address)."""
        old = self.transaction_id
        attrs = [
            (t, encode_address(decode_address(v, old), tid) if t in _XOR_ATTRS else v)
            for t, v in self.attributes
        ]
        return StunMessage(self.method, self.cls, tid, attrs)

    def without(self, *attrs: int) -> StunMessage:
        """A copy (new transaction id kept) without the given attribute types."""
        keep = [(t, v) for t, v in self.attributes if t not in attrs]
        return StunMessage(self.method, self.cls, self.transaction_id, keep)

    # -- reading --

    def get(self, attr: int) -> bytes | None:
        """The value of the first attribute of this type, or ``None``."""
        for t, v in self.attributes:
            if t == attr:
                return v
        return None

    def get_all(self, attr: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr]

    def has(self, attr: int) -> bool:
        return any(t == attr for t, _ in self.attributes)

    def text(self, attr: int) -> str | None:
        v = self.get(attr)
        if v is None:
            return None
        try:
            return v.decode()
        except UnicodeDecodeError as e:
            raise DecodeError("not UTF-8") from e

    def u32(self, attr: int) -> int | None:
        v = self.get(attr)
        if v is None:
            return None
        if len(v) != 4:
            raise DecodeError("not a 32-bit attribute")
        return int(_U32.unpack(v)[0])

    def u64(self, attr: int) -> int | None:
        v = self.get(attr)
        if v is None:
            return None
        if len(v) != 8:
            raise DecodeError("not a 64-bit attribute")
        return int(_U64.unpack(v)[0])

    def address(self, attr: int) -> SocketAddr | None:
        """First address attribute of this type, XOR-decoded where the type says so."""
        v = self.get(attr)
        if v is None:
            return None
        return decode_address(v, self.transaction_id if attr in _XOR_ATTRS else None)

    def addresses(self, attr: int) -> list[SocketAddr]:
        tid = self.transaction_id if attr in _XOR_ATTRS else None
        return [decode_address(v, tid) for v in self.get_all(attr)]

    def error_code(self) -> tuple[int, str] | None:
        v = self.get(Attr.ERROR_CODE)
        return None if v is None else decode_error_code(v)

    def channel_number(self) -> int | None:
        v = self.get(Attr.CHANNEL_NUMBER)
        if v is None:
            return None
        if len(v) != 4:
            raise DecodeError("CHANNEL-NUMBER length")
        return int(_U16.unpack_from(v)[0])

    # -- encoding --

    def encode(
        self,
        integrity_key: bytes | None = None,
        *,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
    ) -> bytes:
        """Serialise; optionally append MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT."""
        if len(self.transaction_id) != 12:
            raise ValueError("transaction id must be 12 bytes")
        body = bytearray()
        for t, v in self.attributes:
            if len(v) > 0xFFFF:
                raise ValueError("attribute too long")
            body += _ATTR.pack(t, len(v))
            body += v
            body += bytes(-len(v) % 4)
        mtype = message_type(self.method, self.cls)
        if integrity_key is not None:
            head = _HEADER.pack(mtype, len(body) + 24, MAGIC_COOKIE, self.transaction_id)
            mac = hmac.new(integrity_key, head + body, "sha1").digest()
            body += _ATTR.pack(Attr.MESSAGE_INTEGRITY, 20) + mac
        if integrity_sha256_key is not None:
            head = _HEADER.pack(mtype, len(body) + 36, MAGIC_COOKIE, self.transaction_id)
            mac = hmac.new(integrity_sha256_key, head + body, "sha256").digest()
            body += _ATTR.pack(Attr.MESSAGE_INTEGRITY_SHA256, 32) + mac
        if fingerprint:
            head = _HEADER.pack(mtype, len(body) + 8, MAGIC_COOKIE, self.transaction_id)
            crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
            body += _ATTR.pack(Attr.FINGERPRINT, 4) + _U32.pack(crc)
        return _HEADER.pack(mtype, len(body), MAGIC_COOKIE, self.transaction_id) + bytes(body)

    # -- verification (decoded messages only) --

    def _signed_prefix(self, at: int, attr_len: int) -> bytes:
        raw = self.raw
        return raw[:2] + _U16.pack(at - HEADER_LEN + 4 + attr_len) + raw[4:at]

    def verify_integrity(self, key: bytes) -> bool:
        """True if MESSAGE-INTEGRITY is present and matches ``key``."""
        at = self.integrity_at
        if at is None:
            return False
        got = self.raw[at + 4 : at + 24]
        want = hmac.new(key, self._signed_prefix(at, 20), "sha1").digest()
        return hmac.compare_digest(got, want)

    def verify_integrity_sha256(self, key: bytes) -> bool:
        at = self.integrity_sha256_at
        if at is None:
            return False
        n = int(_U16.unpack_from(self.raw, at + 2)[0])
        got = self.raw[at + 4 : at + 4 + n]
        want = hmac.new(key, self._signed_prefix(at, n), "sha256").digest()[:n]
        return hmac.compare_digest(got, want)

    def verify_fingerprint(self) -> bool:
        at = self.fingerprint_at
        if at is None:
            return False
        got = int(_U32.unpack_from(self.raw, at + 4)[0])
        return got == zlib.crc32(self._signed_prefix(at, 4)) ^ FINGERPRINT_XOR


def new_transaction_id(random12: bytes) -> bytes:
    """Check and return a 12-byte transaction id (drawn by the caller from its ``Entropy``)."""
    if len(random12) != 12:
        raise ValueError("transaction id must be 12 bytes")
    return random12


def is_stun(data: bytes) -> bool:
    """Cheap pre-check (first byte 0-3, magic cookie, 4-aligned length) before a full :func:`decode`."""
    return (
        len(data) >= HEADER_LEN
        and data[0] < 4
        and data[4:8] == MAGIC_COOKIE_BYTES
        and (data[2] << 8 | data[3]) == len(data) - HEADER_LEN
    )


def decode(data: bytes) -> StunMessage:
    """Parse one STUN message occupying all of ``data``; :class:`DecodeError` on anything malformed."""
    data = bytes(data)
    if len(data) < HEADER_LEN:
        raise DecodeError("shorter than a STUN header")
    mtype, length, cookie, tid = _HEADER.unpack_from(data)
    if mtype & 0xC000:
        raise DecodeError("top bits of the message type set")
    if cookie != MAGIC_COOKIE:
        raise DecodeError("no magic cookie")
    if length % 4:
        raise DecodeError("length not a multiple of 4")
    if length != len(data) - HEADER_LEN:
        raise DecodeError("length field does not match the datagram")
    method, cls = split_type(mtype)
    msg = StunMessage(method, cls, tid, [], data)
    pos = HEADER_LEN
    end = len(data)
    sealed = False  # after MESSAGE-INTEGRITY: only MI-SHA256 and FINGERPRINT still count
    done = False  # after FINGERPRINT: nothing counts
    while pos < end:
        if end - pos < 4:
            raise DecodeError("truncated attribute header")
        attr, alen = _ATTR.unpack_from(data, pos)
        vstart = pos + 4
        vend = vstart + alen
        if vend > end:
            raise DecodeError("attribute overruns the message")
        value = data[vstart:vend]
        padded = vend + (-alen % 4)
        if padded > end:
            raise DecodeError("attribute padding overruns the message")
        if not done:
            counts = not sealed or attr in (Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)
            if counts:
                _check_value(attr, value)
                if attr == Attr.MESSAGE_INTEGRITY and msg.integrity_at is None:
                    msg.integrity_at = pos
                    sealed = True
                elif attr == Attr.MESSAGE_INTEGRITY_SHA256 and msg.integrity_sha256_at is None:
                    msg.integrity_sha256_at = pos
                    sealed = True
                elif attr == Attr.FINGERPRINT:
                    msg.fingerprint_at = pos
                    done = True
                msg.attributes.append((attr, value))
        pos = padded
    return msg
