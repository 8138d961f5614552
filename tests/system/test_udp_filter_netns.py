"""The UDP socket filter in the kernel (decision 0116), in a namespace the test creates: the gateway's
sockets (both families) receive exactly the datagrams that can be STUN, ChannelData (from port 3478 only)
or WireGuard by their shape, in order; everything else is dropped before it is queued and counted in the
socket's drop counter (``/proc/net/udp``, ``/proc/net/udp6``). The same cases run in the filter's
interpreter in ``tests/unit/test_socket_filter.py``."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator

import anyio
import pytest

from gateway_core.errors import DropReason
from gateway_io import socket_filter as sf
from gateway_io.udp import DEFAULT_PORT, SOL_UDP, UDP_SEGMENT, UdpSockets
from tests import attack
from tests.system.io_netns import inside, netns, sh

pytestmark = [pytest.mark.system]

MAGIC = sf.STUN_MAGIC.to_bytes(4, "big")
GOOD = [
    attack.initiation(bytes(range(32))),
    attack.random148(),
    struct.pack("<I", 2) + bytes(88),
    struct.pack("<I", 3) + bytes(60),
    struct.pack("<I", 4) + bytes(28),
    struct.pack("<I", 4) + bytes(1312),
    b"\x00\x01\x00\x04" + MAGIC + bytes(12) + b"attr",
]
"""Kept from any source port."""
CHANNEL = [b"\x40\x00\x00\x04abcd", b"\x4f\xff\x00\x00pad!"]
"""Kept from port 3478 only."""
LONG_INITIATION = struct.pack("<I", 1) + bytes(147)
"""A handshake initiation 3 bytes too long: dropped by the plain filter, the first of a run for the GRO
one (the node drops it by its shape)."""
OVERSIZED_DATA = struct.pack("<I", 4) + bytes(1313)
"""Longer than ``MAX_DATAGRAM_SIZE``: dropped by the plain filter, by the daemon after the GRO one."""
BAD = [
    attack.junk(),
    b"x",
    LONG_INITIATION,
    struct.pack("<I", 4) + bytes(27),
    OVERSIZED_DATA,
    b"\x00\x01\x00\x08" + MAGIC + bytes(12),
    b"\x00\x01\x00\x00" + bytes(16),
    b"\x40\x00\x00\x09abcd",
    b"\x50\x00\x00\x00abcd",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ns() -> Iterator[str]:
    with netns("fzbpf") as name:
        yield name


def _drops(ns: str, family: int) -> int:
    table = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    for line in sh("cat", table, ns=ns).splitlines()[1:]:
        cols = line.split()
        if int(cols[1].rsplit(":", 1)[1], 16) == DEFAULT_PORT:
            return int(cols[-1])
    raise AssertionError(f"no socket on port {DEFAULT_PORT} in {table}")


@pytest.mark.anyio
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
async def test_the_kernel_keeps_only_what_the_node_could_use(ns: str, family: int, host: str) -> None:
    with inside(ns):
        sockets = UdpSockets.bind(env={"FIREZONE_UDP_RECV_BUFFER_SIZE": "1048576"})
        relay = socket.socket(family, socket.SOCK_DGRAM)
        other = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock = sockets.v4 if family == socket.AF_INET else sockets.v6
        assert sock is not None and sock.filtered
        relay.bind((host, 3478))
        other.bind((host, 0))
        # With UDP_GRO the filter sees a run's first header and the run's length, so it keeps a handshake
        # message longer than its length (the first of a run) and WireGuard data of any length; the
        # daemon then drops the oversized one by its length and the node the other by its shape.
        gro_kept = {LONG_INITIATION, OVERSIZED_DATA} if sock.gro else set()
        expected = []
        for d in BAD + CHANNEL:
            other.sendto(d, (host, DEFAULT_PORT))
            if d in gro_kept and d != OVERSIZED_DATA:
                expected.append((other.getsockname()[1], d))
        for d in GOOD:
            other.sendto(d, (host, DEFAULT_PORT))
            expected.append((other.getsockname()[1], d))
        for d in BAD + GOOD + CHANNEL:
            relay.sendto(d, (host, DEFAULT_PORT))
            if d not in BAD or (d in gro_kept and d != OVERSIZED_DATA):
                expected.append((3478, d))
        got = []
        with anyio.fail_after(10):
            while len(got) < len(expected):
                got += [(remote.port, payload) for _, remote, payload, _ in await sock.receive_batch()]
        assert got == expected
        assert sock.try_receive() is None  # nothing else was queued
        # The oversized data message (sent twice) reaches a UDP_GRO socket, which drops it by its length.
        late = 2 if sock.gro else 0
        assert _drops(ns, family) == 2 * len(BAD) + len(CHANNEL) - 2 * len(gro_kept)
        assert sock.stats.total_drops == late  # nothing else oversized or broken reached the daemon
        assert sock.stats.snapshot().get(f"drop.{DropReason.UDP_OVERSIZED}", 0) == late
    finally:
        relay.close()
        other.close()
        sockets.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
async def test_a_segmented_send_led_by_a_handshake_reaches_the_daemon_whole(
    ns: str, family: int, host: str
) -> None:
    """A peer's ``UDP_SEGMENT`` send of its handshake initiation and a smaller STUN message (as the dev
    client sends them when it nominates): with ``UDP_GRO`` the kernel queues them as one run and filters
    the run once; both datagrams reach the daemon, split and in order. (The filter used to hold such a
    run to the initiation's exact length and dropped it: the handshake then waited for its retransmission,
    5 s later.)"""
    with inside(ns):
        sockets = UdpSockets.bind()
        peer = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock = sockets.v4 if family == socket.AF_INET else sockets.v6
        assert sock is not None and sock.filtered
        assert sock.gro, "the kernel refused UDP_GRO"  # (Linux 5.0+; what the daemon runs with)
        peer.bind((host, 0))
        initiation = attack.initiation(bytes(range(32)))
        stun = bytes([1, 1, 0, 72]) + MAGIC + bytes(12 + 72)  # a 92-byte binding response
        for run in ([initiation, stun], [initiation, initiation, GOOD[-1]]):
            peer.sendmsg(
                [b"".join(run)],
                [(SOL_UDP, UDP_SEGMENT, len(run[0]).to_bytes(2, sys.byteorder))],
                0,
                (host, DEFAULT_PORT),
            )
            got: list[bytes] = []
            with anyio.fail_after(10):
                while len(got) < len(run):
                    got += [payload for _, _, payload, _ in await sock.receive_batch()]
            assert got == run
        assert _drops(ns, family) == 0
    finally:
        peer.close()
        sockets.close()
