"""``gateway_io.batch_out.send_batch``: each socket gets its family's datagrams in order, counted once per
batch; a family without a socket, or sockets without ``send_batch``, go through the per-item path."""

from __future__ import annotations

from ipaddress import ip_address

from gateway_core.addr import SocketAddr
from gateway_core.commands import Transmit
from gateway_core.inputs import Input, SendFailed
from gateway_core.stats import Stats
from gateway_io.batch_out import send_batch
from gateway_io.io_counters import V4, V6, IoCounters
from gateway_io.transports import Transports

A4 = SocketAddr(ip_address("192.0.2.1"), 1)
A6 = SocketAddr(ip_address("2001:db8::1"), 2)


class Sock:
    def __init__(self, local: str, fail_last: int = 0) -> None:
        self.local = SocketAddr(ip_address(local), 51820)
        self.got: list[Transmit] = []
        self.fail_last = fail_last

    def send_batch(self, transmits: list[Transmit]) -> list[SendFailed]:
        self.got.extend(transmits)
        return [SendFailed(t.dst, "full") for t in transmits[len(transmits) - self.fail_last :]]


class PlainSock:
    local = SocketAddr(ip_address("0.0.0.0"), 51820)


def _run(socks: list[object], tx: list[Transmit]) -> tuple[IoCounters, Stats, list[Input], list[Transmit]]:
    io, counters, reports, items = IoCounters(), Stats(), [], []
    send_batch(Transports(udp=socks), tx, counters, io, reports.append, items.append)  # type: ignore[arg-type]
    return io, counters, reports, items


def test_one_family_goes_whole_and_mixed_batches_are_split_in_order() -> None:
    v4, v6 = Sock("0.0.0.0"), Sock("::")
    only4 = [Transmit(None, A4, bytes(10)), Transmit(None, A4, bytes(20))]
    io, _, reports, items = _run([v4, v6], only4)
    assert v4.got == only4 and v6.got == [] and reports == [] and items == []
    assert (io.udp_tx_packets, io.udp_tx_bytes) == ([2, 0], [30, 0])
    v4.got.clear()
    mixed = [Transmit(None, A4, b"a"), Transmit(None, A6, b"bb"), Transmit(None, A4, b"ccc")]
    io, _, _, items = _run([v4, v6], mixed)
    assert v4.got == [mixed[0], mixed[2]] and v6.got == [mixed[1]] and items == []
    assert (io.udp_tx_packets[V4], io.udp_tx_bytes[V4], io.udp_tx_packets[V6], io.udp_tx_bytes[V6]) == (
        2,
        4,
        1,
        2,
    )


def test_a_family_without_a_socket_and_failures_take_their_paths() -> None:
    v4 = Sock("0.0.0.0", fail_last=1)
    mixed = [Transmit(None, A4, b"a"), Transmit(None, A6, b"bb"), Transmit(None, A4, b"ccc")]
    io, counters, reports, items = _run([v4], mixed)
    assert items == [mixed[1]]  # the driver's own transmit says "no IPv6 socket"
    assert [r.dst for r in reports if isinstance(r, SendFailed)] == [A4]
    assert counters.snapshot().get("driver.send_failed") == 1
    assert (io.udp_tx_packets[V4], io.udp_tx_bytes[V4]) == (1, 1)


def test_sockets_without_send_batch_get_every_item_through_the_driver() -> None:
    tx = [Transmit(None, A4, b"a"), Transmit(None, A6, b"b")]
    io, _, _, items = _run([PlainSock()], tx)
    assert items == tx and io.udp_tx_packets == [0, 0]
