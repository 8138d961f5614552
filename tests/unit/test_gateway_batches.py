"""The gateway's batch entry points (``handle_datagrams``, ``handle_tun_packets``) give exactly what the
per-packet ones give, in the same order, with the same commands queued (the driver hands batches)."""

from __future__ import annotations

from ipaddress import ip_address

from gateway_core.commands import Transmit
from gateway_core.wire.ipbuild import build_udp_packet
from tests.unit.gateway_harness import CL, CL_TUN4, GW, Harness, cidr_resource

RES = ip_address("172.20.0.5")


def _pair() -> tuple[Harness, Harness]:
    hs = (Harness(), Harness())
    for h in hs:
        h.setup(cidr_resource())
    return hs


def _packets(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        src, dst = (CL_TUN4, RES) if i % 3 else ("100.64.0.99", RES)  # every third one is spoofed
        out.append(build_udp_packet(ip_address(src), dst, 40000 + i, 80, bytes([i]) * (i + 1)))
    return out


def _commands(h: Harness) -> list[object]:
    out = []
    while (cmd := h.gw.poll_command()) is not None:
        out.append(cmd)
    return out


def test_handle_datagrams_equals_one_by_one() -> None:
    a, b = _pair()
    packets = _packets(12)
    wires = []
    for h in (a, b):
        ts = [h.client.encapsulate("gateway", p, h.now) for p in packets]
        assert all(isinstance(t, Transmit) for t in ts)
        wires.append([(GW, CL, t.payload, 0) for t in ts if t is not None])
    assert wires[0] == wires[1]
    batch = a.gw.handle_datagrams(a.now, wires[0])
    single = [p for w in wires[1] if (p := b.gw.handle_datagram(b.now, *w)) is not None]
    assert batch == single and len(batch) == 8
    assert _commands(a) == _commands(b)
    assert a.drops() == b.drops()


def test_handle_tun_packets_equals_one_by_one() -> None:
    a, b = _pair()
    back = [build_udp_packet(RES, ip_address(CL_TUN4), 80, 40000 + i, bytes(i)) for i in range(10)]
    back.insert(4, b"\x45garbage")
    batch = a.gw.handle_tun_packets(a.now, back)
    single = [t for p in back if (t := b.gw.handle_tun_packet(b.now, p)) is not None]
    assert batch == single and len(batch) == 10
    assert _commands(a) == _commands(b)
    assert a.drops() == b.drops()
