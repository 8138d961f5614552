"""Dual-family allocations on standard servers (decision 0171), against the dev relay's coturn flavour.

coturn before 4.8.0 reads ADDITIONAL-ADDRESS-FAMILY only at the draft codepoint 0x8032 and ignores RFC
8656's 0x8000 (measured against coturn 4.6.1 by ``tests/system/test_turn_coturn.py``); the dev relay's
coturn flavour models that, and the allocation sends both codepoints once the server showed itself
standard. The Firezone relay's exchange stays snownet's (no draft codepoint).
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DecodeError
from gateway_core.turn.credentials import coturn_rest_password, firezone_username
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Attr, Class, Method, StunMessage
from tests.unit.test_turn_allocation import CLIENT4, EXPIRY, RELAY4, RELAY6, RELAY_IPS, SECRET, Harness

SIX = stun.encode_family(stun.FAMILY_IPV6)


def _allocates(h: Harness) -> list[StunMessage]:
    return [m for _, m in h.requests(Method.ALLOCATE)]


def test_coturn_gets_both_codepoints_after_it_showed_itself_standard() -> None:
    h = Harness("coturn")
    h.pump()
    first, *rest = _allocates(h)
    # The first ALLOCATE is snownet's (the server's kind is not known yet): RFC 8656's codepoint only.
    assert first.get(Attr.ADDITIONAL_ADDRESS_FAMILY) == SIX and not first.has(
        Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT
    )
    assert len(rest) == 2  # the unsigned one after coturn's 400, and the signed one after its 401
    for m in rest:
        assert (
            m.get(Attr.ADDITIONAL_ADDRESS_FAMILY) == SIX
            and m.get(Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT) == SIX
        )
        assert not m.has(Attr.REQUESTED_ADDRESS_FAMILY)
    v4, v6 = h.alloc.relayed_address(4), h.alloc.relayed_address(6)
    assert v4 is not None and v4.ip == RELAY4.ip and v6 is not None and v6.ip == RELAY6.ip
    assert sorted(c.addr.ip.version for c in h.alloc.relay_candidates()) == [4, 6]


def test_the_firezone_relay_never_sees_the_draft_codepoint() -> None:
    h = Harness()
    h.pump()
    h.advance_to(Instant(h.now + 400 * 10**9))  # past a refresh
    for method in (Method.ALLOCATE, Method.REFRESH):
        assert h.requests(method)
        assert not any(m.has(Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT) for _, m in h.requests(method))
    assert h.alloc.relayed_address(6) is not None


def _coturn_allocate(server: DevRelay, attrs: list[tuple[int, bytes]]) -> StunMessage:
    """One ALLOCATE carrying ``attrs`` through coturn's challenge; the final answer."""
    user = firezone_username(EXPIRY, "raw")
    key = stun.long_term_key(user, "firezone", coturn_rest_password(SECRET, user))
    m = tw.allocate(b"\x01" * 12)
    for a, v in attrs:
        m.add(a, v)
    (challenge,) = server.handle(Instant(0), RELAY4, CLIENT4, m.encode())
    nonce = stun.decode(challenge.payload).text(Attr.NONCE)
    assert nonce is not None
    m = tw.allocate(b"\x02" * 12)
    for a, v in attrs:
        m.add(a, v)
    m.add_text(Attr.USERNAME, user).add_text(Attr.REALM, "firezone").add_text(Attr.NONCE, nonce)
    (answer,) = server.handle(Instant(0), RELAY4, CLIENT4, m.encode(key))
    return stun.decode(answer.payload)


