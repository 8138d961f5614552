"""The TUN device's offload framing (``gateway_io.tun.TunDevice`` with a virtio-net header), driven over a
``SOCK_SEQPACKET`` socket pair that stands in for the kernel's side of ``/dev/net/tun`` (one frame per
read and write, as the TUN device): super-packets read are split into checksummed segments, a frame
that cannot be split is dropped and counted, and written segments of one flow leave as one super-packet
(from the writer thread too). The real kernel is in ``tests/system/test_offload_e2e.py``."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import anyio
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from gateway_core.errors import DropReason
from gateway_core.wire.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    VNET_HDR_LEN,
    ZERO_HDR,
    VnetHdr,
    segment,
    split_tcp,
)
from gateway_io.io_counters import IoCounters
from gateway_io.tun import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TunDevice

pytestmark = pytest.mark.anyio
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
LIMIT = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, int]]:
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    fd = os.dup(ours.fileno())
    ours.close()
    kernel.settimeout(LIMIT)
    with kernel:
        yield kernel, fd


def _super(n: int = 5000) -> bytes:
    payload = bytes(i % 251 for i in range(n))
    return bytes(
        IP(src="10.0.0.1", dst="172.20.1.10", id=7)
        / TCP(sport=4000, dport=5201, seq=9, ack=1, flags="A")
        / payload
    )


async def test_reads_split_super_packets_and_count_bad_frames(pair: tuple[socket.socket, int]) -> None:
    kernel, fd = pair
    tun = TunDevice(fd, "t", OFFLOADS)
    io = IoCounters()
    tun.count_into(io)
    sup = _super()
    v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / b"six")
    kernel.send(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000, 20, 16).pack() + sup)
    kernel.send(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 1000, 20, 16).pack() + b"\x45garbage")
    kernel.send(ZERO_HDR + sup[:60])
    kernel.send(ZERO_HDR + v6)
    with anyio.fail_after(LIMIT):
        got = await tun.read_batch()
        while len(got) < 7:
            got += await tun.read_batch()
    assert got[:5] == split_tcp(sup, 1000)
    assert got[5] == sup[:60]
    assert got[6] == v6
    assert tun.stats.snapshot().get(f"drop.{DropReason.TUN_OFFLOAD_MALFORMED}") == 1
    # Counted per frame as read: the super-packet as its segments, the dropped frame not at all.
    assert (io.tun_rx_packets, io.tun_rx_bytes) == ([6, 1], [sum(map(len, got[:6])), len(v6)])
    assert io.tun_tx_packets == [0, 0]
    tun.close()


@pytest.mark.parametrize("threaded", [False, True])
async def test_writes_coalesce_a_flow_into_one_frame(pair: tuple[socket.socket, int], threaded: bool) -> None:
    kernel, fd = pair
    tun = TunDevice(fd, "t", OFFLOADS, writer_thread=threaded)
    io = IoCounters()
    tun.count_into(io)
    segs = split_tcp(_super(), 1000)
    assert tun.write_batch(segs) == []
    frame = kernel.recv(70000)
    hdr = VnetHdr.unpack(frame)
    assert hdr.gso_type == GSO_TCPV4 and hdr.gso_size == 1000
    assert segment(hdr, frame[VNET_HDR_LEN:]) == segs
    assert tun.write(segs[0]) is None
    assert kernel.recv(70000) == ZERO_HDR + segs[0]
    tun.close()
    assert tun.write_errors == 0
    # Counted as the IP packets handed over, not the frames that carried them.
    assert (io.tun_tx_packets, io.tun_tx_bytes) == (
        [len(segs) + 1, 0],
        [sum(map(len, segs)) + len(segs[0]), 0],
    )


async def test_without_offloads_packets_are_plain(pair: tuple[socket.socket, int]) -> None:
    kernel, fd = pair
    tun = TunDevice(fd, "t", 0)
    io = IoCounters()
    tun.count_into(io)
    segs = split_tcp(_super(), 1000)
    assert tun.write_batch(segs) == []
    assert [kernel.recv(2000) for _ in segs] == segs
    kernel.send(segs[0])
    with anyio.fail_after(LIMIT):
        assert await tun.read_batch() == [segs[0]]
    tun.close()
    assert (io.tun_tx_packets, io.tun_tx_bytes) == ([len(segs), 0], [sum(map(len, segs)), 0])
    assert (io.tun_rx_packets, io.tun_rx_bytes) == ([1, 0], [len(segs[0]), 0])
