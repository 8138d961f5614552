"""Queries per second answered over UDP on loopback by :class:`UdpDnsServer`, against plain echo sockets.

dnsperf (bounded with ``-l``) sends the same queries to three servers in turn, all answering with the
query itself turned into an empty NOERROR response (QR set), so that only the server path is measured:

- ``UdpDnsServer``: ``async for query in server: await server.send_response(...)`` (the query check, the
  ``DnsQuery`` tuple, the fairness yield);
- reference 1: an anyio UDP socket echoing the same way (``async for data, addr in sock``);
- reference 2: a bare asyncio ``DatagramProtocol`` answering inside its callback (the floor of Python).

It prints the rate of each and the ratio of ours to each reference, measured in the same run.
Run: ``.venv/bin/python -m bench bench_dns_server`` (``SECONDS=5`` to run longer).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from gateway_io.dns_server import UdpDnsServer

SECONDS = int(os.environ.get("SECONDS_PER_RUN", os.environ.get("SECONDS", "3")))
QUERIES = ["www.fz.test A", "www.fz.test AAAA", "_http._tcp.fz.test SRV", "txt.fz.test TXT", "nope.fz.test A"]


def respond(query: bytes) -> bytes:
    """The trivial answer: the query with QR set (NOERROR, no records)."""
    return query[:2] + bytes((query[2] | 0x80,)) + query[3:]


async def dnsperf(port: int, data: Path) -> tuple[float, int]:
    """``(queries per second, queries lost)`` of one bounded dnsperf run against 127.0.0.1:port."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", str(SECONDS)]
    argv += ["-c", "2", "-q", "100", "-t", "2"]
    result = await anyio.run_process(argv, check=False)
    out = result.stdout.decode()
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if result.returncode != 0 or qps is None or lost is None:
        raise RuntimeError(f"dnsperf failed: {out} {result.stderr.decode()}")
    return float(qps.group(1)), int(lost.group(1))


async def ours(run: Callable[[int], Awaitable[tuple[float, int]]]) -> tuple[float, int]:
    server = await UdpDnsServer.bind(("127.0.0.1", 0))

    async def serve() -> None:
        async for query in server:
            await server.send_response(query.remote, respond(query.message))

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        result = await run(server.local_address[1])
        await server.aclose()
    return result


async def anyio_echo(run: Callable[[int], Awaitable[tuple[float, int]]]) -> tuple[float, int]:
    sock = await anyio.create_udp_socket(family=socket.AF_INET, local_host="127.0.0.1")

    async def serve() -> None:
        async for data, addr in sock:
            await sock.sendto(respond(data), addr[0], addr[1])

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        result = await run(sock.extra(anyio.abc.SocketAttribute.local_port))
        tg.cancel_scope.cancel()
    await sock.aclose()
    return result


class _Echo(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport, by construction

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(respond(data), addr)


async def asyncio_echo(run: Callable[[int], Awaitable[tuple[float, int]]]) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    try:
        return await run(transport.get_extra_info("sockname")[1])
    finally:
        transport.close()


async def _main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "queries.txt"
        data.write_text("\n".join(QUERIES) + "\n")

        async def run(port: int) -> tuple[float, int]:
            return await dnsperf(port, data)

        results = {}
        for name, bench in [
            ("UdpDnsServer", ours),
            ("anyio UDP echo", anyio_echo),
            ("asyncio protocol echo", asyncio_echo),
        ]:
            results[name] = await bench(run)
            qps, lost = results[name]
            print(f"  {name:24s} {qps:10.0f} queries/s  lost {lost}")
        mine = results["UdpDnsServer"][0]
        for ref in ("anyio UDP echo", "asyncio protocol echo"):
            print(f"  ratio UdpDnsServer / {ref}: {mine / results[ref][0]:.2f}")


def main() -> None:
    if shutil.which("dnsperf") is None:
        print("  dnsperf not installed (Debian package dnsperf; `make deps`)")
        return
    print(f"  dnsperf -l {SECONDS} -c 2 -q 100, UDP on 127.0.0.1, trivial responder")
    anyio.run(_main)


if __name__ == "__main__":
    main()
