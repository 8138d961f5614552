"""The structural DNS check (``gateway_core.dns.wire``) against dnspython, which it replaces on the
forwarding path: whatever dnspython accepts as a one-question query or response, the check accepts with the
same name; it may accept more (it does not decode RDATA by type)."""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.dns.wire import check_message, question
from gateway_core.errors import DecodeError


def srv_answer() -> bytes:
    q = dns.message.make_query("_http._tcp.fz.test", "SRV", use_edns=True)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("_http._tcp.fz.test.", 60, "IN", "SRV", "10 5 80 web.fz.test."))
    r.additional.append(dns.rrset.from_text("web.fz.test.", 60, "IN", "A", "172.20.1.10"))
    return r.to_wire()  # compressed names in the records


def test_query_and_response_names() -> None:
    q = dns.message.make_query("_http._tcp.Fz.Test", "SRV", use_edns=True).to_wire()
    assert check_message(q, response=False) == "_http._tcp.Fz.Test"
    assert check_message(srv_answer(), response=True) == "_http._tcp.fz.test"
    with pytest.raises(DecodeError, match="not a query"):
        check_message(srv_answer(), response=False)
    with pytest.raises(DecodeError, match="not a response"):
        check_message(q, response=True)


def test_names_are_written_as_dnspython_writes_them() -> None:
    for labels in ([b"a b", b"x.y", b'\xff"()', b"ok"], [b"@$;\\", b"-_*"], [], [b"\x00\x7f"]):
        name = dns.name.Name([*labels, b""])
        wire = dns.message.make_query(name, "TXT").to_wire()
        assert check_message(wire, response=False) == name.to_text(omit_final_dot=True)


def test_whole_messages_only() -> None:
    wire = srv_answer()
    for n in range(len(wire)):
        with pytest.raises(DecodeError):
            check_message(wire[:n], response=True)
    with pytest.raises(DecodeError, match="trailing"):
        check_message(wire + b"\x00", response=True)
    q = dns.message.make_query("a.test", "TXT").to_wire()
    with pytest.raises(DecodeError, match="question"):
        check_message(q[:12] + b"\xc0\x0c\x00\x10\x00\x01", response=False)  # pointer in the question
    two = q[:5] + b"\x02" + q[6:]
    with pytest.raises(DecodeError, match="one question"):
        check_message(two, response=False)
    long = q[:12] + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x10\x00\x01"
    with pytest.raises(DecodeError, match="too long"):
        question(long)


def _dnspython(wire: bytes, response: bool) -> str | None:
    try:
        msg = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError, KeyError, UnicodeError):
        return None
    if bool(msg.flags & dns.flags.QR) != response or len(msg.question) != 1:
        return None
    return msg.question[0].name.to_text(omit_final_dot=True)  # type: ignore[no-any-return]


@settings(max_examples=400)
@given(st.data())
def test_accepts_whatever_dnspython_accepts_with_the_same_name(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([srv_answer(), dns.message.make_query("x.fz.test", "TXT").to_wire()]))
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(buf) - 1))
        buf[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    wire = bytes(buf[:cut]) + data.draw(st.binary(max_size=8))
    for response in (False, True):
        want = _dnspython(wire, response)
        try:
            got: str | None = check_message(wire, response=response)
        except DecodeError:
            got = None
        if want is not None:
            assert got == want
