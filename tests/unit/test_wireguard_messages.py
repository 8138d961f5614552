"""WireGuard message codecs: whole, truncated byte by byte, with trailing bytes, round trips, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.errors import DecodeError, DropReason
from gateway_core.wireguard.index import IndexAllocator
from gateway_core.wireguard.messages import (
    COOKIE_REPLY_LEN,
    INITIATION_LEN,
    RESPONSE_LEN,
    CookieReply,
    Initiation,
    Response,
    decode_cookie_reply,
    decode_data_header,
    decode_initiation,
    decode_response,
    encode_cookie_reply,
    encode_data,
    encode_initiation,
    encode_response,
    message_type,
)

from .test_wireguard_vectors import COOKIE_REPLY, INITIATION, KEEPALIVE, RESPONDER_DATA, RESPONSE
from .wireguard_link import Link, ipv4_udp

u32 = st.integers(0, 2**32 - 1)


def blob(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def test_whole_messages_decode() -> None:
    m = decode_initiation(INITIATION)
    assert m.sender == 0x12345601 and m.mac2 == bytes(16) and len(m.encrypted_static) == 48
    r = decode_response(RESPONSE)
    assert (r.sender, r.receiver) == (0xABCDEF01, 0x12345601)
    c = decode_cookie_reply(COOKIE_REPLY)
    assert c.receiver == 0x12345601 and c.nonce == bytes(range(0xC0, 0xD8))
    d = decode_data_header(RESPONDER_DATA)
    assert (d.receiver, d.counter) == (0x12345601, 0)
    assert [message_type(x) for x in (INITIATION, RESPONSE, COOKIE_REPLY, KEEPALIVE)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("msg", "decode"),
    [
        (INITIATION, decode_initiation),
        (RESPONSE, decode_response),
        (COOKIE_REPLY, decode_cookie_reply),
        (KEEPALIVE, decode_data_header),
    ],
)
def test_truncated_byte_by_byte_and_trailing(msg: bytes, decode: object) -> None:
    assert callable(decode)
    for n in range(len(msg)):
        with pytest.raises(DecodeError):
            decode(msg[:n])
    if decode is not decode_data_header:
        with pytest.raises(DecodeError):
            decode(msg + b"\0")
    else:
        assert decode(msg + b"\0") == decode(msg)  # data is variable length


def test_reserved_bytes_must_be_zero_and_types_known() -> None:
    for bad in (b"\x01\x01\0\0", b"\x05\0\0\0", b"\0\0\0\0", b"\x01\0\0\x01"):
        with pytest.raises(DecodeError):
            message_type(bad + INITIATION[4:])


def test_decoders_reject_the_other_message_types() -> None:
    with pytest.raises(DecodeError):
        decode_response(INITIATION)
    with pytest.raises(DecodeError):
        decode_initiation(KEEPALIVE)
    with pytest.raises(DecodeError):
        decode_cookie_reply(RESPONSE)
    with pytest.raises(DecodeError):
        decode_data_header(COOKIE_REPLY)


@given(u32, blob(32), blob(48), blob(28), blob(16), blob(16))
def test_initiation_round_trip(s: int, e: bytes, es: bytes, et: bytes, m1: bytes, m2: bytes) -> None:
    m = Initiation(s, e, es, et, m1, m2)
    raw = encode_initiation(m)
    assert len(raw) == INITIATION_LEN and decode_initiation(raw) == m


@given(u32, u32, blob(32), blob(16), blob(16), blob(16))
def test_response_round_trip(s: int, r: int, e: bytes, en: bytes, m1: bytes, m2: bytes) -> None:
    m = Response(s, r, e, en, m1, m2)
    raw = encode_response(m)
    assert len(raw) == RESPONSE_LEN and decode_response(raw) == m


@given(u32, blob(24), blob(32))
def test_cookie_reply_round_trip(r: int, n: bytes, c: bytes) -> None:
    m = CookieReply(r, n, c)
    raw = encode_cookie_reply(m)
    assert len(raw) == COOKIE_REPLY_LEN and decode_cookie_reply(raw) == m


@given(u32, st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=64))
def test_data_round_trip(r: int, ctr: int, ct: bytes) -> None:
    raw = encode_data(r, ctr, ct)
    h = decode_data_header(raw)
    assert (h.receiver, h.counter) == (r, ctr) and raw[16:] == ct


@given(st.binary(max_size=200))
def test_message_type_is_decode_error_or_type(data: bytes) -> None:
    try:
        t = message_type(data)
    except DecodeError:
        return
    assert t in (1, 2, 3, 4)


VALID = st.sampled_from([INITIATION, RESPONSE, COOKIE_REPLY, KEEPALIVE])
_LINK = Link.make(seed=77)
_LINK.send_a(ipv4_udp(b"hello"))


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(
            st.sampled_from([INITIATION, RESPONSE, COOKIE_REPLY, KEEPALIVE]), st.binary(max_size=8)
        ).map(lambda t: t[0][: max(0, len(t[0]) - len(t[1]))] + t[1]),
        st.sampled_from([1, 2, 3, 4]).flatmap(
            lambda t: st.binary(min_size=28, max_size=200).map(lambda b: bytes([t, 0, 0, 0]) + b)
        ),
    )
)
def test_peer_never_raises_on_garbage(data: bytes) -> None:
    for peer in (_LINK.a, _LINK.b):
        before = peer.stats.total_drops
        assert peer.decapsulate(_LINK.now, data) is None
        # Either dropped and counted, or a control message was answered/absorbed (a cookie-reply drop
        # counts too); nothing decrypts.
        assert peer.stats.total_drops >= before


def test_every_truncation_is_a_counted_drop() -> None:
    link = Link.make(seed=5)
    link.send_a(ipv4_udp(b"x"))
    b = link.b
    for msg in (INITIATION, RESPONSE, COOKIE_REPLY, KEEPALIVE):
        for n in range(len(msg)):
            before = b.stats.drops[DropReason.WG_MALFORMED]
            assert b.decapsulate(link.now, msg[:n]) is None
            assert b.stats.drops[DropReason.WG_MALFORMED] == before + 1
    assert b.handle_timeout(link.now) is None


def test_index_allocator_gives_distinct_24_bit_values() -> None:
    from gateway_core.entropy import SeededEntropy

    alloc = IndexAllocator(SeededEntropy(3))
    seen = {alloc.next() for _ in range(50_000)}
    assert len(seen) == 50_000
    assert all(0 <= v < 1 << 24 for v in seen)
    again = IndexAllocator(SeededEntropy(3))
    assert again.next() == IndexAllocator(SeededEntropy(3)).next()


@settings(max_examples=200)
@given(st.lists(st.integers(0, 5000), max_size=300))
def test_replay_window_matches_reference_model(counters: list[int]) -> None:
    """The flag ring behaves like boringtun's rule over a plain set of received counters."""
    from gateway_core.wireguard.session import REPLAY_DUPLICATE, REPLAY_OK, REPLAY_TOO_OLD, ReplayWindow

    w = ReplayWindow()
    received: set[int] = set()
    nxt = 0
    for c in counters:
        if c >= nxt:
            want = REPLAY_OK
        elif c + 1024 < nxt:
            want = REPLAY_TOO_OLD
        else:
            want = REPLAY_DUPLICATE if c in received else REPLAY_OK
        assert w.check(c) == want
        assert w.mark(c) == want
        if want == REPLAY_OK:
            received.add(c)
            nxt = max(nxt, c + 1)
