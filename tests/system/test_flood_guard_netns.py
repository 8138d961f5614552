"""The per-source budget with the real ``nft`` (decision 0116), in two namespaces the test creates: a
source that is not a relay gets its burst and its rate, no more; a relay's address, once the guard has
been told about it, is not metered; a WireGuard data message naming a live session is not metered
whatever its source; an IPv6 source is metered per /64; the table is gone when the guard stops. Small
budgets keep the counts exact enough to assert without timing: the sender sends far more than
burst + rate x (its sending time) and the bound allows a generous margin."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address

import anyio
import pytest

from gateway_core.addr import IPAddress
from gateway_io.flood_guard import TABLE, FloodGuard
from tests.system.io_netns import inside, netns, sh

pytestmark = [pytest.mark.system]

PORT = 52625
RATE, BURST = 200, 50
SENT = 3000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    with netns("fzgd") as gw, netns("fzsrc") as src:
        sh("ip", "link", "add", "g0", "netns", gw, "type", "veth", "peer", "name", "s0", "netns", src)
        for ns, dev, addrs in (
            (gw, "g0", ["10.77.0.1/24", "fd77::1/64"]),
            (src, "s0", ["10.77.0.2/24", "10.77.0.3/24", "fd77::2/64", "fd77::3/64", "fd78::2/64"]),
        ):
            for a in addrs:
                sh("ip", "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []), ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ip", "-6", "route", "add", "fd78::/64", "dev", "g0", ns=gw)
        sh("ip", "-6", "route", "add", "fd77::/64", "dev", "s0", ns=src)
        yield gw, src


SESSION = 0x00ABCD
"""A connection index the guard is told is live: data messages naming it pass whatever their source."""


def _data(index: int) -> bytes:
    return b"\x04\x00\x00\x00" + ((index << 8) | 3).to_bytes(4, "little") + bytes(24)


def _send(src_ns: str, src_ip: str, dst_ip: str, n: int, payload: bytes = _data(0)) -> float:
    family = socket.AF_INET6 if ":" in src_ip else socket.AF_INET
    with inside(src_ns):
        s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((src_ip, 0))
    t0 = time.monotonic()
    for _ in range(n):
        s.sendto(payload, (dst_ip, PORT))
    took = time.monotonic() - t0
    s.close()
    return took


def _receive_all(sock: socket.socket) -> dict[str, int]:
    counts: dict[str, int] = {}
    while True:
        try:
            _, addr = sock.recvfrom(100)
        except BlockingIOError:
            return counts
        counts[addr[0]] = counts.get(addr[0], 0) + 1


@pytest.mark.anyio
async def test_one_source_gets_its_budget_and_relays_are_exempt(pair: tuple[str, str]) -> None:
    gw, src = pair
    with inside(gw):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    relays: list[IPAddress] = [IPv4Address("10.77.0.3"), ip_address("fd77::3")]
    try:
        for s, host in ((v4, "0.0.0.0"), (v6, "::")):
            if s is v6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            s.bind((host, PORT))
            s.setblocking(False)
        guard = FloodGuard([PORT], lambda: relays, lambda: {SESSION}, budget=RATE, burst=BURST)
        with inside(gw):  # nft runs in the namespace of the process that starts it: start it from here
            async with anyio.create_task_group() as tg:
                tg.start_soon(guard.run)
                with anyio.fail_after(10):
                    while not guard.installed:
                        await anyio.sleep(0.01)
                guard.tick(time.monotonic_ns())
                with anyio.fail_after(10):
                    while guard._applied is None:
                        await anyio.sleep(0.01)
                listing = sh("nft", "list", "table", "inet", TABLE, ns=gw)
                assert "10.77.0.3" in listing and "fd77::3" in listing
                took = {}
                for ip, dst in (
                    ("10.77.0.2", "10.77.0.1"),
                    ("10.77.0.3", "10.77.0.1"),
                    ("fd77::2", "fd77::1"),
                    ("fd78::2", "fd77::1"),
                    ("fd77::3", "fd77::1"),
                ):
                    took[ip] = await anyio.to_thread.run_sync(_send, src, ip, dst, SENT)
                await anyio.sleep(0.2)
                got = {**_receive_all(v4), **_receive_all(v6)}
                # The same metered source, now sending data for a live session: nothing is metered.
                took_session = await anyio.to_thread.run_sync(
                    _send, src, "10.77.0.2", "10.77.0.1", SENT, _data(SESSION)
                )
                await anyio.sleep(0.2)
                got_session = _receive_all(v4)
                tg.cancel_scope.cancel()
        assert "10.77.0.3" not in sh("nft", "list", "ruleset", ns=gw)  # the table is gone
        assert TABLE not in sh("nft", "list", "tables", ns=gw)
        assert got["10.77.0.3"] == SENT and got["fd77::3"] == SENT  # relays: everything
        assert got_session.get("10.77.0.2") == SENT, (got_session, took_session)  # a live session: all
        for ip in ("10.77.0.2", "fd77::2", "fd78::2"):
            # A new source starts with its burst; then the rate. Generous margin (4x) for the kernel's
            # accounting; SENT is far above either.
            allowed = 4 * (BURST + RATE * (took[ip] + 0.2))
            assert BURST <= got[ip] <= min(allowed, SENT // 2), (ip, got[ip], took[ip])
    finally:
        v4.close()
        v6.close()
