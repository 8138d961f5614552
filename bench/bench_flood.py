"""What one flood datagram costs the core: ``Gateway.handle_datagram`` plus draining its commands (what the
driver does per datagram), for each kind an attacker can send, against the cheapest garbage in the same
run: a datagram the node cannot classify (``junk``: never reaches the daemon behind the socket filter, but
the reference for "one datagram read"). The gateway has one connected client (the test harness's
in-memory world, ``tests/unit/gateway_harness.py``); every flood comes from an address that is not the
client's. Best of ``ROUNDS`` alternating rounds of ``BATCH`` datagrams each; ``python -m bench
bench_flood``.

Kinds: ``wg4`` WireGuard data with an unknown receiver index; ``random148`` a random initiation-shaped
datagram (bad mac1); ``mac1 (not under load)`` a valid-mac1 initiation from a random key, the counter held
below the limit (one Diffie-Hellman to find the initiator, then dropped as unknown); ``mac1 under load``
the same with the counter above the limit, from a fresh source each time (a Cookie Reply is built and
queued, no DH); ``mac1 under load, one source`` from one source beyond its budget (dropped, nothing
sent); ``victim`` naming the connected client's key, not under load (one DH to find the initiator; the
client's tunnel goes on from it and fails on the timestamp).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from ipaddress import IPv4Address

from gateway_core.addr import SocketAddr
from gateway_core.gateway import Gateway
from gateway_core.wireguard import crypto
from gateway_core.wireguard.ratelimit import RateLimiter
from tests import attack
from tests.unit.gateway_harness import CL_PRIV, GW, GW_PRIV, Harness, cidr_resource

BATCH = 200
ROUNDS = 9
ATTACKER = SocketAddr(IPv4Address("192.0.2.66"), 40000)


def _setup() -> Harness:
    h = Harness()
    h.setup(cidr_resource())
    return h


def _cost(
    gw: Gateway, datagrams: list[bytes], sources: list[SocketAddr], before: Callable[[], None]
) -> float:
    """Seconds per datagram for one batch."""
    now = gw._now
    handle, poll = gw.handle_datagram, gw.poll_command
    before()
    t0 = time.perf_counter()
    for d, src in zip(datagrams, sources, strict=True):
        handle(now, GW, src, d)
        while poll() is not None:
            pass
    return (time.perf_counter() - t0) / len(datagrams)


def main() -> None:
    h = _setup()
    gw = h.gw
    limiter = gw.node.rate_limiter
    assert isinstance(limiter, RateLimiter)
    gw_pub = crypto.public_key(GW_PRIV)
    victim_pub = crypto.public_key(CL_PRIV)
    one = [ATTACKER] * BATCH
    fresh = [SocketAddr(IPv4Address(0xC6120000 + i), 40000) for i in range(BATCH)]

    def calm() -> None:
        limiter.count = 0
        limiter._sources.clear()

    def loaded() -> None:
        limiter.count = limiter.limit
        limiter._sources.clear()

    def loaded_and_spent() -> None:
        limiter.count = limiter.limit
        limiter._sources.clear()
        for _ in range(10):
            limiter._allow(ATTACKER.ip, gw._now)

    cases: list[tuple[str, list[bytes], list[SocketAddr], Callable[[], None]]] = [
        ("junk (reference)", [attack.junk() for _ in range(BATCH)], one, calm),
        ("wg4 (unknown index)", attack.build("wg4", BATCH, None, None), one, calm),
        ("random148 (bad mac1)", [attack.random148() for _ in range(BATCH)], one, calm),
        ("mac1 under load, one source", attack.build("mac1", BATCH, gw_pub, None), one, loaded_and_spent),
        ("mac1 under load (cookie reply)", attack.build("mac1", BATCH, gw_pub, None), fresh, loaded),
        ("mac1, not under load (1 DH)", attack.build("mac1", BATCH, gw_pub, None), one, calm),
        ("victim, not under load (1 DH)", attack.build("victim", BATCH, gw_pub, victim_pub), one, calm),
    ]
    best = {name: float("inf") for name, *_ in cases}
    for _ in range(ROUNDS):
        for name, datagrams, sources, before in cases:
            best[name] = min(best[name], _cost(gw, datagrams, sources, before))
    ref = best["junk (reference)"]
    print(f"{'kind':<34} {'per datagram':>13} {'ratio to junk':>14}")
    for name, *_ in cases:
        print(f"{name:<34} {best[name] * 1e6:10.2f} us {best[name] / ref:13.1f}x")


if __name__ == "__main__":
    main()
