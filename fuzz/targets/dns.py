"""DNS queries as the forwarder reads them (``gateway_core/dns/query_check.py``, ``forwarding.py``).

Contract checked on any message: ``query_drop_reason`` never raises; ``DnsForwarder.handle_query`` never
raises (a malformed query is dropped and counted) and either forwards the query unchanged or answers it
(REFUSED) with a response that has the query's id, QR set and the query's question; a message the quick
check accepts has a whole first question (``question_end`` and ``error_response`` work on it). As an
upstream answer to a pending query, any message makes the forwarder send exactly one response, never
longer than the transport's limit, with the pending query's question.

Input: one mode byte (transport, whether the client may ask, which path), then the message.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import dns.flags
import dns.message

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.dns import forwarding as fw
from gateway_core.dns.query_check import query_drop_reason
from gateway_core.dns.servers import DnsTransport
from gateway_core.errors import DecodeError

LOCAL = SocketAddr(IPv4Address("100.64.0.1"), 53535)
REMOTE = SocketAddr(IPv4Address("100.64.0.2"), 40000)
QUERY = dns.message.make_query("_sip._udp.app.example.com", "SRV", id=0x1234).to_wire()
"""The pending query the upstream-answer path answers."""


def _responses(f: fw.DnsForwarder) -> list[fw.SendDnsResponse]:
    out: list[fw.SendDnsResponse] = []
    while (c := f.poll_command()) is not None:
        if isinstance(c, fw.SendDnsResponse):
            out.append(c)
    return out


def _check_answers(query: bytes, response: bytes, limit: int) -> None:
    assert len(response) <= limit, f"response of {len(response)} bytes over {limit}"
    assert response[:2] == query[:2] or len(response) > 12, "response without the query's id"
    assert response[2] & 0x80, "response without QR"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, message = data[0], data[1:]
    transport = DnsTransport.TCP if mode & 1 else DnsTransport.UDP
    limit = fw.TCP_RESPONSE_LIMIT if mode & 1 else fw.UDP_RESPONSE_LIMIT
    allowed = bool(mode & 2)
    quick = query_drop_reason(message)
    if quick is None:
        end = fw.question_end(message)
        assert 12 < end <= len(message)
        fw.error_response(message, fw.RCODE_REFUSED)
    f = fw.DnsForwarder(lambda ip, name: allowed)
    now = Instant(0)
    if mode & 4:  # upstream answer path
        f.handle_query(now, fw.DnsQueryReceived(LOCAL, REMOTE, transport, QUERY))
        forwarded = f.poll_command()
        assert isinstance(forwarded, fw.ForwardDnsQuery) or not allowed
        if not isinstance(forwarded, fw.ForwardDnsQuery):
            return
        f.handle_upstream_response(now, fw.DnsUpstreamResponse(forwarded.query_id, message))
        (sent,) = _responses(f)
        assert sent.transport is transport and sent.remote == REMOTE
        assert len(sent.message) <= limit
        assert fw.question_end(sent.message) > 12
        assert f.in_flight == 0 and f.poll_timeout() is None
        return
    f.handle_query(now, fw.DnsQueryReceived(LOCAL, REMOTE, transport, message))
    commands = []
    while (c := f.poll_command()) is not None:
        commands.append(c)
    assert len(commands) <= 1
    if not commands:
        assert f.stats.snapshot(), "a query vanished without a drop counted"
        return
    (c,) = commands
    if isinstance(c, fw.ForwardDnsQuery):
        assert allowed and c.message == message and c.transport is transport
        msg = dns.message.from_wire(message)
        assert not msg.flags & dns.flags.QR
        f.handle_timeout(Instant(now + secs(5)))
        (servfail,) = _responses(f)
        _check_answers(message, servfail.message, limit)
    else:
        assert isinstance(c, fw.SendDnsResponse) and not allowed
        _check_answers(message, c.message, limit)
        try:
            fw.question_end(c.message)
        except DecodeError as e:
            raise AssertionError("REFUSED without a whole question") from e
