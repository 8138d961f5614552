"""The p2p control protocol (Firezone's ``rust/connlib/tunnel/src/p2p_control.rs``): vectors, parsers
whole / truncated / with trailing bytes, round-trips, and the dev client's request machine
(``devpeers/client_nat.py``)."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devpeers.client_nat import DomainNatRequest, RequestState
from gateway_core.clock import Instant
from gateway_core.errors import DecodeError, UsageError
from gateway_core.policy.p2p_control import (
    EVENT_ASSIGNED_IPS,
    EVENT_DOMAIN_STATUS,
    GOODBYE_PACKET,
    AssignedIps,
    DomainStatus,
    Goodbye,
    IgnoredEvent,
    NatStatus,
    build_assigned_ips,
    build_control_packet,
    build_domain_status,
    decode_assigned_ips,
    decode_domain_name,
    decode_domain_status,
    encode_assigned_ips,
    gateway_read_control,
    is_control_packet,
    parse_control_packet,
)

R65 = uuid.UUID(int=0x65)
DUAL = [ip_address(s) for s in ("100.96.0.1", "100.96.0.2", "100.96.0.3", "100.96.0.4")] + [
    ip_address(s)
    for s in (
        "fd00:2021:1111:8000::",
        "fd00:2021:1111:8000::1",
        "fd00:2021:1111:8000::2",
        "fd00:2021:1111:8000::3",
    )
]
EXAMPLE_JSON = (
    b'{"resource":"00000000-0000-0000-0000-000000000065","domain":"example.com","proxy_ips":["100.96.0.1",'
    b'"100.96.0.2","100.96.0.3","100.96.0.4","fd00:2021:1111:8000::","fd00:2021:1111:8000::1",'
    b'"fd00:2021:1111:8000::2","fd00:2021:1111:8000::3"]}'
)


def test_goodbye_vector() -> None:
    want = bytes.fromhex("6000000000 08ff00".replace(" ", "")) + bytes(32) + bytes.fromhex("0200000000000000")
    assert want == GOODBYE_PACKET and len(want) == 48
    assert gateway_read_control(want) == Goodbye()


def test_domain_status_vector() -> None:
    js = b'{"resource":"00000000-0000-0000-0000-000000000065","domain":"example.com","status":"Active"}'
    assert len(js) == 92
    p = build_domain_status(R65, "example.com", NatStatus.ACTIVE)
    assert len(p) == 140
    assert p[:8] == bytes.fromhex("600000000064ff00")
    assert p[8:40] == bytes(32) and p[40:48] == bytes.fromhex("0100000000000000") and p[48:] == js
    cp = parse_control_packet(p)
    assert cp.event == EVENT_DOMAIN_STATUS
    assert decode_domain_status(cp.payload) == DomainStatus(R65, "example.com", NatStatus.ACTIVE)
    assert gateway_read_control(p) == IgnoredEvent(EVENT_DOMAIN_STATUS)


def test_assigned_ips_example_payload() -> None:
    p = build_assigned_ips(R65, "example.com", DUAL)
    assert p[48:] == EXAMPLE_JSON
    assert gateway_read_control(p) == AssignedIps(R65, "example.com", tuple(DUAL))


def test_max_payload_size_pinned_by_the_reference() -> None:
    label = "a" * 49
    domain = f"{label}.{label}.{label}.{label}.{label}.com"
    ips = [IPv4Address("127.0.0.1")] * 4 + [IPv6Address("::1")] * 4
    assert len(encode_assigned_ips(AssignedIps(uuid.UUID(int=100), domain, tuple(ips)))) == 402
    longest = [IPv4Address("100.127.255.255")] * 4 + [IPv6Address("fd00:2021:1111:8000::1f:ffff")] * 4
    assert len(encode_assigned_ips(AssignedIps(uuid.UUID(int=100), domain, tuple(longest)))) == 526


def test_unknown_status_is_inactive_and_fields_any_order() -> None:
    js = (
        b'{"status":"what_is_this","extra":[1,{"a":null}],"domain":"example.com",'
        b'"resource":"00000000-0000-0000-0000-000000000065"}'
    )
    assert decode_domain_status(js) == DomainStatus(R65, "example.com", NatStatus.INACTIVE)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"[]",
        b"{",
        b'{"resource":"00000000-0000-0000-0000-000000000065","domain":"example.com"}',
        EXAMPLE_JSON + b"x",
        EXAMPLE_JSON.replace(b'"domain"', b'"resource":"x","domain"'),  # duplicate field
        EXAMPLE_JSON.replace(b'"100.96.0.1"', b"1"),
        EXAMPLE_JSON.replace(b'"100.96.0.1"', b'"100.96.0.256"'),
        EXAMPLE_JSON.replace(b'"100.96.0.1"', b'"fe80::1%eth0"'),
        EXAMPLE_JSON.replace(b'"example.com"', b'"a..b"'),
        EXAMPLE_JSON.replace(b'"example.com"', b'"' + b"a" * 64 + b'"'),
        EXAMPLE_JSON.replace(b'"example.com"', b"null"),
        EXAMPLE_JSON.replace(b"00000000-0000", b"zz000000-0000"),
        EXAMPLE_JSON.replace(b"[", b"7,", 1).replace(b"]", b""),
        b'{"x":NaN}',
        b"\xff\xfe",
        b'{"a":' + b"[" * 300 + b"]" * 300 + b"}",
    ],
)
def test_malformed_payloads_raise_decode_error_only(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_assigned_ips(payload)


def test_domain_names() -> None:
    assert decode_domain_name("example.com.") == "example.com"
    assert decode_domain_name(".") == "."
    long_ok = ".".join(["a" * 63] * 3 + ["a" * 61])  # 253 characters, 255 bytes on the wire
    assert decode_domain_name(long_ok) == long_ok
    assert decode_domain_name("a.") == "a"
    for bad in ("", "..", "é.com", "a\\.b", long_ok + "a", 5):
        with pytest.raises(DecodeError):
            decode_domain_name(bad)


def test_parse_whole_truncated_and_trailing() -> None:
    for packet in (GOODBYE_PACKET, build_assigned_ips(R65, "example.com", DUAL)):
        whole = parse_control_packet(packet)
        assert parse_control_packet(packet + b"\x00junk") == whole  # beyond the IPv6 payload length
        assert gateway_read_control(packet + b"trailing") == gateway_read_control(packet)
        for n in range(len(packet)):
            with pytest.raises(DecodeError):
                gateway_read_control(packet[:n])


def test_recognition() -> None:
    assert is_control_packet(GOODBYE_PACKET)
    short = bytearray(GOODBYE_PACKET)
    short[5] = 7  # fewer than 8 payload bytes: not consumed
    assert not is_control_packet(short)
    for i, v in ((0, 0x40), (6, 17), (8, 1), (39, 1)):
        other = bytearray(GOODBYE_PACKET)
        other[i] = v
        assert not is_control_packet(other)
    reserved = bytearray(GOODBYE_PACKET)
    reserved[41] = 9  # reserved bytes are not checked
    assert gateway_read_control(reserved) == Goodbye()
    with pytest.raises(UsageError):
        build_control_packet(256)
    with pytest.raises(UsageError):
        build_control_packet(1, bytes(1233))
    assert len(build_control_packet(1, bytes(1232))) == 1280
    with pytest.raises(UsageError):
        build_assigned_ips(R65, "x.com", DUAL[:3])


@given(st.binary(max_size=120))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    for packet in (data, GOODBYE_PACKET[:40] + data, build_control_packet(EVENT_ASSIGNED_IPS, data)):
        try:
            gateway_read_control(packet)
        except DecodeError:
            pass
        try:
            decode_domain_status(data)
        except DecodeError:
            pass


label_st = st.text(alphabet="abcxyz019-", min_size=1, max_size=10)
domain_st = st.lists(label_st, min_size=1, max_size=5).map(".".join)
ip_st = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@given(
    st.uuids(), domain_st, st.lists(ip_st, min_size=4, max_size=4), st.lists(ip_st, min_size=4, max_size=4)
)
def test_assigned_ips_round_trip(
    rid: uuid.UUID, domain: str, a: list[IPv4Address], b: list[IPv4Address]
) -> None:
    for ips in (a, a + b):
        got = gateway_read_control(build_assigned_ips(rid, domain, ips))
        assert got == AssignedIps(rid, domain, tuple(ips))


@given(st.uuids(), domain_st, st.sampled_from(list(NatStatus)))
def test_domain_status_round_trip(rid: uuid.UUID, domain: str, status: NatStatus) -> None:
    cp = parse_control_packet(build_domain_status(rid, domain, status))
    assert decode_domain_status(cp.payload) == DomainStatus(rid, domain, status)


# --- the client's request machine ----------------------------------------------------------------


def t(s: float) -> Instant:
    return Instant(int(s * 1_000_000_000))


def test_pending_buffers_and_resends_only_every_two_seconds_with_traffic() -> None:
    req = DomainNatRequest(b"AIPS", t(0))
    assert req.state is RequestState.PENDING
    assert req.outgoing(t(0.5), b"p1") == (None, False)
    assert req.outgoing(t(1.9), b"p1") == (None, False)  # duplicate skipped
    assert req.buffered == 1
    assert req.outgoing(t(2.0), b"p2") == (None, True)
    assert req.outgoing(t(3.9), b"p3") == (None, False)
    assert req.update(t(4.0), [b"p4"]) is True
    assert req.on_status(NatStatus.ACTIVE) == [b"p1", b"p2", b"p3", b"p4"]
    assert req.state is RequestState.CONFIRMED
    assert req.outgoing(t(10), b"p5") == (b"p5", False)


def test_buffer_keeps_the_newest_32() -> None:
    req = DomainNatRequest(b"AIPS", t(0))
    for i in range(40):
        req.outgoing(t(0), b"%d" % i)
    assert req.on_status(NatStatus.ACTIVE) == [b"%d" % i for i in range(8, 40)]


def test_failed_then_recreate_buffers_again_and_confirmed_recreate_does_not() -> None:
    req = DomainNatRequest(b"AIPS", t(0))
    req.outgoing(t(0), b"x")
    assert req.on_status(NatStatus.INACTIVE) == [] and req.state is RequestState.FAILED
    assert req.outgoing(t(1), b"y") == (b"y", False)
    assert req.update(t(1)) is False  # failed: no re-send without a new DNS answer
    req.recreate()
    assert req.state is RequestState.RECREATING and req.outgoing(t(1), b"z") == (b"z", False)
    assert req.update(t(1.5), [b"q"]) is True and req.state is RequestState.PENDING
    assert req.outgoing(t(1.6), b"r") == (None, False)
    assert req.on_status(NatStatus.ACTIVE) == [b"q", b"r"]
    req.recreate()
    assert req.update(t(2)) is True
    assert req.outgoing(t(2.1), b"s") == (b"s", False)  # confirmed before: no buffering
    assert req.on_status(NatStatus.ACTIVE) == []
    req.recreate()
    req.recreate()
    assert req.state is RequestState.RECREATING


def test_retransmitted_syn_replaces_the_buffered_one() -> None:
    from gateway_core.wire.ip import TCP_ACK, TCP_SYN
    from gateway_core.wire.ipbuild import build_tcp_packet

    c, r = ip_address("100.64.0.1"), ip_address("100.96.0.1")
    syn1 = build_tcp_packet(c, r, 5000, 443, b"", seq=7, flags=TCP_SYN, window=1000)
    syn2 = build_tcp_packet(c, r, 5000, 443, b"", seq=7, flags=TCP_SYN, window=2000)  # differs in bytes
    other_port = build_tcp_packet(c, r, 5001, 443, b"", seq=7, flags=TCP_SYN)
    ack = build_tcp_packet(c, r, 5000, 443, b"", seq=7, flags=TCP_SYN | TCP_ACK)
    req = DomainNatRequest(b"AIPS", t(0))
    for p in (syn1, syn2, other_port, ack, b"not an ip packet"):
        req.outgoing(t(0), p)
    assert req.on_status(NatStatus.ACTIVE) == [syn2, other_port, ack, b"not an ip packet"]
