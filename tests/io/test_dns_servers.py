"""DnsServerSet: one UDP and one TCP server per address, reconciled; failed binds retried per address (with
the core's retry policy run beside the set by :mod:`tests.io.dns_retry`)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from ipaddress import ip_address

import anyio
import anyio.abc
import dns.asyncquery
import dns.message
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.backoff import BackoffConfig
from gateway_core.clock import millis
from gateway_core.dns.servers import (
    BindDnsServers,
    DnsBindRetry,
    DnsServerBindFailed,
    DnsServerBound,
    DnsTransport,
    RetryDnsServerBind,
)
from gateway_core.entropy import SeededEntropy
from gateway_core.inputs import Input
from gateway_io.dns_servers import DnsServerSet
from tests.io.dns_responder import answer
from tests.io.dns_retry import RetryingDnsServers

pytestmark = pytest.mark.anyio

WAIT = 10
FAST = BackoffConfig(initial=millis(20), multiplier=(2, 1), max_interval=millis(80), max_elapsed=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sa(host: str, port: int = 0) -> SocketAddr:
    return SocketAddr(ip_address(host), port)


class Inputs:
    """Collects the inputs a DnsServerSet reports, and lets a test await one."""

    def __init__(self) -> None:
        self.seen: list[Input] = []
        self._changed = anyio.Event()

    def __call__(self, event: Input) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait_for(self, predicate: object) -> Input:
        assert callable(predicate)
        with anyio.fail_after(WAIT):
            while True:
                for event in self.seen:
                    if predicate(event):
                        return event
                self._changed = anyio.Event()
                await self._changed.wait()


async def respond(servers: DnsServerSet) -> None:
    async for query in servers:
        await servers.send_response(query.transport, query.local, query.remote, answer(query))


async def ask(host: str, port: int, transport: DnsTransport, name: str = "who.fz.test.") -> str:
    q = dns.message.make_query(name, "TXT")
    with anyio.fail_after(WAIT):
        if transport is DnsTransport.UDP:
            r = await dns.asyncquery.udp(q, host, port=port, timeout=WAIT)
        else:
            r = await dns.asyncquery.tcp(q, host, port=port, timeout=WAIT)
    return r.answer[0][0].strings[0].decode()


async def test_reconcile_keeps_unchanged_binds_new_and_closes_removed() -> None:
    inputs = Inputs()
    first = [sa("127.0.0.1"), sa("127.0.0.2"), sa("::1")]
    second = [sa("127.0.0.2"), sa("127.0.0.3"), sa("::1")]
    async with DnsServerSet(inputs) as servers, anyio.create_task_group() as tg:
        tg.start_soon(respond, servers)
        await servers.execute(BindDnsServers(tuple(first)))
        assert sorted(inputs.seen, key=str) == sorted(
            [DnsServerBound(a, servers.servers[a].udp.local_address[1]) for a in first], key=str
        )
        before = servers.servers
        for address, pair in before.items():
            host, port = pair.udp.local_address
            assert pair.tcp.local_address == (host, port)  # one port for both transports
            assert await ask(host, port, DnsTransport.UDP) == f"udp {host} {port}"
            assert await ask(host, port, DnsTransport.TCP) == f"tcp {host} {port}"
            assert host == str(address.ip)
        # A TCP connection to ::1 that stays open across the change.
        v6_host, v6_port = before[sa("::1")].tcp.local_address
        kept = await anyio.connect_tcp(v6_host, v6_port)
        sockets = {a: (p.udp._sock.fileno(), p.tcp.local_address) for a, p in before.items()}

        inputs.seen.clear()
        await servers.execute(BindDnsServers(tuple(second)))
        after = servers.servers
        assert set(after) == set(second)
        for address in (sa("127.0.0.2"), sa("::1")):  # unchanged: the very same servers and sockets
            assert after[address] is before[address]
            assert after[address].udp._sock.fileno() == sockets[address][0]
            assert after[address].tcp.local_address == sockets[address][1]
            assert not after[address].udp.closed and not after[address].tcp.closed
        removed = before[sa("127.0.0.1")]
        assert removed.udp.closed and removed.tcp.closed
        with pytest.raises(OSError):
            await anyio.connect_tcp(*removed.tcp.local_address)
        assert inputs.seen == [DnsServerBound(sa("127.0.0.3"), after[sa("127.0.0.3")].udp.local_address[1])]
        host, port = after[sa("127.0.0.3")].udp.local_address
        assert await ask(host, port, DnsTransport.UDP) == f"udp {host} {port}"

        q = dns.message.make_query("kept.fz.test.", "TXT")
        wire = q.to_wire()
        await kept.send(struct.pack("!H", len(wire)) + wire)
        buf = b""
        with anyio.fail_after(WAIT):
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                buf += await kept.receive()
        assert dns.message.from_wire(buf[2:]).id == q.id
        await kept.aclose()

        await servers.execute(BindDnsServers(()))
        assert servers.servers == {}
        assert all(p.udp.closed and p.tcp.closed for p in after.values())
        tg.cancel_scope.cancel()


async def test_response_routing_needs_the_right_transport_and_local_address() -> None:
    async with DnsServerSet(Inputs()) as servers:
        await servers.execute(BindDnsServers((sa("127.0.0.1"),)))
        pair = servers.servers[sa("127.0.0.1")]
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        remote = client.getsockname()
        wire = dns.message.make_query("r.fz.test.", "A").to_wire()
        assert await servers.send_response(DnsTransport.UDP, pair.udp.local_address, remote, wire)
        assert client.recv(100) == wire
        assert not await servers.send_response(DnsTransport.UDP, ("127.0.0.9", 53), remote, wire)
        assert not await servers.send_response(DnsTransport.TCP, pair.tcp.local_address, remote, wire)
        client.close()


async def test_failed_bind_is_retried_for_that_address_alone_until_it_succeeds() -> None:
    inputs = Inputs()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.4", 0))  # holds the UDP port the set will be asked for
    busy = sa("127.0.0.4", blocker.getsockname()[1])
    fine = sa("127.0.0.1")
    retry = DnsBindRetry(SeededEntropy(11), FAST)
    async with RetryingDnsServers(inputs, retry) as servers:
        await servers.set_addresses([fine, busy])
        assert DnsServerBound(fine, servers.servers[fine].udp.local_address[1]) in inputs.seen
        fine_pair = servers.servers[fine]

        def failures() -> list[Input]:
            return [e for e in inputs.seen if isinstance(e, DnsServerBindFailed)]

        await inputs.wait_for(lambda _: len(failures()) >= 3)  # failed, then retried by the policy
        assert all(e.address == busy for e in failures())  # type: ignore[attr-defined]
        assert "in use" in failures()[0].error  # type: ignore[attr-defined]
        blocker.close()
        bound = await inputs.wait_for(lambda e: isinstance(e, DnsServerBound) and e.address == busy)
        assert bound == DnsServerBound(busy, busy.port)
        assert servers.servers[fine] is fine_pair  # the other address was never touched
        assert [e for e in inputs.seen if isinstance(e, DnsServerBound)].count(
            DnsServerBound(fine, fine_pair.udp.local_address[1])
        ) == 1
        assert retry.poll_timeout() is None
        async with anyio.create_task_group() as tg:
            tg.start_soon(respond, servers.dns)
            assert await ask("127.0.0.4", busy.port, DnsTransport.TCP) == f"tcp 127.0.0.4 {busy.port}"
            tg.cancel_scope.cancel()


async def test_address_on_no_interface_fails_and_is_forgotten_when_removed() -> None:
    inputs = Inputs()
    absent = sa("192.0.2.1", 53535)  # TEST-NET-1: on no interface of this host
    retry = DnsBindRetry(SeededEntropy(12), FAST)
    async with RetryingDnsServers(inputs, retry) as servers:
        await servers.set_addresses([absent, sa("127.0.0.1")])
        failed = await inputs.wait_for(lambda e: isinstance(e, DnsServerBindFailed))
        assert failed.address == absent  # type: ignore[attr-defined]
        assert os.strerror(errno.EADDRNOTAVAIL) in failed.error  # type: ignore[attr-defined]
        assert retry.retry_at(absent) is not None
        await servers.set_addresses([sa("127.0.0.1")])
        assert retry.retry_at(absent) is None
        assert retry.poll_timeout() is None
        assert set(servers.servers) == {sa("127.0.0.1")}


async def test_without_a_policy_commands_are_executed_as_given() -> None:
    inputs = Inputs()
    blocker = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    blocker.bind(("::1", 0))
    blocker.listen()
    busy = sa("::1", blocker.getsockname()[1])  # the TCP port is taken: the UDP server is not kept either
    async with DnsServerSet(inputs) as servers:
        await servers.execute(BindDnsServers((busy,)))
        assert isinstance(inputs.seen[-1], DnsServerBindFailed)
        assert servers.servers == {}
        udp_probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp_probe.bind(("::1", busy.port))  # the UDP port was released again
        udp_probe.close()
        await servers.execute(RetryDnsServerBind(sa("::2")))  # not desired: nothing happens
        assert len(inputs.seen) == 1
        blocker.close()
        await servers.execute(RetryDnsServerBind(busy))
        assert inputs.seen[-1] == DnsServerBound(busy, busy.port)
        await servers.execute(RetryDnsServerBind(busy))  # already bound: nothing happens
        assert len(inputs.seen) == 2
        with pytest.raises(TypeError):
            await servers.execute(BindDnsServers)  # type: ignore[arg-type]


async def test_attached_sink_gets_udp_batches_pauses_when_full_and_resumes() -> None:
    """The driver's way (decision 0112): UDP queries go from the sockets' reader callbacks straight to the
    sink in batches; when the sink says it is full, reading pauses (the kernel keeps the rest) until
    ``resume``; TCP queries still come from ``receive``."""
    inputs = Inputs()
    batches: list[list[object]] = []
    full = False

    def sink(batch: list[object]) -> bool:
        batches.append(batch)
        return not full

    async with DnsServerSet(inputs) as servers:
        assert servers.attach(sink)
        await servers.execute(BindDnsServers((sa("127.0.0.1"),)))
        bound = await inputs.wait_for(lambda e: isinstance(e, DnsServerBound))
        assert isinstance(bound, DnsServerBound)
        port = bound.local_port
        assert not servers.attach(sink)  # only before any server is bound
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for i in range(3):
                client.sendto(dns.message.make_query(f"q{i}.fz.test.", "TXT").to_wire(), ("127.0.0.1", port))
            with anyio.fail_after(WAIT):
                while sum(len(b) for b in batches) < 3:
                    await anyio.sleep(0.01)
            full = True
            client.sendto(dns.message.make_query("x.fz.test.", "TXT").to_wire(), ("127.0.0.1", port))
            with anyio.fail_after(WAIT):
                while not servers.paused:
                    await anyio.sleep(0.01)
            seen = sum(len(b) for b in batches)
            client.sendto(dns.message.make_query("y.fz.test.", "TXT").to_wire(), ("127.0.0.1", port))
            for _ in range(20):  # paused: twenty turns of the event loop deliver nothing more
                await anyio.lowlevel.checkpoint()
            assert sum(len(b) for b in batches) == seen
            full = False
            servers.resume()
            with anyio.fail_after(WAIT):
                while sum(len(b) for b in batches) < seen + 1:
                    await anyio.sleep(0.01)
        names = [dns.message.from_wire(q.message).question[0].name.to_text() for b in batches for q in b]  # type: ignore[attr-defined]
        assert names == ["q0.fz.test.", "q1.fz.test.", "q2.fz.test.", "x.fz.test.", "y.fz.test."]
        async with anyio.create_task_group() as tg:  # TCP still through receive()
            tg.start_soon(respond, servers)
            assert (await ask("127.0.0.1", port, DnsTransport.TCP)).startswith("tcp 127.0.0.1 ")
            tg.cancel_scope.cancel()


async def test_counters_of_closed_servers_are_kept_for_the_metrics() -> None:
    async with DnsServerSet(Inputs()) as servers, anyio.create_task_group() as tg:
        tg.start_soon(respond, servers)
        await servers.execute(BindDnsServers((sa("127.0.0.1"),)))
        host, port = servers.servers[sa("127.0.0.1")].udp.local_address
        assert await ask(host, port, DnsTransport.UDP) == f"udp {host} {port}"

        def queries() -> int:
            return sum(s.counters["udp.queries"] for s in servers.stats())

        assert queries() == 1
        await servers.execute(BindDnsServers(()))  # closes the server
        assert servers.servers == {} and queries() == 1  # its count stays in the totals
        tg.cancel_scope.cancel()
