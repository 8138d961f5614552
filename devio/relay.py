"""``firezone-dev-relay``: the dev relay (:mod:`devpeers.relay`, a Firezone-behaving TURN server) on UDP.

Theory of operation
-------------------
:class:`devpeers.relay.DevRelay` is pure: one datagram in (which server address received it, from
whom), the datagrams to send out (each naming the server address it leaves from). This module only moves
bytes: one UDP socket on the listening address (port 3478) and one socket per relayed address. After
every datagram the set of relayed addresses the server holds (``DevRelay.allocations``) is compared
with the open sockets: a new allocation gets its socket bound on the relayed port, a freed one is closed.
An allocation whose port cannot be bound (taken) is freed again, so the client sees its next request
fail and allocates anew. Time is ``time.monotonic_ns`` since start; the wall clock (credential expiry) is
``time.time``. Counters (datagrams in/out, allocations) are printed every :data:`STATS_INTERVAL` and on
exit, and written as JSON to ``--stats FILE`` if given, so tests can see which relay carried traffic.

Usage: ``firezone-dev-relay --listen 10.0.0.2 --secret S`` (or ``python -m devio.relay ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devpeers.relay import DevRelay
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy

log = logging.getLogger("devio.relay")

TURN_PORT = 3478
"""Firezone's relay listens on 3478 (and snownet recognises relay traffic only by that port)."""
STATS_INTERVAL = 1.0
"""Seconds between two writes of the counters file (often enough for tests polling it)."""
SOCKET_BUFFER = 4 * 1024 * 1024
"""Socket buffer size asked for (bursts of iperf traffic through the relay)."""


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, relay: RelayServer, local: SocketAddr) -> None:
        self.relay = relay
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        host = str(addr[0]).partition("%")[0]
        self.relay.on_datagram(self.local, SocketAddr(ipaddress.ip_address(host), int(addr[1])), data)

    def error_received(self, exc: Exception) -> None:
        log.debug("socket %s: %s", self.local, exc)


class RelayServer:
    """A :class:`DevRelay` served over real UDP sockets (see the module docstring)."""

    def __init__(self, listen: list[SocketAddr], secret: str, flavour: str = "firezone") -> None:
        self.t0 = time.monotonic_ns()
        self.server = DevRelay(
            listen,
            [SocketAddr(a.ip, 0) for a in listen],
            secret,
            SeededEntropy(os.urandom(32)),
            flavour=flavour,
            wall_clock_secs=int(time.time()),
        )
        self.listen = listen
        self.transports: dict[SocketAddr, asyncio.DatagramTransport] = {}
        self.counters = {"in": 0, "out": 0, "allocations": 0, "bind_failures": 0}

    def now(self) -> Instant:
        return Instant(time.monotonic_ns() - self.t0)

    async def start(self) -> None:
        for addr in self.listen:
            await self._open(addr)

    async def _open(self, addr: SocketAddr) -> bool:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if addr.ip.version == 6 else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.bind((str(addr.ip), addr.port))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            log.warning("cannot bind %s: %s", addr, e)
            return False
        transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(self, addr), sock=sock)
        self.transports[addr] = transport
        return True

    def _open_now(self, addr: SocketAddr) -> bool:
        """Bind synchronously (inside a datagram callback) and attach the socket to the loop."""
        fam = socket.AF_INET6 if addr.ip.version == 6 else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            sock.bind((str(addr.ip), addr.port))
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            log.warning("cannot bind relayed address %s: %s", addr, e)
            return False
        loop = asyncio.get_running_loop()
        task = loop.create_datagram_endpoint(lambda: _Proto(self, addr), sock=sock)
        fut = asyncio.ensure_future(task)
        fut.add_done_callback(lambda f: self._attached(addr, f))
        return True

    def _attached(self, addr: SocketAddr, fut: asyncio.Future[tuple[asyncio.DatagramTransport, Any]]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        transport = fut.result()[0]
        if self._wanted(addr):
            self.transports[addr] = transport
        else:
            transport.close()

    def _wanted(self, addr: SocketAddr) -> bool:
        return any(addr in a.relayed for a in self.server.allocations.values())

    def on_datagram(self, local: SocketAddr, remote: SocketAddr, data: bytes) -> None:
        self.counters["in"] += 1
        self.server.wall_clock_secs = int(time.time())
        before = len(self.server.allocations)
        out = self.server.handle(self.now(), local, remote, data)
        if len(self.server.allocations) != before:
            self._sync()
        for t in out:
            tr = self.transports.get(t.src) if t.src is not None else None
            if tr is None:
                continue
            tr.sendto(t.payload, (str(t.dst.ip), t.dst.port))
            self.counters["out"] += 1

    def _sync(self) -> None:
        wanted = {a for alloc in self.server.allocations.values() for a in alloc.relayed}
        for addr in sorted(wanted - set(self.transports), key=str):
            if addr in self.listen:
                continue
            self.counters["allocations"] += 1
            if not self._open_now(addr):
                self.counters["bind_failures"] += 1
        for addr in sorted(set(self.transports) - wanted - set(self.listen), key=str):
            self.transports.pop(addr).close()

    def stats(self) -> dict[str, int]:
        return {**self.counters, "live_allocations": len(self.server.allocations)}

    def close(self) -> None:
        for tr in self.transports.values():
            tr.close()
        self.transports.clear()


def _addr(text: str) -> SocketAddr:
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and (host.startswith("[") or "." in host):
        return SocketAddr(ipaddress.ip_address(host.strip("[]")), int(port))
    return SocketAddr(ipaddress.ip_address(text.strip("[]")), TURN_PORT)


async def _amain(args: argparse.Namespace) -> int:
    relay = RelayServer([_addr(a) for a in args.listen], args.secret, args.flavour)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"firezone-dev-relay: listening on {', '.join(str(a) for a in relay.listen)}", flush=True)
    stats_path = Path(args.stats) if args.stats else None
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_INTERVAL)
            if stats_path is not None:
                tmp = stats_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(relay.stats(), sort_keys=True))
                tmp.replace(stats_path)
    finally:
        relay.close()
        print(f"firezone-dev-relay: stopped {json.dumps(relay.stats(), sort_keys=True)}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="firezone-dev-relay", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", action="append", required=True, help="IP[:PORT] (repeat for IPv6)")
    ap.add_argument("--secret", required=True, help="the relay's secret (TURN credentials derive from it)")
    ap.add_argument("--flavour", choices=("firezone", "coturn"), default="firezone")
    ap.add_argument("--stats", help="write the counters as JSON to this file every second")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
