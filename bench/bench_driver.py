"""The driver's overhead per packet: TUN packets through ``Driver`` next to a plain loop over the same core.

The core is trivial (every TUN packet becomes one ``Transmit``, sent by a fake UDP socket that only counts),
so what is measured is the loop itself: sources, batches, the drain after every packet (R3), the timer
check per turn. The reference is the plain loop a driver could not be simpler than: ``for p in packets:
t = core.handle_tun_packet(now, p); send(t); drain``. Both run in the same process; the ratio says how many
"bare loop iterations" one packet through the driver costs.
"""

from __future__ import annotations

import math
import time
from ipaddress import ip_address

import anyio

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.commands import Command, Transmit
from gateway_core.contract import Deadline
from gateway_core.inputs import Input, SendFailed
from gateway_io.driver import Driver, Transports

PACKETS = 50_000
"""Packets per measurement (~0.1-1 s on a small machine)."""
REPEATS = 5
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

    def __init__(self) -> None:
        self.sent = 0

    async def receive_batch(self) -> list[tuple[SocketAddr, SocketAddr, bytes, int]]:
        await anyio.sleep(math.inf)
        return []

    def send(self, transmit: Transmit) -> SendFailed | None:
        self.sent += 1
        return None


class Tun:
    def __init__(self, packets: list[bytes], batch: int = 100) -> None:
        self.packets = packets
        self.batch = batch
        self.pos = 0

    async def read_batch(self) -> list[bytes]:
        if self.pos >= len(self.packets):
            await anyio.sleep(math.inf)
        out = self.packets[self.pos : self.pos + self.batch]
        self.pos += len(out)
        return out

    def write(self, packet: bytes) -> OSError | None:
        return None


async def _driver_run(packets: list[bytes]) -> float:
    core, udp = Core(), Udp()
    driver = Driver(core)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.run, Transports(tun=Tun(packets), udp=[udp]))
        while udp.sent < len(packets):
            await anyio.sleep(0)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    return elapsed


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
    packets = [bytes(1280)] * PACKETS
    t_driver = t_plain = math.inf
    for _ in range(REPEATS):
        t_driver = min(t_driver, anyio.run(_driver_run, packets))
        t_plain = min(t_plain, _plain(packets))
    per_driver = t_driver / PACKETS * 1e9
    per_plain = t_plain / PACKETS * 1e9
    print(f"driver: {per_driver:.0f} ns/packet, plain loop: {per_plain:.0f} ns/packet")
    print(f"ratio driver/plain: {t_driver / t_plain:.2f}x")


if __name__ == "__main__":
    main()
