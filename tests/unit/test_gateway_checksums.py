"""``--validate-checksums``: which checksums are checked (``gateway_core.wire.verify``) and what the
gateway does with a bad one in each direction (dropped, counted as ``bad_checksum``; decision 0166)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from gateway_core.wire.ipbuild import build_icmp_echo, build_tcp_packet, build_udp_packet
from gateway_core.wire.verify import checksums_valid
from tests.unit.gateway_harness import CL_TUN4, CL_TUN6, DNS_ID, Harness, cidr_resource

V4S, V4D = ip_address("100.64.0.1"), ip_address("172.20.0.5")
V6S, V6D = ip_address("fd00:2021:1111::1"), ip_address("2001:db8:1::9")
RES = ip_address("172.20.0.5")
RES6 = ip_address("2001:db8:1::9")


def _flip(packet: bytes, at: int) -> bytes:
    b = bytearray(packet)
    b[at] ^= 0x40
    return bytes(b)


def _udp(src: object, dst: object, payload: bytes = b"data") -> bytes:
    return build_udp_packet(ip_address(str(src)), ip_address(str(dst)), 40000, 80, payload)


def _tcp(src: object, dst: object, payload: bytes = b"hello") -> bytes:
    return build_tcp_packet(ip_address(str(src)), ip_address(str(dst)), 40000, 80, payload)


@pytest.mark.parametrize("make", [_udp, _tcp])
@pytest.mark.parametrize(("src", "dst"), [(V4S, V4D), (V6S, V6D)])
def test_good_packets_pass_and_a_flipped_payload_bit_fails(make: object, src: object, dst: object) -> None:
    p = make(src, dst)  # type: ignore[operator]
    assert checksums_valid(p)
    assert not checksums_valid(_flip(p, len(p) - 1))


def test_the_ipv4_header_checksum_is_checked() -> None:
    p = _udp(V4S, V4D)
    bad = bytearray(p)
    bad[8] -= 1  # TTL: only the header checksum covers it
    assert not checksums_valid(bytes(bad))


def test_udp_zero_checksum_means_none_in_ipv4_and_is_invalid_in_ipv6() -> None:
    for src, dst, ok in ((V4S, V4D, True), (V6S, V6D, False)):
        p = bytearray(_udp(src, dst))
        off = 20 if src.version == 4 else 40
        p[off + 6 : off + 8] = b"\0\0"
        assert checksums_valid(bytes(p)) is ok


def test_icmp_is_not_checked_as_in_the_reference() -> None:
    p = build_icmp_echo(V4S, V4D, 1, 1, b"ping")
    assert checksums_valid(_flip(p, len(p) - 1))


def test_garbage_is_invalid_never_an_exception() -> None:
    assert not checksums_valid(b"\x45\x00")
    assert not checksums_valid(b"")


def _harness(validate: bool) -> Harness:
    h = Harness(validate_checksums=validate)
    h.setup(cidr_resource())
    h.authorize(cidr_resource("2001:db8:1::/64", rid=DNS_ID), ref="v6")
    return h


@pytest.mark.parametrize(("src", "dst"), [(CL_TUN4, RES), (CL_TUN6, RES6)])
def test_client_to_tun_a_bad_checksum_is_dropped_and_counted(src: object, dst: object) -> None:
    h = _harness(True)
    good = _tcp(src, dst)
    assert h.send(good) == good
    assert h.send(_flip(good, len(good) - 1)) is None
    assert h.drops().get("bad_checksum") == 1
    assert h.send(good) == good


@pytest.mark.parametrize(("src", "dst"), [(RES, CL_TUN4), (RES6, CL_TUN6)])
def test_tun_to_client_a_bad_checksum_is_dropped_and_counted(src: object, dst: object) -> None:
    h = _harness(True)
    h.send(_udp(dst, src))  # (a packet out first, as a real flow would start)
    good = _udp(src, dst, b"reply")
    assert h.from_tun(good) == good
    assert h.from_tun(_flip(good, len(good) - 1)) is None
    assert h.drops().get("bad_checksum") == 1


def test_without_the_flag_bad_checksums_pass_both_ways() -> None:
    h = _harness(False)
    bad = _flip(_tcp(CL_TUN4, RES), 44)
    assert h.send(bad) == bad
    back = _flip(_udp(RES, CL_TUN4), 30)
    assert h.from_tun(back) == back
    assert "bad_checksum" not in h.drops()
