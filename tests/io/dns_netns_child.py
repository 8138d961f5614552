"""A DnsServerSet in a process of its own (run inside a network namespace by a system test).

``python -m tests.io.dns_netns_child HOST:PORT ...`` keeps DNS servers on the given addresses (IPv6 as
``[addr]:port``) with a fast bind-retry policy (:mod:`tests.io.dns_retry`), answers queries with
:mod:`tests.io.dns_responder`, and prints every input it reports to the core as one JSON line on stdout.
It exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
from ipaddress import ip_address

import anyio

from gateway_core.addr import SocketAddr
from gateway_core.backoff import BackoffConfig
from gateway_core.clock import millis
from gateway_core.dns.servers import DnsBindRetry, DnsServerBindFailed, DnsServerBound
from gateway_core.entropy import SeededEntropy
from gateway_core.inputs import Input
from gateway_io.dns_servers import DnsServerSet
from tests.io.dns_responder import answer
from tests.io.dns_retry import RetryingDnsServers

FAST = BackoffConfig(initial=millis(20), multiplier=(2, 1), max_interval=millis(200), max_elapsed=None)


def parse(text: str) -> SocketAddr:
    host, _, port = text.rpartition(":")
    return SocketAddr(ip_address(host.strip("[]")), int(port))


def report(event: Input) -> None:
    match event:
        case DnsServerBound(address=address, local_port=port):
            line = {"event": "bound", "address": str(address), "port": port}
        case DnsServerBindFailed(address=address, error=error):
            line = {"event": "bind_failed", "address": str(address), "error": error}
        case _:
            line = {"event": type(event).__name__}
    print(json.dumps(line), flush=True)


async def main(addresses: list[SocketAddr]) -> None:
    async def respond(servers: DnsServerSet) -> None:
        async for q in servers:
            await servers.send_response(q.transport, q.local, q.remote, answer(q))

    retry = DnsBindRetry(SeededEntropy(1), FAST)
    async with RetryingDnsServers(report, retry) as servers, anyio.create_task_group() as tg:
        tg.start_soon(respond, servers.dns)
        await servers.set_addresses(addresses)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the test closes our stdin
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, [parse(a) for a in sys.argv[1:]])
