"""SRV/TXT forwarding decisions (as Firezone's layer-4 DNS servers and recursive resolution;
decisions 0048-0049)."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address, ip_network

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command
from gateway_core.dns.forwarding import (
    CLIENT_BURST,
    CLIENT_RATE,
    MAX_IN_FLIGHT,
    MAX_IN_FLIGHT_PER_CLIENT,
    UDP_RESPONSE_LIMIT,
    UPSTREAM_TIMEOUT,
    DnsForwarder,
    DnsLimits,
    DnsQueryReceived,
    DnsUpstreamFailed,
    DnsUpstreamResponse,
    ForwardDnsQuery,
    RateLimiter,
    SendDnsResponse,
    error_response,
    question_end,
    truncate_response,
)
from gateway_core.dns.servers import DnsTransport
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.inputs import Input
from gateway_core.policy.client import ClientPolicy
from gateway_core.policy.nat import MAX_NAT_SESSIONS
from gateway_core.policy.resources import CidrResource, DnsResource

CLIENT = IPv4Address("100.64.0.1")
CLIENT_B = IPv4Address("100.64.0.3")
LOCAL = SocketAddr(IPv4Address("100.64.0.9"), 53535)
REMOTE = SocketAddr(CLIENT, 40000)
REMOTE_B = SocketAddr(CLIENT_B, 40000)
NO_RATE = DnsLimits(client_rate=0)
UDP, TCP = DnsTransport.UDP, DnsTransport.TCP


def query(name: str = "_sip._tcp.app.example.com", rdtype: str = "SRV", qid: int = 0x1234) -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = qid
    return q.to_wire()


def policy() -> ClientPolicy:
    p = ClientPolicy(
        uuid.UUID(int=1),
        CLIENT,
        IPv6Address("fd00:2021:1111::1"),
        LOCAL.ip,
        IPv6Address("fd00:2021:1111::9"),
        None,
        MAX_NAT_SESSIONS,
    )  # type: ignore[arg-type]
    p.allow(DnsResource(uuid.UUID(int=2), "app", "**.app.example.com", ()), None)
    p.allow(CidrResource(uuid.UUID(int=3), "net", ip_network("10.0.0.0/8"), ()), None)
    return p


def forwarder(limits: DnsLimits | None = None) -> DnsForwarder:
    clients = {CLIENT: policy(), CLIENT_B: policy()}

    def may_query(ip: IPAddress, name: str) -> bool:
        c = clients.get(ip)  # type: ignore[call-overload]
        return c is not None and c.may_query(name)

    return DnsForwarder(may_query, limits)


def drain(f: DnsForwarder) -> list[Command]:
    out = []
    while (c := f.poll_command()) is not None:
        out.append(c)
    return out


def rcode_of(message: bytes) -> int:
    return dns.message.from_wire(message).rcode()


def test_authorised_name_is_forwarded_and_answered() -> None:
    f = forwarder()
    q = query()
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, q))
    [fwd] = drain(f)
    assert isinstance(fwd, ForwardDnsQuery) and fwd.message == q and fwd.transport is UDP
    assert f.poll_timeout() is not None and f.poll_timeout().at == UPSTREAM_TIMEOUT  # type: ignore[union-attr]
    resp = dns.message.make_response(dns.message.from_wire(q))
    resp.answer.append(
        dns.rrset.from_text(resp.question[0].name, 60, "IN", "SRV", "0 5 5060 sip.app.example.com.")
    )
    wire = resp.to_wire()
    f.handle_input(Instant(1), DnsUpstreamResponse(fwd.query_id, wire))
    [send] = drain(f)
    assert send == SendDnsResponse(LOCAL, REMOTE, UDP, wire)
    assert f.in_flight == 0 and f.poll_timeout() is None
    assert f.stats.counters["dns_forwarded"] == 1


def test_foreign_names_and_unknown_clients_are_refused() -> None:
    f = forwarder()
    for remote, name in (
        (REMOTE, "_x._tcp.other.com"),
        (SocketAddr(IPv4Address("100.64.0.2"), 1), "_sip._tcp.app.example.com"),
    ):
        q = query(name)
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, remote, TCP, q))
        [send] = drain(f)
        assert isinstance(send, SendDnsResponse) and send.remote == remote and send.transport is TCP
        r = dns.message.from_wire(send.message)
        assert r.rcode() == dns.rcode.REFUSED and r.id == 0x1234 and r.flags & dns.flags.QR
        assert r.flags & dns.flags.RD and not r.flags & (dns.flags.AA | dns.flags.TC | dns.flags.RA)
        assert [str(x.name) for x in r.question] == [name + "."] and not r.answer and r.edns < 0
    assert f.stats.drops[DropReason.DNS_REFUSED] == 2


def test_failure_timeout_and_bad_upstream_answer_give_servfail() -> None:
    f = forwarder()
    for _ in range(3):
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    a, b, c = drain(f)
    assert (
        isinstance(a, ForwardDnsQuery) and isinstance(b, ForwardDnsQuery) and isinstance(c, ForwardDnsQuery)
    )
    assert f.handle_input(Instant(1), DnsUpstreamFailed(a.query_id, "connection refused")) is True
    assert f.stats.counters["dns_servfail"] == 1
    f.handle_upstream_response(Instant(1), DnsUpstreamResponse(b.query_id, query()))  # QR=0: not a response
    assert [rcode_of(x.message) for x in drain(f)] == [dns.rcode.SERVFAIL] * 2  # type: ignore[attr-defined]
    f.handle_timeout(Instant(UPSTREAM_TIMEOUT - 1))
    assert drain(f) == []
    f.handle_timeout(Instant(UPSTREAM_TIMEOUT))
    [late] = drain(f)
    assert rcode_of(late.message) == dns.rcode.SERVFAIL  # type: ignore[attr-defined]
    assert f.stats.counters["dns_servfail"] == 3 and f.stats.counters["dns_upstream_timeout"] == 1
    # A response after the timeout is ignored.
    f.handle_upstream_response(Instant(UPSTREAM_TIMEOUT + 1), DnsUpstreamResponse(c.query_id, b""))
    assert drain(f) == [] and f.stats.counters["dns_upstream_unmatched"] == 1
    f.handle_upstream_failed(Instant(UPSTREAM_TIMEOUT + 1), DnsUpstreamFailed(999, "x"))
    assert f.stats.counters["dns_upstream_unmatched"] == 2


def test_too_many_in_flight_gives_servfail_at_once() -> None:
    f = forwarder(DnsLimits(client_in_flight=MAX_IN_FLIGHT, client_rate=0))
    for _ in range(MAX_IN_FLIGHT):
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    assert len(drain(f)) == MAX_IN_FLIGHT
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    [send] = drain(f)
    assert isinstance(send, SendDnsResponse) and rcode_of(send.message) == dns.rcode.SERVFAIL
    assert f.stats.drops[DropReason.QUEUE_FULL] == 1


def test_malformed_queries_are_dropped_without_reply() -> None:
    f = forwarder()
    two = dns.message.make_query("a.app.example.com", "TXT")
    two.question.append(two.question[0])
    for bad in (
        b"",
        b"\x00" * 11,
        query()[:-1],
        dns.message.make_response(dns.message.from_wire(query())).to_wire(),
        two.to_wire(),
    ):
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, bad))
    assert drain(f) == [] and f.stats.drops[DropReason.DNS_MALFORMED] == 5
    assert f.handle_input(Instant(0), Input()) is False
    with pytest.raises(UsageError):
        f.handle_timeout(Instant(-1))


def test_udp_answers_are_truncated_tcp_ones_are_not() -> None:
    q = query("big.app.example.com", "TXT", qid=7)
    resp = dns.message.make_response(dns.message.from_wire(q))
    rrs = [f'"{i}{"x" * 200}"' for i in range(8)]
    resp.answer.append(dns.rrset.from_text(resp.question[0].name, 60, "IN", "TXT", *rrs))
    wire = resp.to_wire()
    assert len(wire) > UDP_RESPONSE_LIMIT
    for transport in (UDP, TCP):
        f = forwarder()
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, transport, q))
        [fwd] = drain(f)
        f.handle_upstream_response(Instant(0), DnsUpstreamResponse(fwd.query_id, wire))  # type: ignore[attr-defined]
        [send] = drain(f)
        if transport is TCP:
            assert send.message == wire  # type: ignore[attr-defined]
        else:
            t = dns.message.from_wire(send.message)  # type: ignore[attr-defined]
            assert t.flags & dns.flags.TC and t.id == 7 and not t.answer and len(t.question) == 1
            assert send.message == truncate_response(wire, UDP_RESPONSE_LIMIT)  # type: ignore[attr-defined]
            assert send.message[:2] == wire[:2] and send.message[4:12] == bytes([0, 1, 0, 0, 0, 0, 0, 0])  # type: ignore[attr-defined]


def test_wire_helpers() -> None:
    q = query()
    assert question_end(q) == len(q)  # a plain query is header + question
    r = error_response(q, 2)
    assert rcode_of(r) == dns.rcode.SERVFAIL and len(r) == question_end(q)
    assert truncate_response(q, len(q)) == q
    for n in range(12, question_end(q)):
        with pytest.raises(DecodeError):
            question_end(q[:n])
    with pytest.raises(DecodeError):
        question_end(q[:12] + b"\x80abc")  # reserved label type
    pointer = q[:12] + b"\xc0\x0c" + b"\x00\x21\x00\x01"
    assert question_end(pointer) == len(pointer)


@given(st.binary(max_size=64))
def test_random_bytes_never_raise(data: bytes) -> None:
    f = forwarder()
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, data))
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    fwd = [c for c in drain(f) if isinstance(c, ForwardDnsQuery)]
    f.handle_upstream_response(Instant(0), DnsUpstreamResponse(fwd[0].query_id, data))
    [send] = drain(f)
    assert isinstance(send, SendDnsResponse)


def test_client_may_query_uses_dns_patterns_only() -> None:
    p = policy()
    assert p.may_query("app.example.com") and p.may_query("_s._tcp.x.app.example.com")
    assert not p.may_query("example.com") and not p.may_query("10.in-addr.arpa")


def test_one_client_holds_at_most_its_share_of_the_slots() -> None:
    f = forwarder(NO_RATE)
    for _ in range(MAX_IN_FLIGHT_PER_CLIENT):
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    mine = drain(f)
    assert len(mine) == MAX_IN_FLIGHT_PER_CLIENT and all(isinstance(c, ForwardDnsQuery) for c in mine)
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    [full] = drain(f)
    assert isinstance(full, SendDnsResponse) and rcode_of(full.message) == dns.rcode.SERVFAIL
    assert f.stats.drops[DropReason.QUEUE_FULL] == 1
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE_B, UDP, query()))  # another client: fine
    [other] = drain(f)
    assert isinstance(other, ForwardDnsQuery)
    # An answer (or a failure, or a timeout) frees the slot it held.
    f.handle_upstream_failed(Instant(1), DnsUpstreamFailed(mine[0].query_id, "x"))  # type: ignore[attr-defined]
    drain(f)
    f.handle_query(Instant(1), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    assert isinstance(drain(f)[0], ForwardDnsQuery)
    f.handle_timeout(Instant(UPSTREAM_TIMEOUT + 1))
    assert len(drain(f)) == MAX_IN_FLIGHT_PER_CLIENT + 1 and f.in_flight == 0
    for _ in range(MAX_IN_FLIGHT_PER_CLIENT):
        f.handle_query(Instant(UPSTREAM_TIMEOUT + 1), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    assert all(isinstance(c, ForwardDnsQuery) for c in drain(f))


def test_a_client_beyond_its_rate_gets_servfail_without_upstream_work() -> None:
    f = forwarder(DnsLimits(client_in_flight=MAX_IN_FLIGHT))  # the rate alone
    for _ in range(CLIENT_BURST):
        f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    assert all(isinstance(c, ForwardDnsQuery) for c in drain(f))
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query(qid=77)))
    [limited] = drain(f)
    assert isinstance(limited, SendDnsResponse) and rcode_of(limited.message) == dns.rcode.SERVFAIL
    assert limited.message[:2] == b"\x00\x4d" and f.stats.drops[DropReason.DNS_RATE_LIMITED] == 1
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE, UDP, query() + b"junk"))  # malformed:
    assert drain(f) == [] and f.stats.drops[DropReason.DNS_MALFORMED] == 1  # dropped, no answer, no token
    assert f.stats.drops[DropReason.DNS_RATE_LIMITED] == 1
    # Another client is not affected; and the first gets one query per interval back.
    f.handle_query(Instant(0), DnsQueryReceived(LOCAL, REMOTE_B, UDP, query()))
    assert isinstance(drain(f)[0], ForwardDnsQuery)
    interval = 1_000_000_000 // CLIENT_RATE
    f.handle_query(Instant(interval), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    assert isinstance(drain(f)[0], ForwardDnsQuery)
    f.handle_query(Instant(interval), DnsQueryReceived(LOCAL, REMOTE, UDP, query()))
    assert isinstance(drain(f)[0], SendDnsResponse)


def test_rate_limiter_is_a_token_bucket_and_bounded() -> None:
    r = RateLimiter(rate=10, burst=3)  # one query per 100 ms, three at once
    a = IPv4Address("100.64.0.7")
    assert [r.admit(Instant(0), a) for _ in range(4)] == [True, True, True, False]
    assert not r.admit(Instant(99_999_999), a)
    assert r.admit(Instant(100_000_000), a)
    assert [r.admit(Instant(10**9), a) for _ in range(4)] == [True, True, True, False]  # refilled, no more
    assert all(RateLimiter(0, 1).admit(Instant(0), a) for _ in range(1000))  # rate 0: unlimited
    many = RateLimiter(rate=1, burst=1)
    for i in range(70_000):
        many.admit(Instant(i), IPv4Address(i))
    assert len(many) <= 65536
    with pytest.raises(UsageError):
        DnsLimits(client_burst=0)
    with pytest.raises(UsageError):
        DnsLimits(in_flight=0)
