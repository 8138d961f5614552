"""Real DNS clients against the layer-4 servers: ``dig`` (bind9-dnsutils) and ``dnsperf`` (bounded)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from ipaddress import ip_address
from pathlib import Path

import anyio
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.dns.servers import BindDnsServers
from gateway_core.errors import DropReason
from gateway_io.dns_server import TcpDnsServer, UdpDnsServer
from gateway_io.dns_servers import DnsServerSet
from tests.io.dns_responder import BIG_TXT_STRINGS, answer

pytestmark = pytest.mark.anyio

WAIT = 30  # seconds a tool may take before the test fails


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def respond(server: UdpDnsServer | TcpDnsServer) -> None:
    async for query in server:
        await server.send_response(query.remote, answer(query))


async def bind_pair(host: str, attempts: int = 20) -> tuple[UdpDnsServer, TcpDnsServer]:
    """A UDP and a TCP server on the same free port (dig and dnsperf take one port for both).

    Port 0 picks a free UDP port; the same TCP port may be taken by another process, so try again."""
    for _ in range(attempts):
        udp = await UdpDnsServer.bind((host, 0))
        try:
            return udp, await TcpDnsServer.bind(udp.local_address)
        except OSError:
            await udp.aclose()
    raise AssertionError(f"no port free for both UDP and TCP on {host} after {attempts} attempts")


@pytest.fixture(params=["127.0.0.1", "::1"])
async def servers(request: pytest.FixtureRequest) -> AsyncIterator[tuple[UdpDnsServer, TcpDnsServer]]:
    udp, tcp = await bind_pair(request.param)
    async with anyio.create_task_group() as tg:
        tg.start_soon(respond, udp)
        tg.start_soon(respond, tcp)
        yield udp, tcp
        await udp.aclose()
        await tcp.aclose()


async def run(*argv: str) -> str:
    with anyio.fail_after(WAIT):
        result = await anyio.run_process(list(argv), check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, (argv, out, result.stderr.decode())
    return out


def statuses(dig_output: str) -> list[str]:
    return re.findall(r"status: (\w+)", dig_output)


async def test_dig_over_udp(servers: tuple[UdpDnsServer, TcpDnsServer]) -> None:
    udp, _ = servers
    host, port = udp.local_address
    out = await run("dig", f"@{host}", "-p", str(port), "+tries=1", "+time=5", "who.fz.test", "TXT")
    assert statuses(out) == ["NOERROR"]
    assert f'"udp {host} {port}"' in out
    out = await run("dig", f"@{host}", "-p", str(port), "+short", "+tries=1", "_sip._tcp.fz.test", "SRV")
    assert out.strip() == "10 5 8080 www.fz.test."
    assert udp.stats.counters["udp.queries"] == 2


async def test_dig_over_tcp_with_a_large_answer(servers: tuple[UdpDnsServer, TcpDnsServer]) -> None:
    _, tcp = servers
    host, port = tcp.local_address
    out = await run("dig", f"@{host}", "-p", str(port), "+tcp", "+tries=1", "+time=5", "big.fz.test", "TXT")
    assert statuses(out) == ["NOERROR"]
    assert "flags: qr rd" in out and " tc" not in out.split("flags:")[1].split(";")[0]
    assert out.count('"0') == BIG_TXT_STRINGS  # every string arrived: a response of more than 2000 bytes
    size = int(re.search(r"MSG SIZE\s+rcvd: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert size > 2000


async def test_dig_keepopen_sends_several_queries_on_one_connection(
    servers: tuple[UdpDnsServer, TcpDnsServer],
) -> None:
    _, tcp = servers
    host, port = tcp.local_address
    names = ["one.fz.test", "two.fz.test", "three.fz.test", "four.fz.test"]
    argv = ["dig", f"@{host}", "-p", str(port), "+tcp", "+keepopen", "+tries=1", "+time=5"]
    for name in names:
        argv += [name, "TXT"]
    out = await run(*argv)
    assert statuses(out) == ["NOERROR"] * len(names)
    assert out.count(f'"tcp {host} {port}"') == len(names)
    assert tcp.stats.counters["tcp.queries"] == len(names)
    assert tcp.stats.counters["tcp.connections"] == 1


QUERIES = ["www.fz.test A", "www.fz.test AAAA", "_http._tcp.fz.test SRV", "txt.fz.test TXT", "no.fz.test MX"]


@pytest.mark.parametrize("mode", ["udp", "tcp"])
async def test_dnsperf_bounded_run_without_errors(
    servers: tuple[UdpDnsServer, TcpDnsServer], mode: str, tmp_path: Path
) -> None:
    udp, tcp = servers
    host, port = udp.local_address
    data = tmp_path / "queries.txt"
    data.write_text("\n".join(QUERIES) + "\n")
    out = await run(
        *("dnsperf", "-s", host, "-p", str(port), "-m", mode, "-d", str(data)),
        *("-l", "2", "-c", "2", "-q", "50", "-t", "5"),
    )
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert sent > 100, out
    assert lost == 0, out
    assert completed == sent, out
    assert re.search(r"Response codes:\s+NOERROR \d+ \(100\.00%\)", out), out
    server = udp if mode == "udp" else tcp
    assert server.stats.counters[f"{mode}.queries"] == sent
    assert server.stats.total_drops == 0
    assert server.stats.drops[DropReason.DNS_MALFORMED] == 0


async def test_dig_against_a_server_set_on_four_addresses_at_once() -> None:
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"]
    async with DnsServerSet(lambda _: None) as servers, anyio.create_task_group() as tg:

        async def serve() -> None:
            async for q in servers:
                await servers.send_response(q.transport, q.local, q.remote, answer(q))

        tg.start_soon(serve)
        await servers.execute(BindDnsServers(tuple(SocketAddr(ip_address(h), 0) for h in hosts)))
        for pair in servers.servers.values():
            host, port = pair.udp.local_address
            base = ["dig", f"@{host}", "-p", str(port), "+short", "+tries=1", "+time=5"]
            assert (await run(*base, "u.fz.test", "TXT")).strip() == f'"udp {host} {port}"'
            assert (await run(*base, "+tcp", "t.fz.test", "TXT")).strip() == f'"tcp {host} {port}"'
        assert sorted(p.udp.local_address[0] for p in servers.servers.values()) == sorted(hosts)
        tg.cancel_scope.cancel()
