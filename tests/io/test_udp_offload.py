"""UDP batching on loopback (``gateway_io.udp.UdpSocket``): a run of datagrams to one destination leaves
with one ``sendmsg`` and ``UDP_SEGMENT``, the receiver (``UDP_GRO``) gets them as one run and splits it by
the segment size in the control message; the datagrams arrive whole, in order, through the shape filter
for coalesced runs. Without offloads the same batch goes one by one."""

from __future__ import annotations

import socket

import anyio
import pytest

from gateway_core.addr import SocketAddr
from gateway_core.commands import Transmit
from gateway_io.udp import UdpSocket

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
