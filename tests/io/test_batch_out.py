"""``gateway_io.batch_out.BatchOut``: the sockets are handed the batch in turn, each keeping its family's
datagrams in order and handing the rest on; what no socket took, and everything for sockets without the
batch interface, goes through the per-item path; TUN batches are counted unless the device counts."""

from __future__ import annotations

from ipaddress import ip_address

from gateway_core.addr import SocketAddr
from gateway_core.commands import Transmit
from gateway_core.inputs import Input, SendFailed
from gateway_core.stats import Stats
from gateway_io.batch_out import BatchOut
from gateway_io.io_counters import V4, V6, IoCounters
from gateway_io.transports import Transports

A4 = SocketAddr(ip_address("192.0.2.1"), 1)
A6 = SocketAddr(ip_address("2001:db8::1"), 2)


class Sock:
    """The batch interface of ``gateway_io.udp.UdpSocket``: it sorts by family and counts what it sent."""

    def __init__(self, local: str, fail_last: int = 0) -> None:
        self.local = SocketAddr(ip_address(local), 51820)
        self.got: list[Transmit] = []
        self.fail_last = fail_last
        self.calls = 0
        self.io = IoCounters()

    def count_into(self, io: IoCounters) -> None:
        self.io = io

    def send_batch(self, transmits: list[Transmit], others: list[Transmit]) -> list[SendFailed]:
        self.calls += 1
        mine = [t for t in transmits if t.dst.ip.version == self.local.ip.version]
        others.extend(t for t in transmits if t.dst.ip.version != self.local.ip.version)
        self.got.extend(mine)
        return [SendFailed(t.dst, "full") for t in mine[len(mine) - self.fail_last :]]


class OldSock:
    """A socket with ``send_batch`` but not the rest of the batch interface (it does not count)."""

    local = SocketAddr(ip_address("0.0.0.0"), 51820)

    def send_batch(self, transmits: list[Transmit]) -> list[SendFailed]:
        raise AssertionError("not to be handed batches")


class PlainSock:
    local = SocketAddr(ip_address("0.0.0.0"), 51820)


class Tun:
    def __init__(self, counts: bool) -> None:
        self.written: list[bytes] = []
        if counts:
            self.count_into = lambda io: None

    def write_batch(self, packets: list[bytes]) -> list[OSError]:
        self.written.extend(packets)
        return [OSError("full")] if packets[-1] == b"fail" else []


def _run(
    socks: list[object], tx: list[Transmit], tun: object = None, tun_out: list[bytes] | None = None
) -> tuple[IoCounters, Stats, list[Input], list[Transmit], list[bytes]]:
    io, counters, reports, items, written = IoCounters(), Stats(), [], [], []
    out = BatchOut(Transports(tun=tun, udp=socks), counters, io, reports.append, items.append, written.append)  # type: ignore[arg-type]
    out.flush(tx, tun_out or [])
    return io, counters, reports, items, written


def test_each_socket_sends_its_family_in_order_and_hands_the_rest_on() -> None:
    v4, v6 = Sock("0.0.0.0"), Sock("::")
    only4 = [Transmit(None, A4, bytes(10)), Transmit(None, A4, bytes(20))]
    io, _, reports, items, _ = _run([v4, v6], only4)
    assert v4.got == only4 and v6.got == [] and reports == [] and items == []
    assert v6.calls == 0  # nothing was left for it
    assert io.udp_tx_packets == [0, 0]  # the sockets count their own traffic
    v4.got.clear()
    mixed = [
        Transmit(None, A4, b"a"),
        Transmit(None, A6, b"bb"),
        Transmit(None, A4, b"ccc"),
        Transmit(None, A6, b"d"),
    ]
    _, _, _, items, _ = _run([v4, v6], mixed)
    assert v4.got == [mixed[0], mixed[2]] and v6.got == [mixed[1], mixed[3]] and items == []


def test_a_family_without_a_socket_and_failures_take_their_paths() -> None:
    v4 = Sock("0.0.0.0", fail_last=1)
    mixed = [Transmit(None, A4, b"a"), Transmit(None, A6, b"bb"), Transmit(None, A4, b"ccc")]
    _, counters, reports, items, _ = _run([v4], mixed)
    assert items == [mixed[1]]  # the driver's own transmit says "no IPv6 socket"
    assert [r.dst for r in reports if isinstance(r, SendFailed)] == [A4]
    assert counters.snapshot().get("driver.send_failed") == 1


def test_sockets_without_the_batch_interface_get_every_item_through_the_driver() -> None:
    tx = [Transmit(None, A4, b"a"), Transmit(None, A6, b"b")]
    for socks in ([PlainSock()], [OldSock()], [OldSock(), Sock("::")]):
        io, _, _, items, _ = _run(list(socks), tx)
        assert items == tx and io.udp_tx_packets == [0, 0]


def test_tun_batches_are_counted_here_only_for_a_device_that_does_not_count() -> None:
    packets = [b"\x45" + bytes(19), b"\x60" + bytes(39), b"\x45" + bytes(29)]
    for counts in (False, True):
        tun = Tun(counts)
        io, counters, _, _, written = _run([], [], tun, packets)
        assert tun.written == packets and written == []
        expected = ([0, 0], [0, 0]) if counts else ([2, 1], [50, 40])
        assert (io.tun_tx_packets, io.tun_tx_bytes) == expected
    tun = Tun(False)
    io, counters, _, _, _ = _run([], [], tun, [b"\x45" + bytes(19), b"fail"])
    assert counters.snapshot().get("driver.tun_write_failed") == 1
    assert (io.tun_tx_packets[V4], io.tun_tx_packets[V6]) == (1, 0)  # a close count: the failed one is not


def test_a_tun_without_write_batch_gets_every_packet_through_the_driver() -> None:
    packets = [b"\x45" + bytes(19), b"\x45" + bytes(29)]
    _, _, _, _, written = _run([], [], PlainSock(), packets)
    assert written == packets
