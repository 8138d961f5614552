"""Codec edges the round-trip tests did not pin: DNS names at the 255-byte limit in the question and in
records, label and pointer types, record counts and RDATA lengths over 255; the first-byte classifier of
what arrives on the gateway's socket; ChannelData and TURN attribute limits; the ``--validate-checksums``
check on empty and oversized UDP.

Written against the surviving mutants of ``make mutation`` (``docs/testing.md``): each test pins an exact
boundary.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.dns.wire import MAX_NAME_LEN, check_message, question
from gateway_core.errors import DecodeError
from gateway_core.wire.checksum import internet_checksum, pseudo_header_sum
from gateway_core.wire.ip import PROTO_UDP, build_ipv4, build_ipv6, build_udp
from gateway_core.wire.stun import Attr, Class, Method, StunMessage
from gateway_core.wire.turn import (
    Kind,
    allocate,
    classify,
    decode_channel_data,
    encode_channel_data,
    encode_channel_number,
    relayed_addresses,
)
from gateway_core.wire.verify import checksums_valid

# --- DNS ----------------------------------------------------------------------------------------------------


def header(*, response: bool, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, 0x8180 if response else 0x0100, 1, an, ns, ar)


def wire_name(labels: list[int]) -> bytes:
    """A name of labels of the given lengths ("a" * n each), root-terminated."""
    return b"".join(bytes([n]) + b"a" * n for n in labels) + b"\x00"


def labels_of_total(total: int) -> list[int]:
    """Label lengths whose length octets and bytes add up to ``total`` (each label at most 63 bytes)."""
    out = []
    while total > 0:
        n = min(63, total - 1)
        out.append(n)
        total -= n + 1
    return out


QUESTION_TAIL = b"\x00\x10\x00\x01"  # TXT IN


def record(owner: bytes, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", 16, 1, 60, len(rdata)) + rdata


def test_question_names_up_to_the_255_byte_limit() -> None:
    """The wire form of a name (labels with their length octets, and the root) is at most 255 bytes."""
    longest = labels_of_total(MAX_NAME_LEN - 1)
    assert len(wire_name(longest)) == MAX_NAME_LEN
    name, at = question(header(response=False) + wire_name(longest) + QUESTION_TAIL)
    assert len(name) == MAX_NAME_LEN - 2 and at == 12 + MAX_NAME_LEN + 4
    with pytest.raises(DecodeError):
        question(header(response=False) + wire_name(labels_of_total(MAX_NAME_LEN)) + QUESTION_TAIL)


def test_question_labels_of_63_bytes_and_not_64() -> None:
    assert question(header(response=False) + wire_name([63]) + QUESTION_TAIL)[0] == "a" * 63
    with pytest.raises(DecodeError):
        question(header(response=False) + b"\x40" + b"a" * 64 + b"\x00" + QUESTION_TAIL)


def test_question_needs_its_type_and_class() -> None:
    msg = header(response=False) + wire_name([3])
    for cut in range(4):
        with pytest.raises(DecodeError):
            question(msg + QUESTION_TAIL[:cut])
    assert question(msg + QUESTION_TAIL) == ("aaa", len(msg) + 4)


def test_record_owner_names_up_to_the_255_byte_limit() -> None:
    q = header(response=True, an=1) + wire_name([3]) + QUESTION_TAIL
    ok = q + record(wire_name(labels_of_total(MAX_NAME_LEN - 1)), b"\x01x")
    assert check_message(ok, response=True) == "aaa"
    for total in (MAX_NAME_LEN, MAX_NAME_LEN + 40):
        with pytest.raises(DecodeError):
            check_message(q + record(wire_name(labels_of_total(total)), b"\x01x"), response=True)


def test_record_owner_pointers_and_reserved_label_types() -> None:
    q = header(response=True, an=1) + wire_name([3]) + QUESTION_TAIL
    for pointer in (b"\xc0\x0c", b"\xc1\x00", b"\xff\xff"):  # any 14-bit offset: not followed here
        assert check_message(q + record(pointer, b"\x01x"), response=True) == "aaa"
    for reserved in (b"\x40\x0c", b"\x80\x0c"):
        with pytest.raises(DecodeError):
            check_message(q + record(reserved, b"\x01x"), response=True)


def test_every_section_counts_and_rdata_over_255_bytes() -> None:
    q = wire_name([3]) + QUESTION_TAIL
    txt = b"\xff" + b"t" * 255 + b"\x2c" + b"u" * 44  # 301 bytes of RDATA: the length's high byte counts
    for an, ns, ar in ((1, 1, 0), (0, 1, 1), (1, 0, 1), (2, 1, 1)):
        msg = header(response=True, an=an, ns=ns, ar=ar) + q + record(b"\xc0\x0c", txt) * (an + ns + ar)
        assert check_message(msg, response=True) == "aaa"
        with pytest.raises(DecodeError):
            check_message(msg[:-1], response=True)


# --- what arrives on the socket -----------------------------------------------------------------------------

COOKIE = b"\x21\x12\xa4\x42"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x01\x00\x00\x00", Kind.WIREGUARD),  # exactly the four bytes of a WireGuard type
        (b"\x04\x00\x00\x00", Kind.WIREGUARD),
        (b"\x01\x00\x00\x00" + COOKIE + bytes(12), Kind.STUN),  # 20 bytes with the magic cookie
        (b"\x01\x00\x00\x00" + COOKIE + bytes(11), Kind.WIREGUARD),  # 19: too short for STUN
        (b"\x01\x00\x00\x00\x00" + COOKIE[1:] + bytes(12), Kind.WIREGUARD),  # no cookie at byte 4
        (b"\x01\x00", Kind.STUN),  # too short for WireGuard: the STUN parser decides
        (b"\x00\x00\x00\x00", Kind.STUN),  # type 0 is no WireGuard message
        (b"\x01\x05\x00\x00", Kind.STUN),
        (b"\x01\x00\x05\x00", Kind.STUN),
        (b"\x01\x00\x00\x05", Kind.STUN),
        (b"\x04\x05\x00\x00", Kind.UNKNOWN),
        (b"\x04\x00\x05\x00", Kind.UNKNOWN),
        (b"\x04\x00\x00\x05\x00", Kind.UNKNOWN),
        (b"\x04\x00\x00", Kind.UNKNOWN),
        (b"\x40\x00", Kind.CHANNEL_DATA),
        (b"\x4f\xff", Kind.CHANNEL_DATA),
        (b"\x50\x00", Kind.UNKNOWN),
        (b"", Kind.UNKNOWN),
    ],
)
def test_first_bytes_classify_a_datagram(data: bytes, kind: Kind) -> None:
    assert classify(data) == kind


def test_channel_data_limits() -> None:
    assert decode_channel_data(b"\x40\x00\x00\x02ab", exact=False) == (0x4000, b"ab")
    assert decode_channel_data(b"\x40\x00\x00\x02abcd", exact=False) == (0x4000, b"ab")
    with pytest.raises(DecodeError):
        decode_channel_data(b"\x40\x00\x00\x03ab", exact=False)
    big = bytes(0xFFFF)
    assert decode_channel_data(encode_channel_data(0x4001, big)) == (0x4001, big)
    with pytest.raises(ValueError):
        encode_channel_data(0x4001, big + b"x")


def test_turn_attribute_values() -> None:
    assert encode_channel_number(0x4001) == b"\x40\x01\x00\x00"  # 16 reserved bits, zero
    plain = allocate(bytes(12), additional_family=2)
    assert Attr.ADDITIONAL_ADDRESS_FAMILY in {a for a, _ in plain.attributes}
    assert Attr.ADDITIONAL_ADDRESS_FAMILY_DRAFT not in {a for a, _ in plain.attributes}  # only when asked


def test_relayed_addresses_skip_a_port_of_zero_and_unspecified_addresses() -> None:
    m = StunMessage(Method.ALLOCATE, Class.SUCCESS, bytes(12))
    m.add_xor_address(Attr.XOR_RELAYED_ADDRESS, SocketAddr(IPv4Address("192.0.2.1"), 0))
    m.add_xor_address(Attr.XOR_RELAYED_ADDRESS, SocketAddr(IPv4Address("0.0.0.0"), 5000))
    m.add_xor_address(Attr.XOR_RELAYED_ADDRESS, SocketAddr(IPv4Address("192.0.2.2"), 5001))
    m.add_xor_address(Attr.XOR_RELAYED_ADDRESS, SocketAddr(IPv6Address("::"), 5002))
    assert relayed_addresses(m) == (SocketAddr(IPv4Address("192.0.2.2"), 5001), None)


# --- --validate-checksums -----------------------------------------------------------------------------------

V4A, V4B = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
V6A, V6B = IPv6Address("fd00::1"), IPv6Address("2001:db8::1")


def test_checksums_of_empty_and_one_byte_short_udp() -> None:
    assert checksums_valid(build_ipv4(V4A, V4B, PROTO_UDP, build_udp(V4A, V4B, 1, 2, b"")))
    assert checksums_valid(build_ipv6(V6A, V6B, PROTO_UDP, build_udp(V6A, V6B, 1, 2, b"")))
    assert not checksums_valid(build_ipv4(V4A, V4B, PROTO_UDP, bytes(7)))  # never raises


def test_checksum_with_one_zero_byte_is_checked() -> None:
    good = build_udp(V4A, V4B, 1, 2, b"data")
    for bad in (b"\xab\x00", b"\x00\xab"):
        assert good[6:8] != bad
        assert not checksums_valid(build_ipv4(V4A, V4B, PROTO_UDP, good[:6] + bad + good[8:]))
    assert checksums_valid(build_ipv4(V4A, V4B, PROTO_UDP, good[:6] + b"\x00\x00" + good[8:]))


def test_udp_length_over_255_and_beyond_the_packet() -> None:
    seg = build_udp(V4A, V4B, 1, 2, bytes(292))  # length 300
    assert checksums_valid(build_ipv4(V4A, V4B, PROTO_UDP, seg + b"trailing"))
    # A length 10 bytes beyond the IP payload, with a checksum that would verify over the bytes there are.
    longer = bytearray(seg)
    longer[4:6] = struct.pack("!H", len(seg) + 10)
    longer[6:8] = b"\x00\x00"
    csum = internet_checksum(bytes(longer), pseudo_header_sum(V4A, V4B, PROTO_UDP, len(longer)))
    longer[6:8] = struct.pack("!H", csum)
    assert internet_checksum(bytes(longer), pseudo_header_sum(V4A, V4B, PROTO_UDP, len(longer))) == 0
    assert not checksums_valid(build_ipv4(V4A, V4B, PROTO_UDP, bytes(longer)))