@pytest.mark.parametrize(
    ("attrs", "families"),
    [
        ([], [4]),
        ([(Attr.ADDITIONAL_ADDRESS_FAMILY, SIX)], [4]),  # RFC 8656's codepoint: unknown to coturn 4.6
        ([(Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT, SIX)], [4, 6]),
        ([(Attr.ADDITIONAL_ADDRESS_FAMILY, SIX), (Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT, SIX)], [4, 6]),
        ([(Attr.REQUESTED_ADDRESS_FAMILY, SIX)], [6]),
    ],
)
def test_the_coturn_flavour_reads_the_family_as_coturn_4_6_does(
    attrs: list[tuple[int, bytes]], families: list[int]
) -> None:
    """The same table as coturn 4.6.1 measured on loopback (``tests/system/test_turn_coturn.py``)."""
    server = DevRelay([RELAY4, RELAY6], RELAY_IPS, SECRET, SeededEntropy(5), flavour="coturn")
    r = _coturn_allocate(server, attrs)
    assert r.cls == Class.SUCCESS
    assert [a.ip.version for a in r.addresses(Attr.XOR_RELAYED_ADDRESS)] == families


def test_the_coturn_flavour_refuses_requested_plus_additional() -> None:
    server = DevRelay([RELAY4, RELAY6], RELAY_IPS, SECRET, SeededEntropy(5), flavour="coturn")
    attrs = [
        (Attr.REQUESTED_ADDRESS_FAMILY, stun.encode_family(1)),
        (Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT, SIX),
    ]
    r = _coturn_allocate(server, attrs)
    assert r.cls == Class.ERROR and r.error_code() == (400, "error")


def test_a_refused_dual_allocation_falls_back_to_one_family() -> None:
    """coturn with ``external-ip`` answers a dual ALLOCATE with 440: one ALLOCATE for its default family
    follows (no family attribute), and the allocation works with IPv4 alone, with no further 440."""
    h = Harness("coturn")
    h.server = DevRelay(
        [RELAY4, RELAY6], RELAY_IPS, SECRET, SeededEntropy(1, b"srv"), flavour="coturn", dual=False
    )
    h.pump()
    assert h.alloc.relayed_address(4) is not None and h.alloc.relayed_address(6) is None
    assert h.alloc.stats.counters["turn.error_440"] == 1
    last = _allocates(h)[-1]
    assert not any(
        last.has(a) for a in (Attr.ADDITIONAL_ADDRESS_FAMILY, Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT)
    )
    h.advance_to(Instant(h.now + 700 * 10**9))  # refreshes keep it; nothing asks for two families again
    assert h.alloc.relayed_address(4) is not None and h.alloc.stats.counters["turn.error_440"] == 1
    assert h.alloc.stats.counters["turn.unexpected_transition"] == 0


def test_a_family_coturn_could_not_allocate_is_no_candidate() -> None:
    """coturn without an IPv6 ``relay-ip`` answers the dual request with IPv4 and ``[::]:0``."""
    h = Harness("coturn")
    v4_only = [a for a in RELAY_IPS if a.ip.version == 4]
    h.server = DevRelay([RELAY4, RELAY6], v4_only, SECRET, SeededEntropy(1, b"srv"), flavour="coturn")
    h.pump()
    assert h.alloc.relayed_address(4) is not None and h.alloc.relayed_address(6) is None
    assert [c.addr.ip.version for c in h.alloc.relay_candidates()] == [4]
    assert all(not e.candidate.addr.ip.is_unspecified for e in h.events)


def test_relayed_addresses_skips_placeholders() -> None:
    m = StunMessage(Method.ALLOCATE, Class.SUCCESS, b"\x03" * 12)
    m.add_xor_address(Attr.XOR_RELAYED_ADDRESS, SocketAddr(IPv4Address("192.0.2.1"), 50000))
    m.add_xor_address(Attr.XOR_RELAYED_ADDRESS, SocketAddr(IPv4Address("0.0.0.0"), 0))
    got = tw.relayed_addresses(stun.decode(m.encode()))
    assert got == (SocketAddr(IPv4Address("192.0.2.1"), 50000), None)


def test_a_bad_draft_family_value_is_a_decode_error() -> None:
    m = StunMessage(Method.ALLOCATE, Class.REQUEST, b"\x04" * 12)
    m.add(Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT, b"\x03\x00\x00\x00")
    with pytest.raises(DecodeError):
        stun.decode(m.encode())
