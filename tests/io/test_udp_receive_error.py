"""A receive error on a UDP socket is counted and skipped, never raised (R6/R7)."""

from __future__ import annotations

import socket

from gateway_core.errors import DropReason
from gateway_io.udp import UdpSocket


class _FlakySocket:
    """A bound socket whose first receive fails the way an ICMP error for an earlier send does."""

    def __init__(self) -> None:
        self.real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.real.bind(("127.0.0.1", 0))
        self.real.setblocking(False)
        self.family = self.real.family
        self.failures = 1

    def getsockname(self) -> tuple[str, int]:
        return self.real.getsockname()

    def recvmsg_into(self, buffers, ancbufsize):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return self.real.recvmsg_into(buffers, ancbufsize)

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()


def test_receive_error_is_counted_and_the_next_datagram_still_arrives() -> None:
    flaky = _FlakySocket()
    udp = UdpSocket(flaky)  # type: ignore[arg-type]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"hello", flaky.getsockname())
        got = None
        for _ in range(1000):  # the datagram is queued locally on loopback; bounded polling
            got = udp.try_receive()
            if got is not None:
                break
    flaky.close()
    assert got is not None
    assert got[2] == b"hello"
    assert udp.stats.drops[DropReason.UDP_RECEIVE_ERROR] == 1
