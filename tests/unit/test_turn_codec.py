"""TURN messages, ChannelData framing and first-byte classification."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from aioice import stun as aio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError
from gateway_core.wire.stun import FAMILY_IPV6, Attr, Class, Method, decode
from gateway_core.wire.turn import (
    Kind,
    allocate,
    channel_bind,
    classify,
    create_permission,
    data_indication,
    decode_channel_data,
    encode_channel_data,
    parse_data_indication,
    refresh,
    send_indication,
)

PEER4 = SocketAddr(IPv4Address("198.51.100.7"), 40000)
PEER6 = SocketAddr(IPv6Address("2001:db8::7"), 40001)
TID = bytes(range(12))


def test_channel_data_whole_truncated_trailing() -> None:
    raw = encode_channel_data(0x4001, b"hello")
    assert raw == b"\x40\x01\x00\x05hello"
    assert decode_channel_data(raw) == (0x4001, b"hello")
    for n in range(len(raw)):
        with pytest.raises(DecodeError):
            decode_channel_data(raw[:n])
    for extra in (b"\x00", b"\x00\x00\x00", b"xyz!"):
        with pytest.raises(DecodeError):
            decode_channel_data(raw + extra)
        assert decode_channel_data(raw + extra, exact=False) == (0x4001, b"hello")


def test_channel_data_range() -> None:
    assert decode_channel_data(b"\x7f\xff\x00\x00") == (0x7FFF, b"")
    for bad in (b"\x3f\xff\x00\x00", b"\x80\x00\x00\x00", b"\x00\x01\x00\x00"):
        with pytest.raises(DecodeError):
            decode_channel_data(bad)
    with pytest.raises(ValueError):
        encode_channel_data(0x3FFF, b"")


@given(st.integers(0x4000, 0x7FFF), st.binary(max_size=1500))
def test_channel_data_round_trip(ch: int, payload: bytes) -> None:
    raw = encode_channel_data(ch, payload)
    assert decode_channel_data(raw) == (ch, payload)
    assert decode_channel_data(raw + bytes(-len(raw) % 4), exact=False) == (ch, payload)
    if ch <= 0x4FFF:
        assert classify(raw) is Kind.CHANNEL_DATA


@given(st.binary(max_size=40))
def test_channel_data_parse_or_decode_error(data: bytes) -> None:
    for exact in (True, False):
        try:
            decode_channel_data(data, exact=exact)
        except DecodeError:
            pass


def test_classify() -> None:
    stun = allocate(TID).encode()
    assert classify(stun) is Kind.STUN
    assert classify(b"\x01\x00\x00\x00" + bytes(144)) is Kind.WIREGUARD  # handshake initiation
    assert classify(b"\x02\x00\x00\x00" + bytes(88)) is Kind.WIREGUARD
    assert classify(b"\x03\x00\x00\x00" + bytes(60)) is Kind.WIREGUARD
    assert classify(b"\x04\x00\x00\x00" + bytes(28)) is Kind.WIREGUARD
    assert classify(b"\x40\x00\x00\x00") is Kind.CHANNEL_DATA
    assert classify(b"\x4f\xff\x00\x00") is Kind.CHANNEL_DATA
    assert classify(b"\x50\x00\x00\x00") is Kind.UNKNOWN
    assert classify(b"\x04\x01\x00\x00") is Kind.UNKNOWN
    assert classify(b"") is Kind.UNKNOWN


def test_requests_decode() -> None:
    a = decode(allocate(TID, software="snownet", additional_family=FAMILY_IPV6, lifetime=600).encode())
    assert (a.method, a.cls) == (Method.ALLOCATE, Class.REQUEST)
    assert a.get(Attr.REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    assert a.get(Attr.ADDITIONAL_ADDRESS_FAMILY) == b"\x02\x00\x00\x00"
    assert a.u32(Attr.LIFETIME) == 600
    assert a.text(Attr.SOFTWARE) == "snownet"
    r = decode(refresh(TID, lifetime=0).encode(b"key"))
    assert r.method == Method.REFRESH and r.u32(Attr.LIFETIME) == 0 and r.verify_integrity(b"key")
    p = decode(create_permission(TID, [PEER4, PEER6]).encode())
    assert p.addresses(Attr.XOR_PEER_ADDRESS) == [PEER4, PEER6]
    c = decode(channel_bind(TID, PEER6, 0x4ABC).encode())
    assert c.address(Attr.XOR_PEER_ADDRESS) == PEER6 and c.channel_number() == 0x4ABC


@pytest.mark.parametrize("peer", [PEER4, PEER6])
def test_indications(peer: SocketAddr) -> None:
    s = decode(send_indication(TID, peer, b"payload").encode())
    assert (s.method, s.cls) == (Method.SEND, Class.INDICATION)
    assert parse_data_indication(s) == (peer, b"payload")
    raw = data_indication(TID, peer, b"\x00\x01\x02").encode()
    d = decode(raw)
    assert parse_data_indication(d) == (peer, b"\x00\x01\x02")
    for n in range(len(raw)):
        with pytest.raises(DecodeError):
            decode(raw[:n])
    with pytest.raises(DecodeError):
        parse_data_indication(decode(allocate(TID).encode()))


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=12, max_size=12),
    st.integers(0x4000, 0x4FFF),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=100),
    st.booleans(),
)
def test_turn_attributes_against_aioice(tid: bytes, ch: int, life: int, data: bytes, v6: bool) -> None:
    peer = PEER6 if v6 else PEER4
    m = channel_bind(tid, peer, ch)
    m.add_u32(Attr.LIFETIME, life).add(Attr.DATA, data)
    m.add(Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")
    a = aio.parse_message(m.encode(b"k"))
    assert a.check_message_integrity(b"k")
    assert a.attributes["CHANNEL-NUMBER"] == ch
    assert a.attributes["XOR-PEER-ADDRESS"] == (str(peer.ip), peer.port)
    assert a.attributes["LIFETIME"] == life
    assert a.attributes["DATA"] == data
    assert a.attributes["REQUESTED-TRANSPORT"] == 17 << 24
    # And back: aioice's encoding of the same attributes decodes identically.
    b = aio.Message(aio.Method.CHANNEL_BIND, aio.Class.REQUEST, tid)
    b.attributes["CHANNEL-NUMBER"] = ch
    b.attributes["XOR-PEER-ADDRESS"] = (str(peer.ip), peer.port)
    b.attributes["XOR-RELAYED-ADDRESS"] = (str(peer.ip), peer.port)
    b.attributes["LIFETIME"] = life
    d = decode(bytes(b))
    assert d.channel_number() == ch
    assert d.address(Attr.XOR_PEER_ADDRESS) == peer == d.address(Attr.XOR_RELAYED_ADDRESS)
    assert d.u32(Attr.LIFETIME) == life


def test_data_indication_needs_the_right_class_method_and_both_attributes() -> None:
    """Each of the four conditions alone makes a message no Data indication: a Data *request*, an
    indication of another method, one without XOR-PEER-ADDRESS, one without DATA."""
    from gateway_core.wire.stun import StunMessage

    request = StunMessage(Method.DATA, Class.REQUEST, TID).add_xor_address(Attr.XOR_PEER_ADDRESS, PEER4)
    binding = StunMessage(Method.BINDING, Class.INDICATION, TID).add_xor_address(Attr.XOR_PEER_ADDRESS, PEER4)
    no_peer = StunMessage(Method.DATA, Class.INDICATION, TID).add(Attr.DATA, b"x")
    no_data = StunMessage(Method.DATA, Class.INDICATION, TID).add_xor_address(Attr.XOR_PEER_ADDRESS, PEER4)
    for m in (request.add(Attr.DATA, b"x"), binding.add(Attr.DATA, b"x"), no_peer, no_data):
        with pytest.raises(DecodeError):
            parse_data_indication(decode(m.encode()))
