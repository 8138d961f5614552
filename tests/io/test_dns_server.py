"""UdpDnsServer and TcpDnsServer with real sockets on loopback (127.0.0.1-3 and ::1, port 0)."""

from __future__ import annotations

import errno
import socket
import struct

import anyio
import anyio.abc
import dns.asyncquery
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from anyio import wait_all_tasks_blocked

from gateway_core.dns.servers import DnsTransport
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DropReason
from gateway_io.dns_server import DnsQuery, TcpDnsServer, TcpLimits, UdpDnsServer
from tests.io.dns_responder import BIG_TXT_STRINGS, answer

pytestmark = pytest.mark.anyio

ADDRESSES = [("127.0.0.1", 0), ("127.0.0.2", 0), ("127.0.0.3", 0), ("::1", 0)]
WAIT = 10  # seconds a condition may take before the test fails (never reached when things work)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def respond(server: UdpDnsServer | TcpDnsServer) -> None:
    async for query in server:
        await server.send_response(query.remote, answer(query))


def frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def query_wire(name: str, rdtype: str = "TXT", qid: int | None = None) -> bytes:
    q = dns.message.make_query(name, rdtype)
    if qid is not None:
        q.id = qid
    return q.to_wire()


async def read_frame(stream: anyio.abc.SocketStream, buf: bytearray) -> bytes | None:
    """One length-prefixed message from ``stream`` (``None`` at end of stream)."""
    while True:
        if len(buf) >= 2:
            (n,) = struct.unpack("!H", buf[:2])
            if len(buf) >= 2 + n:
                msg = bytes(buf[2 : 2 + n])
                del buf[: 2 + n]
                return msg
        try:
            buf += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None


async def wait_closed(stream: anyio.abc.SocketStream) -> None:
    """Wait until the server closes ``stream`` (end of stream or a reset)."""
    with anyio.fail_after(WAIT):
        while True:
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return


def txt_strings(wire: bytes) -> list[bytes]:
    msg = dns.message.from_wire(wire)
    return [s for rr in msg.answer[0] for s in rr.strings]


# --- UDP ------------------------------------------------------------------------------------------------


async def test_udp_answers_on_every_loopback_address_and_ipv6() -> None:
    servers = [await UdpDnsServer.bind(a) for a in ADDRESSES]
    try:
        async with anyio.create_task_group() as tg:
            for s in servers:
                tg.start_soon(respond, s)
            for s in servers:
                host, port = s.local_address
                assert port != 0
                q = dns.message.make_query("who.fz.test.", "TXT")
                with anyio.fail_after(WAIT):
                    r = await dns.asyncquery.udp(q, host, port=port, timeout=WAIT)
                assert r.id == q.id
                assert r.answer[0][0].strings == (f"udp {host} {port}".encode(),)
            tg.cancel_scope.cancel()
    finally:
        for s in servers:
            await s.aclose()
    assert [s.stats.counters["udp.queries"] for s in servers] == [1, 1, 1, 1]
    assert [s.stats.counters["udp.responses"] for s in servers] == [1, 1, 1, 1]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_udp_query_fields_and_response_to_the_sender(host: str) -> None:
    server = await UdpDnsServer.bind((host, 0))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    async with await anyio.create_udp_socket(family=family, local_host=host) as client:
        wire = query_wire("fields.fz.test.", "A", qid=0x1234)
        await client.sendto(wire, *server.local_address)
        with anyio.fail_after(WAIT):
            query = await server.receive()
        assert isinstance(query, DnsQuery)
        assert query.local == server.local_address
        assert query.remote == client.extra(anyio.abc.SocketAttribute.local_address)[:2]
        assert query.message == wire
        assert query.transport is DnsTransport.UDP
        assert await server.send_response(query.remote, b"\x12\x34" + answer(query)[2:])
        with anyio.fail_after(WAIT):
            data, sender = await client.receive()
        assert sender[:2] == server.local_address
        assert dns.message.from_wire(data).answer[0][0].address == "192.0.2.53"
    await server.aclose()


