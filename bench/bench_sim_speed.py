"""Simulator speed: simulated time per real second on the standard gateway scenario.

Standard scenario: the gateway world (:func:`sim.gateway_world.build_gateway_world`) with 10 clients and
2 relays; every client holds the CIDR and the DNS resource, and pings the CIDR resource once a second, for
10 simulated minutes (after connecting). Measured: virtual seconds per real second (goal >= 1000x). The
reference, in the same run, is the plain event loop on the simulator's own ``echo`` scenario (four hosts
probing each other every 250 ms, no gateway): its speed-up tells how much of the cost is the loop itself.
"""

from __future__ import annotations

import time

from gateway_core.clock import Instant, secs
from sim.gateway_world import CIDR_RESOURCE, DNS_RESOURCE, WEB_V4, build_gateway_world
from sim.scenarios import EchoScenario, build_echo_world
from sim.world import World

CLIENTS = 10
RELAYS = 2
MINUTES = 10
"""Simulated minutes of the standard scenario."""
PING_EVERY = secs(1)
"""Each client's application traffic: one ICMP echo to the CIDR resource per second."""


def gateway_world_speed(seed: int = 1) -> tuple[float, int, float]:
    """(virtual seconds per real second, packets delivered, setup seconds) of the standard scenario."""
    t0 = time.perf_counter()
    gw = build_gateway_world(seed, clients=CLIENTS, relays=RELAYS)
    assert gw.start()
    for i in range(CLIENTS):
        gw.grant(i, CIDR_RESOURCE)
        gw.grant(i, DNS_RESOURCE)
    for i in range(CLIENTS):
        assert gw.run_until_connected(i)
    setup = time.perf_counter() - t0
    start = gw.world.now
    seq = [0] * CLIENTS

    def ping(i: int) -> None:
        seq[i] += 1
        gw.drive(i, lambda c, now: c.send_icmp(now, WEB_V4, seq[i] & 0xFFFF))

    for k in range(MINUTES * 60):
        for i in range(CLIENTS):
            gw.world.at(Instant(start + k * PING_EVERY + i * 1000), lambda i=i: ping(i))
    delivered0 = gw.world.stats.snapshot().get("delivered", 0)
    t1 = time.perf_counter()
    gw.world.run_until(Instant(start + secs(MINUTES * 60)))
    real = time.perf_counter() - t1
    delivered = gw.world.stats.snapshot().get("delivered", 0) - delivered0
    replies = sum(1 for c in gw.clients for r in c.received if type(r).__name__ == "EchoReply")
    assert replies >= CLIENTS * MINUTES * 60 * 99 // 100, replies
    return MINUTES * 60 / real, delivered, setup


def echo_speed(seed: int = 1) -> float:
    cfg = EchoScenario(duration=secs(120))
    world = build_echo_world(World(seed), cfg)
    t = time.perf_counter()
    world.run_until(Instant(cfg.duration))
    return 120 / (time.perf_counter() - t)


def main() -> None:
    ref = echo_speed()
    speed, delivered, setup = gateway_world_speed()
    print(
        f"gateway world, {CLIENTS} clients, {RELAYS} relays, {MINUTES} simulated min: "
        f"{speed:,.0f}x real time ({delivered:,} packets delivered; setup {setup:.2f} s)"
    )
    print(f"reference: echo scenario {ref:,.0f}x real time; ratio gateway/echo {speed / ref:.3f}")


if __name__ == "__main__":
    main()
