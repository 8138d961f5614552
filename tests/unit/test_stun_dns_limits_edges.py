"""STUN codec and DNS forwarding limits at their exact edges: what counts after MESSAGE-INTEGRITY and after
FINGERPRINT, the MESSAGE-INTEGRITY-SHA256 lengths, ERROR-CODE classes and numbers, the reserved bytes the
encoder writes, plain (not XOR-ed) addresses, the STUN pre-check's first byte and 16-bit length; the bounds
of the DNS forwarder's limits.

Written against the surviving mutants of ``make mutation`` (``docs/testing.md``): each test pins a boundary.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.dns.forwarding import DnsLimits
from gateway_core.errors import DecodeError, UsageError
from gateway_core.wire.stun import (
    Attr,
    Class,
    Method,
    StunMessage,
    decode,
    decode_error_code,
    encode_address,
    encode_error_code,
    is_stun,
)

TID = bytes(range(12))
SOFTWARE = 0x8022


def _raw(attrs: list[tuple[int, bytes]]) -> bytes:
    """A Binding request with these attributes, written by hand (no check of what they hold)."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)
    return struct.pack("!HHI12s", 0x0001, len(body), 0x2112A442, TID) + body


def test_attributes_after_integrity_and_after_fingerprint_do_not_count() -> None:
    sealed = decode(_raw([(Attr.MESSAGE_INTEGRITY, bytes(20)), (SOFTWARE, b"late")]))
    assert [a for a, _ in sealed.attributes] == [Attr.MESSAGE_INTEGRITY]
    assert sealed.integrity_at == 20
    sha = decode(_raw([(Attr.MESSAGE_INTEGRITY_SHA256, bytes(32)), (SOFTWARE, b"late")]))
    assert [a for a, _ in sha.attributes] == [Attr.MESSAGE_INTEGRITY_SHA256]
    done = decode(_raw([(Attr.FINGERPRINT, bytes(4)), (Attr.MESSAGE_INTEGRITY_SHA256, bytes(32))]))
    assert [a for a, _ in done.attributes] == [Attr.FINGERPRINT]
    assert done.fingerprint_at == 20 and done.integrity_sha256_at is None
    # After MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT still count.
    both = decode(_raw([(Attr.MESSAGE_INTEGRITY, bytes(20)), (Attr.FINGERPRINT, bytes(4)), (SOFTWARE, b"x")]))
    assert [a for a, _ in both.attributes] == [Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]


@pytest.mark.parametrize("n", [16, 20, 28, 32])
def test_integrity_sha256_of_16_to_32_bytes_in_steps_of_4(n: int) -> None:
    assert decode(_raw([(Attr.MESSAGE_INTEGRITY_SHA256, bytes(n))])).integrity_sha256_at == 20


@pytest.mark.parametrize("n", [12, 15, 17, 18, 30, 33, 36])
def test_integrity_sha256_of_other_lengths_is_malformed(n: int) -> None:
    with pytest.raises(DecodeError):
        decode(_raw([(Attr.MESSAGE_INTEGRITY_SHA256, bytes(n))]))


def test_unknown_attributes_list_of_16_bit_values() -> None:
    assert decode(_raw([(Attr.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00\x02")])).attributes
    with pytest.raises(DecodeError):
        decode(_raw([(Attr.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00")]))


@pytest.mark.parametrize(("cls", "number", "ok"), [(3, 0, True), (6, 99, True), (6, 0, True), (7, 0, False),
                                                   (2, 99, False), (4, 100, False)])  # fmt: skip
def test_error_code_classes_3_to_6_and_numbers_to_99(cls: int, number: int, ok: bool) -> None:
    value = bytes((0, 0, cls, number)) + b"reason"
    if ok:
        assert decode_error_code(value) == (cls * 100 + number, "reason")
    else:
        with pytest.raises(DecodeError):
            decode_error_code(value)


def test_error_code_reason_of_762_bytes_and_not_763() -> None:
    assert decode_error_code(bytes((0, 0, 4, 0)) + b"r" * 762)[1] == "r" * 762
    with pytest.raises(DecodeError):
        decode_error_code(bytes((0, 0, 4, 0)) + b"r" * 763)


def test_encoded_error_code_and_address_leave_reserved_bits_zero() -> None:
    assert encode_error_code(699, "x") == b"\x00\x00\x06\x63x"
    assert encode_error_code(300, "") == b"\x00\x00\x03\x00"
    for bad in (299, 700):
        with pytest.raises(ValueError):
            encode_error_code(bad, "x")
    assert (
        encode_address(SocketAddr(IPv4Address("192.0.2.1"), 3478), None)
        == b"\x00\x01\x0d\x96\xc0\x00\x02\x01"
    )


def test_plain_addresses_are_not_xored_and_no_error_code_is_none() -> None:
    addr = SocketAddr(IPv4Address("192.0.2.1"), 3478)
    m = StunMessage(Method.BINDING, Class.SUCCESS, TID)
    m.add(Attr.MAPPED_ADDRESS, encode_address(addr, None))
    d = decode(m.encode())
    assert d.address(Attr.MAPPED_ADDRESS) == addr
    assert d.addresses(Attr.MAPPED_ADDRESS) == [addr]
    assert d.error_code() is None


def test_stun_precheck_first_byte_and_a_length_over_255() -> None:
    big = StunMessage(Method.BINDING, Class.REQUEST, TID).add(SOFTWARE + 1, bytes(300)).encode()
    assert is_stun(big) and len(big) - 20 > 255
    assert not is_stun(b"\x04" + big[1:])  # first byte 4 is no STUN message (channel data starts at 0x40)
    assert is_stun(b"\x03" + big[1:])


def test_dns_limits_accept_their_bounds_and_refuse_beyond() -> None:
    DnsLimits(in_flight=1, client_in_flight=1, client_rate=1_000_000_000, client_burst=1)
    DnsLimits(client_rate=0)
    for bad in (
        {"in_flight": 0},
        {"client_in_flight": 0},
        {"client_rate": -1},
        {"client_rate": 1_000_000_001},
        {"client_burst": 0},
    ):
        with pytest.raises(UsageError):
            DnsLimits(**bad)