async def test_udp_malformed_datagrams_dropped_counted_and_not_fatal() -> None:
    server = await UdpDnsServer.bind(("127.0.0.1", 0))
    good = query_wire("ok.fz.test.")
    response = dns.message.make_response(dns.message.from_wire(good)).to_wire()
    two_questions = good[:4] + b"\x00\x02" + good[6:]
    bad = [
        b"",  # empty
        b"\x00" * 11,  # shorter than a header
        good[:12],  # header only: the question is missing
        good[:-1],  # QCLASS cut short
        response,  # a response, not a query
        two_questions,
        good[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x10\x00\x01",  # label longer than 63
        good[:12] + b"\xc0\x0c\x00\x10\x00\x01",  # compression pointer in the question
        good + b"\x00" * 2000,  # larger than MAX_QUERY_LEN
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:  # asyncio would skip b""
        for datagram in bad:
            client.sendto(datagram, server.local_address)
        client.sendto(good, server.local_address)
        with anyio.fail_after(WAIT):
            query = await server.receive()
    assert query.message == good
    drops = server.stats.drops
    assert drops[DropReason.DNS_TOO_LARGE] == 1
    assert drops[DropReason.DNS_MALFORMED] == len(bad) - 1
    assert server.stats.counters["udp.queries"] == 1
    await server.aclose()


async def test_udp_response_to_unreachable_destination_is_reported_not_raised() -> None:
    server = await UdpDnsServer.bind(("127.0.0.1", 0))
    # A datagram larger than any UDP payload cannot be sent: the kernel says EMSGSIZE.
    assert await server.send_response(("127.0.0.1", 9), b"\x00" * 70000) is False
    assert server.stats.counters["udp.send_failed"] == 1
    await server.aclose()
    assert await server.send_response(("127.0.0.1", 9), b"\x00" * 12) is False


async def test_udp_aclose_wakes_a_waiting_receiver_and_ends_iteration() -> None:
    server = await UdpDnsServer.bind(("::1", 0))
    received: list[DnsQuery] = []

    async def consume() -> None:
        async for q in server:
            received.append(q)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await wait_all_tasks_blocked()
        await server.aclose()
    assert received == []
    assert server.closed
    with pytest.raises(anyio.ClosedResourceError):
        await server.receive()


async def test_bind_errors_are_raised_as_oserror() -> None:
    server = await UdpDnsServer.bind(("127.0.0.1", 0))
    with pytest.raises(OSError) as busy:
        await UdpDnsServer.bind(server.local_address)
    assert busy.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as absent:
        await TcpDnsServer.bind(("192.0.2.1", 0))  # TEST-NET-1: on no interface here
    assert absent.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(ValueError):
        await UdpDnsServer.bind(("localhost", 0))  # a literal is required, not a name
    await server.aclose()


# --- TCP ------------------------------------------------------------------------------------------------


async def test_tcp_answers_on_every_address_including_a_large_response() -> None:
    servers = [await TcpDnsServer.bind(a) for a in ADDRESSES]
    try:
        async with anyio.create_task_group() as tg:
            for s in servers:
                tg.start_soon(respond, s)
            for s in servers:
                host, port = s.local_address
                q = dns.message.make_query("big.fz.test.", "TXT")
                with anyio.fail_after(WAIT):
                    r = await dns.asyncquery.tcp(q, host, port=port, timeout=WAIT)
                assert len(r.to_wire()) > 2000 > 512
                assert len(r.answer[0][0].strings) == BIG_TXT_STRINGS
                assert not r.flags & dns.flags.TC
            tg.cancel_scope.cancel()
    finally:
        for s in servers:
            await s.aclose()


async def test_tcp_pipelined_queries_answered_in_any_order_on_the_same_connection() -> None:
    server = await TcpDnsServer.bind(("127.0.0.2", 0))
    ids = [101, 202, 303, 404, 505]
    async with await anyio.connect_tcp(*server.local_address) as client:
        await client.send(b"".join(frame(query_wire(f"q{i}.fz.test.", qid=i)) for i in ids))
        with anyio.fail_after(WAIT):
            queries = [await server.receive() for _ in ids]
        assert {struct.unpack("!H", q.message[:2])[0] for q in queries} == set(ids)
        assert len({q.remote for q in queries}) == 1
        for q in reversed(queries):  # answer in the opposite order
            assert await server.send_response(q.remote, answer(q))
        buf = bytearray()
        got = []
        with anyio.fail_after(WAIT):
            for _ in ids:
                msg = await read_frame(client, buf)
                assert msg is not None
                got.append(dns.message.from_wire(msg))
        assert [m.id for m in got] == list(reversed(ids))
        for m in got:
            assert m.question[0].name.to_text() == f"q{m.id}.fz.test."
    assert server.stats.counters["tcp.queries"] == len(ids)
    await server.aclose()


async def test_tcp_bad_connections_are_closed_without_affecting_others() -> None:
    server = await TcpDnsServer.bind(("::1", 0))
    host, port = server.local_address
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        good = await anyio.connect_tcp(host, port)
        garbage = await anyio.connect_tcp(host, port)
        oversize = await anyio.connect_tcp(host, port)
        truncated = await anyio.connect_tcp(host, port)
        await garbage.send(frame(b"\xff" * 20))  # a whole frame that is no query
        await oversize.send(b"\xff\xff" + b"\x00" * 100)  # announces 65535 bytes
        await truncated.send(frame(query_wire("t.fz.test."))[:10])
        await truncated.send_eof()  # ends inside a message
        for bad in (garbage, oversize, truncated):
            await wait_closed(bad)
            await bad.aclose()
        # The good connection still works, for several queries in a row.
        buf = bytearray()
        for i in range(3):
            await good.send(frame(query_wire(f"g{i}.fz.test.", qid=i)))
            with anyio.fail_after(WAIT):
                msg = await read_frame(good, buf)
            assert msg is not None and dns.message.from_wire(msg).id == i
        await good.aclose()
        tg.cancel_scope.cancel()
    drops = server.stats.drops
    assert drops[DropReason.DNS_MALFORMED] == 2  # garbage, truncated
    assert drops[DropReason.DNS_TOO_LARGE] == 1
    await server.aclose()


async def test_tcp_stalled_connection_is_closed_while_a_busy_one_is_served() -> None:
    server = await TcpDnsServer.bind(("127.0.0.1", 0), limits=TcpLimits(idle_timeout=0.5))
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        busy = await anyio.connect_tcp(*server.local_address)
        stalled = await anyio.connect_tcp(*server.local_address)
        await stalled.send(b"\x00")  # half a length prefix, then nothing
        closed = anyio.Event()

        async def watch() -> None:
            await wait_closed(stalled)
            closed.set()

        tg.start_soon(watch)
        buf = bytearray()
        rounds = 0
        with anyio.fail_after(WAIT):
            while not closed.is_set():  # back-to-back queries: never idle
                await busy.send(frame(query_wire("busy.fz.test.", qid=rounds & 0xFFFF)))
                msg = await read_frame(busy, buf)
                assert msg is not None and dns.message.from_wire(msg).id == rounds & 0xFFFF
                rounds += 1
        await busy.send(frame(query_wire("after.fz.test.", qid=7)))  # still open afterwards
        with anyio.fail_after(WAIT):
            msg = await read_frame(busy, buf)
        assert msg is not None and dns.message.from_wire(msg).id == 7
        for c in (busy, stalled):
            await c.aclose()
        tg.cancel_scope.cancel()
    assert server.stats.drops[DropReason.DNS_TCP_IDLE] == 1
    await server.aclose()


async def test_tcp_idle_connection_is_closed_after_the_idle_timeout() -> None:
    server = await TcpDnsServer.bind(("127.0.0.1", 0), limits=TcpLimits(idle_timeout=0.3))
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        async with await anyio.connect_tcp(*server.local_address) as client:
            await client.send(frame(query_wire("idle.fz.test.")))
            buf = bytearray()
            with anyio.fail_after(WAIT):
                assert await read_frame(client, buf) is not None
            await wait_closed(client)  # then nothing more is sent: the server hangs up
        tg.cancel_scope.cancel()
    assert server.stats.drops[DropReason.DNS_TCP_IDLE] == 1
    assert server.connection_count == 0
    await server.aclose()


async def test_tcp_half_closed_client_still_gets_its_answers() -> None:
    server = await TcpDnsServer.bind(("127.0.0.3", 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        async with await anyio.connect_tcp(*server.local_address) as client:
            await client.send(
                frame(query_wire("h1.fz.test.", qid=1)) + frame(query_wire("h2.fz.test.", qid=2))
            )
            await client.send_eof()
            buf = bytearray()
            with anyio.fail_after(WAIT):
                ids = [dns.message.from_wire(await read_frame(client, buf) or b"").id for _ in range(2)]
                assert await read_frame(client, buf) is None  # then the server closes
        tg.cancel_scope.cancel()
    assert sorted(ids) == [1, 2]
    await server.aclose()


async def test_tcp_connection_limit() -> None:
    server = await TcpDnsServer.bind(("127.0.0.1", 0), limits=TcpLimits(max_connections=2))
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        first = await anyio.connect_tcp(*server.local_address)
        second = await anyio.connect_tcp(*server.local_address)
        for i, c in enumerate((first, second)):  # both accepted and served
            await c.send(frame(query_wire("c.fz.test.", qid=i)))
            with anyio.fail_after(WAIT):
                assert await read_frame(c, bytearray()) is not None
        third = await anyio.connect_tcp(*server.local_address)
        await wait_closed(third)  # over the limit: closed at once
        await third.aclose()
        assert server.stats.drops[DropReason.DNS_TCP_LIMIT] == 1
        await first.aclose()
        with anyio.fail_after(WAIT):
            while server.connection_count > 1:  # the server notices the close
                await anyio.sleep(0.01)
        fourth = await anyio.connect_tcp(*server.local_address)
        await fourth.send(frame(query_wire("d.fz.test.", qid=9)))
        with anyio.fail_after(WAIT):
            msg = await read_frame(fourth, bytearray())
        assert msg is not None and dns.message.from_wire(msg).id == 9
        for c in (second, fourth):
            await c.aclose()
        tg.cancel_scope.cancel()
    await server.aclose()


async def test_tcp_one_host_holds_at_most_its_share_of_the_connections() -> None:
    """The review's attack: one host opens many connections and sends nothing. It keeps 16 of the 128
    slots (``MAX_TCP_PER_SOURCE``); the rest are closed at once, and another host is served meanwhile."""
    server = await TcpDnsServer.bind(("127.0.0.1", 0))
    assert (server.limits.max_connections, server.limits.max_per_source) == (128, 16)
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        hog = [await anyio.connect_tcp(*server.local_address, local_host="127.0.0.2") for _ in range(40)]
        with anyio.fail_after(WAIT):
            while server.stats.drops[DropReason.DNS_TCP_LIMIT] < 24:
                await anyio.sleep(0.01)
        assert server.connection_count == 16
        others = [await anyio.connect_tcp(*server.local_address, local_host="127.0.0.3") for _ in range(8)]
        for i, c in enumerate(others):
            await c.send(frame(query_wire("o.fz.test.", qid=i)))
            with anyio.fail_after(WAIT):
                msg = await read_frame(c, bytearray())
            assert msg is not None and dns.message.from_wire(msg).id == i
        assert server.connection_count == 24 and server.stats.drops[DropReason.DNS_TCP_LIMIT] == 24
        await hog[0].aclose()  # the hog's slots come back as its connections go
        with anyio.fail_after(WAIT):
            while server.connection_count > 23:
                await anyio.sleep(0.01)
        again = await anyio.connect_tcp(*server.local_address, local_host="127.0.0.2")
        await again.send(frame(query_wire("a.fz.test.", qid=99)))
        with anyio.fail_after(WAIT):
            msg = await read_frame(again, bytearray())
        assert msg is not None and dns.message.from_wire(msg).id == 99
        for c in (*hog, *others, again):
            await c.aclose()
        tg.cancel_scope.cancel()
    await server.aclose()


async def test_tcp_unanswered_queries_per_connection_are_bounded() -> None:
    server = await TcpDnsServer.bind(("127.0.0.1", 0), limits=TcpLimits(max_pipelined=2))
    async with await anyio.connect_tcp(*server.local_address) as client:
        await client.send(b"".join(frame(query_wire(f"p{i}.fz.test.", qid=i)) for i in range(5)))
        with anyio.fail_after(WAIT):
            first = [await server.receive(), await server.receive()]
        await wait_all_tasks_blocked()
        with pytest.raises(anyio.WouldBlock):  # the reader waits for answers before reading more
            server._recv_q.receive_nowait()
        received = list(first)
        with anyio.fail_after(WAIT):
            for i in range(3):  # each answer lets exactly one more query in
                await server.send_response(received[i].remote, answer(received[i]))
                received.append(await server.receive())
                await wait_all_tasks_blocked()
                assert server._recv_q.statistics().current_buffer_used == 0
        assert sorted(struct.unpack("!H", q.message[:2])[0] for q in received) == [0, 1, 2, 3, 4]
    await server.aclose()


async def test_tcp_response_for_a_gone_connection_is_reported_not_raised() -> None:
    server = await TcpDnsServer.bind(("127.0.0.1", 0))
    async with await anyio.connect_tcp(*server.local_address) as client:
        await client.send(frame(query_wire("gone.fz.test.")))
        with anyio.fail_after(WAIT):
            query = await server.receive()
        raw = client.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
    with anyio.fail_after(WAIT):
        while server.connection_count:  # the client is gone
            await anyio.sleep(0.01)
    assert await server.send_response(query.remote, answer(query)) is False
    assert await server.send_response(("127.0.0.1", 1), answer(query)) is False
    assert server.stats.counters["tcp.response_no_connection"] == 2
    await server.aclose()


async def test_tcp_server_in_a_given_task_group_and_aclose() -> None:
    async with anyio.create_task_group() as tg:
        server = await TcpDnsServer.bind(("::1", 0), task_group=tg)
        tg.start_soon(respond, server)
        q = dns.message.make_query("tg.fz.test.", "SRV")
        with anyio.fail_after(WAIT):
            r = await dns.asyncquery.tcp(q, server.local_address[0], port=server.local_address[1])
        assert r.answer[0].rdtype == dns.rdatatype.SRV
        await server.aclose()  # the responder's iteration ends, so the task group can finish
    assert server.closed
    with pytest.raises(OSError):  # refused: nothing listens any more
        await anyio.connect_tcp(*server.local_address)
    with pytest.raises(anyio.ClosedResourceError):
        await server.receive()


async def test_tcp_client_that_does_not_read_its_answers_is_closed() -> None:
    limits = TcpLimits(max_pipelined=4, write_timeout=0.3)
    server = await TcpDnsServer.bind(("127.0.0.1", 0), limits=limits)
    big = dns.message.make_query("big.fz.test.", "TXT")
    drops = server.stats.drops
    async with anyio.create_task_group() as tg:

        async def respond_big() -> None:
            async for q in server:  # about 64 KiB per answer
                resp = dns.message.make_response(dns.message.from_wire(q.message))
                await server.send_response(q.remote, resp.to_wire() + b"\x00" * 64000)

        tg.start_soon(respond_big)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.local_address)  # loopback: completes at once
        sock.setblocking(False)
        reader = await anyio.connect_tcp(*server.local_address)  # an honest client next to it
        wire = big.to_wire()
        for _ in range(200):  # 200 answers of 64 KiB: far more than any socket buffer holds
            try:
                sock.send(frame(wire))
            except BlockingIOError:
                break
        with anyio.fail_after(WAIT):
            # Closed either because its queue of unsent answers is full or because a write timed out.
            while not (drops[DropReason.DNS_TCP_LIMIT] or drops[DropReason.DNS_TCP_IDLE]):
                await anyio.sleep(0.01)
        await reader.send(frame(query_wire("honest.fz.test.", qid=5)))
        with anyio.fail_after(WAIT):
            msg = await read_frame(reader, bytearray())
        assert msg is not None and struct.unpack("!H", msg[:2]) == (5,)
        with anyio.fail_after(WAIT):
            while server.connection_count > 1:
                await anyio.sleep(0.01)
        sock.close()
        await reader.aclose()
        tg.cancel_scope.cancel()
    await server.aclose()


async def test_tcp_random_byte_streams_never_break_the_server() -> None:
    entropy = SeededEntropy(7)
    server = await TcpDnsServer.bind(("127.0.0.1", 0), limits=TcpLimits(idle_timeout=0.5))
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, server)
        for _ in range(20):
            conn = await anyio.connect_tcp(*server.local_address)
            length = 1 + entropy.randbelow(300)
            junk = entropy.random_bytes(length)
            if entropy.randbelow(2):  # a plausible length prefix in front of junk
                junk = struct.pack("!H", entropy.randbelow(40)) + junk
            await conn.send(junk)
            await conn.send_eof()
            await wait_closed(conn)  # whatever it was, the server ends the connection
            await conn.aclose()
        async with await anyio.connect_tcp(*server.local_address) as good:
            await good.send(frame(query_wire("after.fz.test.", qid=77)))
            with anyio.fail_after(WAIT):
                msg = await read_frame(good, bytearray())
        assert msg is not None and dns.message.from_wire(msg).id == 77
        tg.cancel_scope.cancel()
    assert not server.closed
    await server.aclose()
