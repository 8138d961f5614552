"""The quick DNS query check: whole, truncated byte by byte, with trailing bytes, and on random bytes."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.name
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.dns.query_check import query_drop_reason
from gateway_core.errors import DropReason

QUESTION_END = 12 + len(b"\x04_sip\x04_tcp\x02fz\x04test\x00") + 4


def sample() -> bytes:
    q = dns.message.make_query("_sip._tcp.fz.test.", "SRV", use_edns=0, payload=1232)
    q.id = 0x4242
    return q.to_wire()


def test_whole_query_with_edns_is_accepted() -> None:
    wire = sample()
    assert len(wire) > QUESTION_END  # the OPT record follows the question
    assert query_drop_reason(wire) is None
    assert query_drop_reason(bytearray(wire)) is None
    assert query_drop_reason(memoryview(wire)) is None


def test_every_truncation_before_the_end_of_the_question_is_rejected() -> None:
    wire = sample()
    for n in range(QUESTION_END):
        assert query_drop_reason(wire[:n]) is DropReason.DNS_MALFORMED, n
    for n in range(QUESTION_END, len(wire) + 1):  # what follows the question is the full parser's job
        assert query_drop_reason(wire[:n]) is None, n


def test_trailing_bytes_are_left_to_the_full_parser() -> None:
    assert query_drop_reason(sample() + b"\x00\x01trailing") is None


def test_responses_other_opcodes_and_question_counts_are_rejected() -> None:
    wire = bytearray(sample())
    for flags2, qd in [(0x80, 1), (0x08, 1), (0x28, 1), (0x00, 0), (0x00, 2)]:
        bad = bytearray(wire)
        bad[2] |= flags2
        bad[4:6] = qd.to_bytes(2, "big")
        assert query_drop_reason(bytes(bad)) is DropReason.DNS_MALFORMED


def test_names_are_checked_label_by_label() -> None:
    header = sample()[:12]
    tail = b"\x00\x01\x00\x01"
    assert query_drop_reason(header + b"\x00" + tail) is None  # the root name
    assert query_drop_reason(header + b"\x3f" + b"a" * 63 + b"\x00" + tail) is None
    assert query_drop_reason(header + b"\x40" + b"a" * 64 + b"\x00" + tail) is DropReason.DNS_MALFORMED
    assert query_drop_reason(header + b"\xc0\x0c" + tail) is DropReason.DNS_MALFORMED
    longest = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3d" + b"a" * 61 + b"\x00"
    assert len(longest) == 255
    assert query_drop_reason(header + longest + tail) is None
    too_long = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3e" + b"a" * 62 + b"\x00"
    assert query_drop_reason(header + too_long + tail) is DropReason.DNS_MALFORMED


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert query_drop_reason(data) in (None, DropReason.DNS_MALFORMED)


@given(
    st.lists(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=6),
    st.sampled_from(["A", "AAAA", "SRV", "TXT", "MX"]),
)
def test_every_query_dnspython_builds_is_accepted(labels: list[str], rdtype: str) -> None:
    q = dns.message.make_query(dns.name.from_text(".".join(labels) + "."), rdtype)
    assert query_drop_reason(q.to_wire()) is None
    response = dns.message.make_response(q).to_wire()
    assert query_drop_reason(response) is DropReason.DNS_MALFORMED
