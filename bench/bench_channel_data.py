"""Classifying a 1400-byte datagram from a relay and unwrapping its ChannelData, next to one ``bytes`` slice.

The reference is ``datagram[4:]``: taking the payload, a copy the data path makes anyway. Measured in the
same run (timeit, best of several alternating repeats), so the ratio compares across machines:
"demultiplexing costs N slices". Cases: the first-byte classification alone, ChannelData decoding alone,
both, and both plus the allocation's channel lookup (what the node does per relayed datagram before
WireGuard sees it).
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from ipaddress import IPv4Address

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.ice import candidate as cand
from gateway_core.turn.allocation import Allocation, RelaySocket
from gateway_core.wire.turn import Kind, classify, decode_channel_data, encode_channel_data

DATAGRAM_SIZE = 1400
"""The size the issue asks about (a full-MTU relayed WireGuard datagram)."""
NUMBER = 5_000
"""Iterations per measurement (~5-100 ms each on a small machine)."""
REPEATS = 25
"""Best of this many alternating measurements."""


def _best(fn: Callable[[], object], ref: Callable[[], object]) -> tuple[float, float]:
    t_fn: list[float] = []
    t_ref: list[float] = []
    for _ in range(REPEATS):
        t_ref.append(timeit.timeit(ref, number=NUMBER) / NUMBER)
        t_fn.append(timeit.timeit(fn, number=NUMBER) / NUMBER)
    return min(t_fn), min(t_ref)


def main() -> None:
    relay = SocketAddr(IPv4Address("203.0.113.1"), 3478)
    peer = SocketAddr(IPv4Address("198.51.100.7"), 40000)
    alloc = Allocation(RelaySocket(relay), "u", "p", "firezone", Instant(0), SeededEntropy(1))
    number = alloc.channels.new_channel(peer, Instant(0))
    assert number is not None
    alloc.channels.set_confirmed(number, Instant(0))
    alloc._relayed[4] = cand.relayed(SocketAddr(IPv4Address("203.0.113.1"), 50000), peer)
    dgram = encode_channel_data(number, bytes(DATAGRAM_SIZE - 4))
    assert len(dgram) == DATAGRAM_SIZE
    now = Instant(1)

    def full() -> object:
        if classify(dgram) is Kind.CHANNEL_DATA:
            ch, payload = decode_channel_data(dgram, exact=False)
            return alloc.decapsulate(relay, ch, payload, now)
        return None

    def both() -> object:
        if classify(dgram) is Kind.CHANNEL_DATA:
            return decode_channel_data(dgram, exact=False)
        return None

    cases: list[tuple[str, Callable[[], object]]] = [
        ("classify (first byte)", lambda: classify(dgram)),
        ("decode_channel_data", lambda: decode_channel_data(dgram, exact=False)),
        ("classify + decode_channel_data", both),
        ("classify + decode + Allocation.decapsulate", full),
    ]
    print(f"{'case':<46} {'ours':>10} {'slice':>10} {'ratio':>7}")
    for name, fn in cases:
        ours, ref = _best(fn, lambda: dgram[4:])
        print(f"{name:<46} {ours * 1e9:8.0f}ns {ref * 1e9:8.0f}ns {ours / ref:6.2f}x")


if __name__ == "__main__":
    main()
