"""ICE candidates: Firezone's priorities and the candidate string format (str0m ``src/ice/candidate.rs``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError
from gateway_core.ice import candidate as c

V4 = SocketAddr(IPv4Address("10.0.0.5"), 52625)
V6 = SocketAddr(IPv6Address("2001:db8::5"), 52625)


def test_priority_table() -> None:
    assert c.host(V6).priority == 2130706431
    assert c.host(V4).priority == 2130706175
    assert c.server_reflexive(V6, V6).priority == 1694498815
    assert c.server_reflexive(V4, V4).priority == 1694498559
    relay4 = c.relayed(V4, V4)
    assert relay4.with_local_preference(c.local_preference(c.Kind.RELAY, V4, 0, V4), "u").priority == 37748479
    punished = c.local_preference(c.Kind.RELAY, V6, 0, V4)
    assert c.relayed(V6, V4).with_local_preference(punished, "u").priority == 37492735
    # The second host candidate of a family is 2 below the first.
    assert c.local_preference(c.Kind.HOST, V4, 1) == 65532


def test_sdp_format() -> None:
    h = c.host(V4).with_local_preference(65534, "abcd")
    s = h.to_sdp()
    assert s.startswith("candidate:")
    assert s.endswith(" 1 udp 2130706175 10.0.0.5 52625 typ host ufrag abcd")
    assert s.split(" ")[0][len("candidate:") :][:8] == "fffeff7e"  # byte-swapped priority
    srflx = c.server_reflexive(SocketAddr(IPv4Address("203.0.113.9"), 40123), V4).to_sdp()
    assert srflx.endswith(" 1 udp 1694498559 203.0.113.9 40123 typ srflx raddr 0.0.0.0 rport 0")
    relay6 = c.relayed(V6, V4).to_sdp()
    assert " 2001:db8::5 52625 typ relay raddr :: rport 0" in relay6


@pytest.mark.parametrize(
    "cand",
    [
        c.host(V4),
        c.host(V6).with_local_preference(65535, "u1"),
        c.server_reflexive(V4, V4),
        c.relayed(V6, V4),
    ],
)
def test_parse_round_trip(cand: c.Candidate) -> None:
    p = c.parse(cand.to_sdp())
    assert (p.kind, p.addr, p.priority, p.foundation, p.ufrag) == (
        cand.kind,
        cand.addr,
        cand.priority,
        cand.foundation,
        cand.ufrag,
    )
    assert p.base == p.addr
    assert p.raddr == (None if cand.kind is c.Kind.HOST else c.unspecified(cand.addr))
    assert c.parse("a=" + cand.to_sdp()) == p


def test_parse_truncated_and_trailing() -> None:
    s = c.host(V4).with_local_preference(65534, "abcd").to_sdp()
    full = c.parse(s)
    # Trailing unknown suffixes are ignored (str0m), as are out-of-order ones.
    assert c.parse(s + " network-cost 10") == full
    assert c.parse(s + " whatever 1 2 3") == full
    cut = s.index(" typ host") + len(" typ host")
    for n in range(cut):
        with pytest.raises(DecodeError):
            c.parse(s[:n])
    # Cutting inside the optional suffix drops the ufrag, never raises.
    assert c.parse(s[:cut]).ufrag is None


@pytest.mark.parametrize(
    "bad",
    [
        "candidate:x 2 udp 1 10.0.0.1 1 typ host",
        "candidate:x 1 tcp 1 10.0.0.1 1 typ host",
        "candidate:x 1 udp -1 10.0.0.1 1 typ host",
        "candidate:x 1 udp 1 10.0.0.1 70000 typ host",
        "candidate:x 1 udp 1 10.0.0.x 1 typ host",
        "candidate:x 1 udp 1 10.0.0.1 1 typ weird",
        "candidate: 1 udp 1 10.0.0.1 1 typ host",
        "candidate:x 1 udp 1 10.0.0.1 1 typ srflx raddr 0.0.0.0 port 0",
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(DecodeError):
        c.parse(bad)


def test_parse_uppercase_udp() -> None:
    assert c.parse("candidate:f 1 UDP 5 10.0.0.1 9 typ host").priority == 5


@given(st.text(max_size=80))
def test_parse_or_decode_error(text: str) -> None:
    for t in (text, "candidate:" + text, "candidate:f 1 udp 1 10.0.0.1 1 typ host " + text):
        try:
            c.parse(t)
        except DecodeError:
            pass


def test_local_address_validity() -> None:
    assert c.is_valid_local_address(V4)
    assert c.is_valid_local_address(SocketAddr(IPv4Address("127.0.0.1"), 1))
    for ip in ("0.0.0.0", "169.254.1.1", "255.255.255.255", "224.0.0.1"):
        assert not c.is_valid_local_address(SocketAddr(IPv4Address(ip), 1))
    assert not c.is_valid_local_address(SocketAddr(IPv6Address("ff02::1"), 1))
