"""UDP batching on loopback (``gateway_io.udp.UdpSocket``): a run of datagrams to one destination leaves
with one ``sendmsg`` and ``UDP_SEGMENT``, the receiver (``UDP_GRO``) gets them as one run and splits it by
the segment size in the control message; the datagrams arrive whole, in order, through the shape filter
for coalesced runs. Without offloads the same batch goes one by one."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import anyio
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.commands import Transmit
from gateway_io.io_counters import IoCounters
from gateway_io.udp import UdpSocket, UdpSockets

pytestmark = pytest.mark.anyio
LIMIT = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _wg(i: int, size: int) -> bytes:
    return b"\x04\0\0\0" + i.to_bytes(4, "big") + bytes([i]) * (size - 8)


@pytest.mark.parametrize("offload", [True, False])
async def test_a_run_goes_out_as_one_send_and_comes_back_whole(offload: bool) -> None:
    kw = {"mark": None, "send_buffer": None, "recv_buffer": None, "offload": offload}
    a = UdpSocket.bind(socket.AF_INET, 0, **kw)  # type: ignore[arg-type]
    b = UdpSocket.bind(socket.AF_INET, 0, **kw)  # type: ignore[arg-type]
    try:
        assert a.gso == b.gro == offload and b.filtered
        dst = SocketAddr(b.local.ip.__class__("127.0.0.1"), b.local.port)
        payloads = [_wg(i, 1312) for i in range(20)] + [_wg(20, 500)]
        assert a.send_batch([Transmit(None, dst, p) for p in payloads]) == []
        assert a.stats.snapshot().get("udp.gso_sends", 0) == (1 if offload else 0)
        got: list[bytes] = []
        with anyio.fail_after(LIMIT):
            while len(got) < len(payloads):
                got += [p for _, _, p, _ in await b.receive_batch()]
        assert [len(p) for p in got] == [len(p) for p in payloads]
        assert got == payloads
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("offload", [True, False])
async def test_each_datagram_leaves_with_its_ecn_bits(family: socket.AddressFamily, offload: bool) -> None:
    """``Transmit.ecn`` reaches the IP header (``IP_TOS`` / ``IPV6_TCLASS`` on ``sendmsg``), alone and in a
    GSO run (a run never mixes ECN values); the receiving socket reads the bits back per datagram."""
    kw = {"mark": None, "send_buffer": None, "recv_buffer": None, "offload": offload}
    a = UdpSocket.bind(family, 0, **kw)  # type: ignore[arg-type]
    b = UdpSocket.bind(family, 0, **kw)  # type: ignore[arg-type]
    try:
        loop = "127.0.0.1" if family == socket.AF_INET else "::1"
        dst = SocketAddr(b.local.ip.__class__(loop), b.local.port)
        ecns = [0, 2, 2, 2, 1, 3, 0, 0]
        assert a.send_batch([Transmit(None, dst, _wg(i, 200), e) for i, e in enumerate(ecns)]) == []
        assert a.send(Transmit(None, dst, _wg(99, 60), 1)) is None
        got: list[tuple[bytes, int]] = []
        with anyio.fail_after(LIMIT):
            while len(got) < len(ecns) + 1:
                got += [(p, ecn) for _, _, p, ecn in await b.receive_batch()]
        assert [e for _, e in got] == [*ecns, 1]
        assert [p[4:8] for p, _ in got] == [i.to_bytes(4, "big") for i in [*range(len(ecns)), 99]]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("offload", [True, False])
async def test_the_sockets_sort_a_mixed_batch_by_family_and_count_what_they_moved(offload: bool) -> None:
    """A batch of both families handed to the IPv4 socket with ``others`` leaves its IPv6 datagrams there,
    in order, for the IPv6 socket (``UdpSockets.send_batch`` does so); each socket counts what it sent and
    received (a GRO run as its datagrams) in the counters it was given, a failed send not at all."""
    kw = {"mark": None, "send_buffer": None, "recv_buffer": None, "offload": offload}
    a4, a6 = (UdpSocket.bind(f, 0, **kw) for f in (socket.AF_INET, socket.AF_INET6))  # type: ignore[arg-type]
    b4, b6 = (UdpSocket.bind(f, 0, **kw) for f in (socket.AF_INET, socket.AF_INET6))  # type: ignore[arg-type]
    sent, received = IoCounters(), IoCounters()
    for s in (a4, a6):
        s.count_into(sent)
    for s in (b4, b6):
        s.count_into(received)
    try:
        d4 = SocketAddr(ip_address("127.0.0.1"), b4.local.port)
        d6 = SocketAddr(ip_address("::1"), b6.local.port)
        batch = [Transmit(None, d4, _wg(i, 300)) for i in range(5)]
        batch += [
            Transmit(None, d6, _wg(10, 100)),
            Transmit(None, d6, _wg(11, 100)),
            Transmit(None, d4, _wg(5, 50)),
        ]
        others: list[Transmit] = []
        assert a4.send_batch(batch, others) == []
        assert others == batch[5:7]
        assert UdpSockets(v4=None, v6=a6).send_batch(others) == []
        failed = a4.send_batch([Transmit(None, d6, _wg(12, 100))])  # no ``others``: the IPv4 socket tries
        assert len(failed) == 1 and failed[0].dst == d6
        assert (sent.udp_tx_packets, sent.udp_tx_bytes) == ([6, 2], [5 * 300 + 50, 200])
        got4: list[bytes] = []
        got6: list[bytes] = []
        with anyio.fail_after(LIMIT):
            while len(got4) < 6:
                got4 += [p for _, _, p, _ in await b4.receive_batch()]
            while len(got6) < 2:
                got6 += [p for _, _, p, _ in await b6.receive_batch()]
        assert got4 == [t.payload for t in batch if t.dst == d4]
        assert got6 == [t.payload for t in batch if t.dst == d6]
        assert (received.udp_rx_packets, received.udp_rx_bytes) == ([6, 2], [5 * 300 + 50, 200])
        assert received.udp_tx_packets == sent.udp_rx_packets == [0, 0]
    finally:
        for s in (a4, a6, b4, b6):
            s.close()
