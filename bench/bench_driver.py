"""The driver's overhead per packet: TUN packets through ``Driver`` next to a plain loop over the same core.

The core is trivial (every TUN packet becomes one ``Transmit``, sent by a fake UDP socket that only counts),
so what is measured is the loop itself: sources, batches, the drain (R3), the counters, the timer check per
turn. Two shapes, each with its own plain loop, the loop a driver could not be simpler than:

- **batched** (what the daemon runs): the core has ``handle_tun_packets`` and the devices have the batch
  methods and count their own traffic (``count_into``), as ``Gateway``, ``TunDevice`` and ``UdpSocket`` do;
  the fake devices count each read and each sent run in O(1), as the real ones count each frame read and
  each run sent (:mod:`gateway_io.io_counters`); the plain loop is ``for batch: ts =
  core.handle_tun_packets(now, batch); drain; udp.send_batch(ts)``, on the same fake socket;
- **per item** (a core and transports without the batch methods, as test fakes): ``for p in batch: t =
  core.handle_tun_packet(now, p); udp.send(t); drain``; the driver counts each packet.

Both loops run in the same process, alternating; the ratio says how many "bare loop iterations" one packet
through the driver costs. The batched ratio is the one the target is about.
"""

from __future__ import annotations

import math
import time
from ipaddress import ip_address
from itertools import accumulate

import anyio

from bench import machine
from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Transmit
from gateway_core.contract import Deadline
from gateway_core.inputs import Input, SendFailed
from gateway_io.driver import Driver, Transports
from gateway_io.io_counters import V4, IoCounters

PACKETS = 50_000
"""Packets per measurement (~0.1-1 s on a small machine)."""
REPEATS = 25
"""Best of this many, driver and plain loop alternating (so that background load hits both alike)."""
DST = SocketAddr(ip_address("192.0.2.1"), 51820)
LOCAL = SocketAddr(ip_address("0.0.0.0"), 52625)


class Core:
    def __init__(self) -> None:
        self.handled = 0

    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit | None:
        self.handled += 1
        return Transmit(None, DST, packet)

    def handle_datagram(
        self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes, ecn: int = 0
    ) -> bytes | None:
        return None

    def handle_input(self, now: Instant, inp: Input) -> None:
        pass

    def handle_timeout(self, now: Instant) -> None:
        pass

    def poll_timeout(self) -> Deadline | None:
        return None

    def poll_command(self) -> Command | None:
        return None


class Udp:
    local = LOCAL

    def __init__(self, expect: int = 0) -> None:
        self.sent = 0
        self.expect = expect
        self.done = anyio.Event()
        """Set when ``expect`` datagrams were sent: the measurement waits on it (no task polling beside the
        loop it measures)."""

    async def receive_batch(self) -> list[tuple[SocketAddr, SocketAddr, bytes, int]]:
        await anyio.sleep(math.inf)
        return []

    def send(self, transmit: Transmit) -> SendFailed | None:
        self.sent += 1
        if self.sent == self.expect:
            self.done.set()
        return None


class BatchCore(Core):
    def handle_tun_packets(self, now: Instant, packets: list[bytes]) -> list[Transmit]:
        self.handled += len(packets)
        return [Transmit(None, DST, p) for p in packets]


class BatchUdp(Udp):
    """A socket with the real one's batch interface (``send_batch`` with ``others``, ``count_into``). It
    sends each batch as one run, as the real one sends the run of equal-sized datagrams to one peer that
    every batch here is (the real one looks at the family and sizes the run once per run, and counts it)."""

    def __init__(self, expect: int = 0) -> None:
        super().__init__(expect)
        self.io = IoCounters()

    def count_into(self, io: IoCounters) -> None:
        self.io = io

    def send_batch(self, transmits: list[Transmit], others: list[Transmit] | None = None) -> list[SendFailed]:
        if not transmits:
            return []
        first = transmits[0]
        if first.dst.ip.version != 4:
            if others is not None:
                others.extend(transmits)
            return []
        n = len(transmits)
        self.io.udp_tx_packets[V4] += n
        self.io.udp_tx_bytes[V4] += len(first.payload) * (n - 1) + len(transmits[-1].payload)
        self.sent += n
        if self.sent >= self.expect:
            self.done.set()
        return []


class Tun:
    """A TUN device with the real one's reading interface (``read_batch``, and ``read_nowait`` with
    ``wait_readable``, which the driver uses when a device has them)."""

    def __init__(self, packets: list[bytes], batch: int = 100) -> None:
        self.packets = packets
        self.batch = batch
        self.pos = 0
        self.io = IoCounters()
        self._ends = [0, *accumulate(map(len, packets))]
        """Bytes up to each packet: a read is counted in O(1), as the real device counts one frame."""

    def count_into(self, io: IoCounters) -> None:
        self.io = io

    async def read_batch(self) -> list[bytes]:
        await self.wait_readable()
        return self.read_nowait()

    def read_nowait(self) -> list[bytes]:
        """As :meth:`gateway_io.tun.TunDevice.read_nowait`: what is queued, without waiting."""
        start = self.pos
        out = self.packets[start : start + self.batch]
        self.pos += len(out)
        self.io.tun_rx_packets[V4] += len(out)
        self.io.tun_rx_bytes[V4] += self._ends[self.pos] - self._ends[start]
        return out

    async def wait_readable(self) -> None:
        if self.pos >= len(self.packets):
            await anyio.sleep(math.inf)

    def write(self, packet: bytes) -> OSError | None:
        return None


async def _driver_run(packets: list[bytes], batched: bool) -> float:
    core, udp = (BatchCore(), BatchUdp(len(packets))) if batched else (Core(), Udp(len(packets)))
    driver = Driver(core)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.run, Transports(tun=Tun(packets), udp=[udp]))
        await udp.done.wait()
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return elapsed


def _plain_batched(packets: list[bytes]) -> float:
    core, udp = BatchCore(), BatchUdp()
    start = time.perf_counter()
    for i in range(0, len(packets), 100):
        now = Instant(time.monotonic_ns())
        ts = core.handle_tun_packets(now, packets[i : i + 100])
        while core.poll_command() is not None:
            pass
        udp.send_batch(ts)
        core.poll_timeout()
    return time.perf_counter() - start


def _plain(packets: list[bytes]) -> float:
    core, udp = Core(), Udp()
    start = time.perf_counter()
    now = Instant(time.monotonic_ns())
    for i in range(0, len(packets), 100):
        now = Instant(time.monotonic_ns())
        for p in packets[i : i + 100]:
            t = core.handle_tun_packet(now, p)
            if t is not None:
                udp.send(t)
            while core.poll_command() is not None:
                pass
        core.poll_timeout()
    return time.perf_counter() - start


def main() -> None:
    print(machine.line())
    packets = [bytes(1280)] * PACKETS
    for name, batched, plain in (("per item", False, _plain), ("batched", True, _plain_batched)):
        t_driver = t_plain = math.inf
        for _ in range(REPEATS):
            t_driver = min(t_driver, anyio.run(_driver_run, packets, batched))
            t_plain = min(t_plain, plain(packets))
        per_driver = t_driver / PACKETS * 1e9
        per_plain = t_plain / PACKETS * 1e9
        print(f"{name}: driver {per_driver:.0f} ns/packet, plain loop {per_plain:.0f} ns/packet")
        print(f"ratio driver/plain ({name}): {t_driver / t_plain:.2f}x")


if __name__ == "__main__":
    main()
