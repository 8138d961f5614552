"""Cost of parsing the header of a 1400-byte UDP/IPv4 packet, next to one ``bytes`` slice of the same packet.

Both are measured in the same run (timeit, best of several repeats), so the ratio is meaningful across
machines: "parsing costs N slices". The reference is ``packet[28:]`` (taking the UDP payload, a copy the
data path makes anyway); a 28-byte header slice is shown too.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from ipaddress import IPv4Address

from gateway_core.wire.ip import (
    MAX_IP_SIZE,
    build_udp_packet,
    five_tuple,
    l4_info,
    parse_ip,
    src_dst,
    validate,
)
from gateway_core.wire.rewrite import nat_rewrite

# Why: the size the issue asks about (a typical full-MTU datagram's inner packet).
PACKET_SIZE = 1400
# Why: enough iterations that one measurement takes ~5-100 ms on a small machine; best of REPEATS.
NUMBER = 20_000
REPEATS = 5


def _ratio(fn: Callable[[], object], ref: Callable[[], object]) -> tuple[float, float]:
    """Seconds per call of ``fn`` and of ``ref``, best of REPEATS, measured alternately so that load from
    other processes hits both alike."""
    t_fn: list[float] = []
    t_ref: list[float] = []
    for _ in range(REPEATS):
        t_ref.append(timeit.timeit(ref, number=NUMBER) / NUMBER)
        t_fn.append(timeit.timeit(fn, number=NUMBER) / NUMBER)
    return min(t_fn), min(t_ref)


def main() -> None:
    src, dst = IPv4Address("100.64.0.1"), IPv4Address("10.0.0.1")
    pkt = build_udp_packet(src, dst, 40000, 443, bytes(PACKET_SIZE - 28))
    assert len(pkt) == PACKET_SIZE
    # validate() rejects anything above 1280 bytes at once (MAX_IP_SIZE); time it on the largest valid packet.
    pkt_mtu = build_udp_packet(src, dst, 40000, 443, bytes(MAX_IP_SIZE - 28))
    real = IPv4Address("10.0.0.2")
    buf = bytearray(pkt)

    def rewrite() -> None:
        nat_rewrite(buf, dst=real, sport=40001)

    def reference() -> object:
        return pkt[28:]

    cases: list[tuple[str, Callable[[], object]]] = [
        ("bytes slice pkt[:28] (header only)", lambda: pkt[:28]),
        ("l4_info (proto, offset, end)", lambda: l4_info(pkt)),
        ("src_dst (two addresses)", lambda: src_dst(pkt)),
        ("five_tuple", lambda: five_tuple(pkt)),
        ("parse_ip (NamedTuple + payload copy)", lambda: parse_ip(pkt)),
        ("validate, 1280-byte packet", lambda: validate(pkt_mtu)),
        ("nat_rewrite dst+sport (incremental)", rewrite),
    ]
    print(f"packet: {PACKET_SIZE}-byte UDP/IPv4; reference: one bytes slice pkt[28:] (measured alongside)")
    print(f"{'operation':40} {'ns/call':>9} {'ref ns':>7} {'x slice':>8}")
    for name, fn in cases:
        t, r = _ratio(fn, reference)
        print(f"{name:40} {t * 1e9:9.0f} {r * 1e9:7.0f} {t / r:8.1f}")


if __name__ == "__main__":
    main()
