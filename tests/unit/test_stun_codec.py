"""STUN codec: RFC 5769 vectors, parse-or-DecodeError (whole, truncated, trailing), round trips, aioice."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from aioice import stun as aio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError
from gateway_core.wire.stun import (
    Attr,
    Class,
    Method,
    StunMessage,
    decode,
    decode_address,
    decode_error_code,
    encode_address,
    is_stun,
    long_term_key,
    message_type,
    split_type,
)

# RFC 5769 §2.1-2.4 (IETF test vectors).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74"
    "002400046e0001ff80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200008"
    "0001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96"
)
RFC5769_IPV6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f722000200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275"
    "bfe3ed4180280004c8fb0b4c"
)
RFC5769_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b393534643"
    "64f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)
ICE_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"


def test_rfc5769_request() -> None:
    m = decode(RFC5769_REQUEST)
    assert (m.method, m.cls) == (Method.BINDING, Class.REQUEST)
    assert m.transaction_id.hex() == "b7e7a701bc34d686fa87dfae"
    assert m.text(Attr.SOFTWARE) == "STUN test client"
    assert m.u32(Attr.PRIORITY) == 0x6E0001FF
    assert m.u64(Attr.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert m.text(Attr.USERNAME) == "evtj:h6vY"
    assert m.verify_integrity(ICE_PASSWORD)
    assert not m.verify_integrity(b"wrong")
    assert m.verify_fingerprint()


@pytest.mark.parametrize(
    ("raw", "addr"),
    [
        (RFC5769_IPV4_RESPONSE, SocketAddr(IPv4Address("192.0.2.1"), 32853)),
        (RFC5769_IPV6_RESPONSE, SocketAddr(IPv6Address("2001:db8:1234:5678:11:2233:4455:6677"), 32853)),
    ],
)
def test_rfc5769_responses(raw: bytes, addr: SocketAddr) -> None:
    m = decode(raw)
    assert (m.method, m.cls) == (Method.BINDING, Class.SUCCESS)
    assert m.address(Attr.XOR_MAPPED_ADDRESS) == addr
    assert m.text(Attr.SOFTWARE) == "test vector"
    assert m.verify_integrity(ICE_PASSWORD)
    assert m.verify_fingerprint()


def test_rfc5769_long_term() -> None:
    m = decode(RFC5769_LONG_TERM)
    user = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert m.text(Attr.USERNAME) == user
    assert m.text(Attr.REALM) == "example.org"
    assert m.text(Attr.NONCE) == "f//499k954d6OL34oL9FSTvy64sA"
    key = long_term_key(user, "example.org", "TheMatrIX")
    assert m.verify_integrity(key)
    assert m.fingerprint_at is None and not m.verify_fingerprint()
    # Zero padding throughout: re-encoding the attributes before MESSAGE-INTEGRITY reproduces the bytes.
    again = m.without(Attr.MESSAGE_INTEGRITY).encode(key)
    assert again == RFC5769_LONG_TERM


VECTORS = [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE, RFC5769_LONG_TERM]


@pytest.mark.parametrize("raw", VECTORS)
def test_truncated_byte_by_byte(raw: bytes) -> None:
    for n in range(len(raw)):
        with pytest.raises(DecodeError):
            decode(raw[:n])
        assert not is_stun(raw[:n])
    assert is_stun(raw)


@pytest.mark.parametrize("raw", VECTORS)
@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00\x00\x00", b"\x00\x01\x00\x00", b"garbage!"])
def test_trailing_bytes(raw: bytes, extra: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw + extra)


def _with_attr(attr: int, value: bytes) -> bytes:
    return StunMessage(Method.BINDING, Class.REQUEST, bytes(12), [(attr, value)]).encode()


@pytest.mark.parametrize(
    ("attr", "value"),
    [
        (Attr.PRIORITY, b"\x00\x00\x01"),
        (Attr.LIFETIME, b"\x00" * 8),
        (Attr.USE_CANDIDATE, b"\x00"),
        (Attr.ICE_CONTROLLED, b"\x00" * 4),
        (Attr.ICE_CONTROLLING, b"\x00" * 9),
        (Attr.MESSAGE_INTEGRITY, b"\x00" * 19),
        (Attr.FINGERPRINT, b"\x00" * 8),
        (Attr.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x00\x01\x02\x03\x04"),
        (Attr.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x00\x01\x02\x03"),
        (Attr.XOR_RELAYED_ADDRESS, b"\x00\x02\x00\x00" + bytes(15)),
        (Attr.USERNAME, b"\xff\xfe"),
        (Attr.USERNAME, b"a" * 513),
        (Attr.REALM, b"a" * 763),
        (Attr.ERROR_CODE, b"\x00\x00\x04"),
        (Attr.ERROR_CODE, b"\x00\x00\x02\x00"),
        (Attr.ERROR_CODE, b"\x00\x00\x04\x64"),
        (Attr.CHANNEL_NUMBER, b"\x40\x00"),
        (Attr.REQUESTED_TRANSPORT, b"\x11"),
        (Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x03\x00\x00\x00"),
        (Attr.MESSAGE_INTEGRITY_SHA256, bytes(12)),
        (Attr.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00"),
    ],
)
def test_bad_known_attribute_values(attr: int, value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(_with_attr(attr, value))


def test_header_errors() -> None:
    good = _with_attr(Attr.PRIORITY, b"\x00\x00\x00\x01")
    decode(good)
    with pytest.raises(DecodeError):  # top bits
        decode(b"\x40" + good[1:])
    with pytest.raises(DecodeError):  # cookie
        decode(good[:4] + b"\x21\x12\xa4\x43" + good[8:])
    with pytest.raises(DecodeError):  # length not a multiple of 4
        decode(good[:2] + b"\x00\x09" + good[4:] + b"\x00")
    with pytest.raises(DecodeError):  # attribute overruns
        decode(good[:22] + b"\x00\x09" + good[24:])


def test_unknown_attributes_kept_and_after_integrity_ignored() -> None:
    m = StunMessage(Method.BINDING, Class.REQUEST, bytes(range(12)))
    m.add(0x7777, b"xyz").add_u32(Attr.PRIORITY, 5)
    raw = m.encode(b"k")
    raw_more = StunMessage(Method.BINDING, Class.REQUEST, bytes(range(12)), [(Attr.PRIORITY, b"\x00" * 3)])
    # Append an invalid PRIORITY after MESSAGE-INTEGRITY: ignored, not an error.
    extra = raw_more.encode()[20:]
    patched = raw[:2] + (len(raw) - 20 + len(extra)).to_bytes(2, "big") + raw[4:] + extra
    d = decode(patched)
    assert d.get(0x7777) == b"xyz"
    assert d.u32(Attr.PRIORITY) == 5
    assert d.verify_integrity(b"k")


@given(st.integers(0, 0xFFF), st.sampled_from(list(Class)))
def test_type_round_trip(method: int, cls: Class) -> None:
    t = message_type(method, cls)
    assert t < 0x4000
    assert split_type(t) == (method, cls)


addresses = st.one_of(
    st.builds(
        lambda b, p: SocketAddr(IPv4Address(b), p), st.binary(min_size=4, max_size=4), st.integers(0, 65535)
    ),
    st.builds(
        lambda b, p: SocketAddr(IPv6Address(b), p), st.binary(min_size=16, max_size=16), st.integers(0, 65535)
    ),
)
texts = st.text(max_size=40).filter(lambda s: len(s.encode()) < 500)


@st.composite
def messages(draw: st.DrawFn) -> StunMessage:
    m = StunMessage(
        draw(st.sampled_from(list(Method))),
        draw(st.sampled_from(list(Class))),
        draw(st.binary(min_size=12, max_size=12)),
    )
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 8))
        if kind == 0:
            m.add_xor_address(
                draw(
                    st.sampled_from(
                        [Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS]
                    )
                ),
                draw(addresses),
            )
        elif kind == 1:
            m.add_text(
                draw(st.sampled_from([Attr.USERNAME, Attr.REALM, Attr.NONCE, Attr.SOFTWARE])), draw(texts)
            )
        elif kind == 2:
            m.add_u32(draw(st.sampled_from([Attr.PRIORITY, Attr.LIFETIME])), draw(st.integers(0, 2**32 - 1)))
        elif kind == 3:
            m.add_u64(
                draw(st.sampled_from([Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING])),
                draw(st.integers(0, 2**64 - 1)),
            )
        elif kind == 4:
            m.add(Attr.USE_CANDIDATE, b"")
        elif kind == 5:
            m.add_error(draw(st.integers(300, 699)), draw(texts))
        elif kind == 6:
            m.add(Attr.DATA, draw(st.binary(max_size=64)))
        elif kind == 7:
            m.add(
                draw(st.integers(0xC000, 0xFFFF).filter(lambda t: t not in set(Attr))),
                draw(st.binary(max_size=20)),
            )
        else:
            m.add(Attr.MAPPED_ADDRESS, encode_address(draw(addresses), None))
    return m


@settings(max_examples=200, deadline=None)
@given(messages(), st.one_of(st.none(), st.binary(min_size=1, max_size=32)), st.booleans(), st.booleans())
def test_round_trip(m: StunMessage, key: bytes | None, sha: bool, fp: bool) -> None:
    raw = m.encode(key, integrity_sha256_key=key if sha else None, fingerprint=fp)
    assert is_stun(raw)
    d = decode(raw)
    assert (d.method, d.cls, d.transaction_id) == (m.method, m.cls, m.transaction_id)
    n = len(m.attributes)
    assert d.attributes[:n] == m.attributes
    if key is not None:
        assert d.verify_integrity(key)
        assert not d.verify_integrity(key + b"x")
        assert d.verify_integrity_sha256(key) == sha
    assert d.verify_fingerprint() == fp
    for attr in (Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS):
        assert d.addresses(attr) == [
            decode_address(v, m.transaction_id) for t, v in m.attributes if t == attr
        ]
    # A flipped bit anywhere is detected or leaves a message that decodes; never another exception.
    for i in range(0, len(raw), 7):
        bad = raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1 :]
        try:
            b = decode(bad)
        except DecodeError:
            continue
        if key is not None and i < (d.integrity_at or 0) + 24 and b.integrity_at == d.integrity_at:
            assert not b.verify_integrity(key)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_parse_or_decode_error(data: bytes) -> None:
    for candidate in (
        data,
        b"\x00\x01" + len(data).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12) + data,
    ):
        try:
            decode(candidate)
        except DecodeError:
            pass


# --- aioice cross-check ---------------------------------------------------------------------------------


def _aio_value(m: StunMessage, attr: int, value: bytes) -> object:
    if attr in (Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS):
        a = decode_address(value, m.transaction_id)
        return (str(a.ip), a.port)
    if attr == Attr.MAPPED_ADDRESS:
        a = decode_address(value, None)
        return (str(a.ip), a.port)
    if attr in (Attr.USERNAME, Attr.REALM, Attr.SOFTWARE):
        return value.decode()
    if attr in (Attr.PRIORITY, Attr.LIFETIME):
        return int.from_bytes(value, "big")
    if attr in (Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING):
        return int.from_bytes(value, "big")
    if attr == Attr.USE_CANDIDATE:
        return None
    if attr == Attr.ERROR_CODE:
        return decode_error_code(value)
    return value


@settings(max_examples=150, deadline=None)
@given(messages(), st.binary(min_size=1, max_size=32))
def test_ours_parsed_by_aioice(m: StunMessage, key: bytes) -> None:
    # aioice keeps one value per attribute name (the last) and knows fewer types: compare what it knows.
    m.attributes = [(t, v) for t, v in m.attributes if t in aio.ATTRIBUTES_BY_TYPE]
    raw = m.encode(key, fingerprint=True)
    a = aio.parse_message(raw)
    assert int(a.message_method) == m.method
    assert int(a.message_class) == message_type(0, m.cls)
    assert a.transaction_id == m.transaction_id
    assert a.check_message_integrity(key)
    assert a.attributes["FINGERPRINT"] == int.from_bytes(raw[-4:], "big")
    expected: dict[str, object] = {}
    for t, v in m.attributes:
        expected[aio.ATTRIBUTES_BY_TYPE[t][1]] = _aio_value(m, t, v)
    for name, value in expected.items():
        assert a.attributes[name] == value, name


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([aio.Method.BINDING, aio.Method.ALLOCATE, aio.Method.CHANNEL_BIND]),
    st.sampled_from(list(aio.Class)),
    st.binary(min_size=12, max_size=12),
    addresses,
    st.integers(0, 2**32 - 1),
    texts,
    st.binary(min_size=1, max_size=20),
)
def test_aioice_parsed_by_ours(
    method: aio.Method, cls: aio.Class, tid: bytes, addr: SocketAddr, prio: int, user: str, key: bytes
) -> None:
    a = aio.Message(method, cls, tid)
    a.attributes["USERNAME"] = user
    a.attributes["PRIORITY"] = prio
    a.attributes["XOR-MAPPED-ADDRESS"] = (str(addr.ip), addr.port)
    a.attributes["ICE-CONTROLLING"] = prio * 3
    a.attributes["USE-CANDIDATE"] = None
    a.add_message_integrity(key)
    d = decode(bytes(a))
    assert d.method == int(method) and message_type(0, d.cls) == int(cls)
    assert d.text(Attr.USERNAME) == user
    assert d.u32(Attr.PRIORITY) == prio
    assert d.address(Attr.XOR_MAPPED_ADDRESS) == SocketAddr(ip_address(str(addr.ip)), addr.port)
    assert d.u64(Attr.ICE_CONTROLLING) == prio * 3
    assert d.has(Attr.USE_CANDIDATE)
    assert d.verify_integrity(key)
    assert d.verify_fingerprint()


@given(addresses, st.binary(min_size=12, max_size=12), st.binary(min_size=12, max_size=12))
def test_with_transaction_id_reencodes_xor_addresses(addr: SocketAddr, t1: bytes, t2: bytes) -> None:
    m = StunMessage(Method.CHANNEL_BIND, Class.REQUEST, t1).add_xor_address(Attr.XOR_PEER_ADDRESS, addr)
    m.add_text(Attr.SOFTWARE, "x")
    d = decode(m.with_transaction_id(t2).encode())
    assert d.transaction_id == t2
    assert d.address(Attr.XOR_PEER_ADDRESS) == addr
    assert d.text(Attr.SOFTWARE) == "x"
