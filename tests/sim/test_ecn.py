"""ECN through the gateway in the simulator: the outer datagram's CE mark is merged into an ECN-capable
inner packet on the way to the resource (Firezone: ``with_ecn_from_transport`` in
``rust/connlib/ip-packet/src/lib.rs``, applied in ``rust/connlib/tunnel/src/lib.rs``), directly and over
a relay; nothing else changes an inner packet's ECN bits. The marks are set by the world's
:meth:`~sim.world.World.mark_ecn` (a router re-marking the datagrams between two hosts)."""

from __future__ import annotations

import pytest

from gateway_core.clock import secs
from gateway_core.wire.ip import build_udp_packet
from gateway_core.wire.rewrite import recompute_checksums
from sim.gateway_world import CIDR_RESOURCE, WEB_V4, GatewayWorld, build_gateway_world

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3


def _ready(seed: int, **kw: object) -> GatewayWorld:
    gw = build_gateway_world(seed, **kw)  # type: ignore[arg-type]
    assert gw.start()
    gw.grant(0, CIDR_RESOURCE)
    assert gw.run_until_connected(0)
    return gw


def _send(gw: GatewayWorld, inner_ecn: int, n: int = 1) -> None:
    """The client's application sends ``n`` UDP echo packets to the web resource with ``inner_ecn``."""
    src = gw.clients[0].tunnel_v4
    for i in range(n):
        p = bytearray(build_udp_packet(src, WEB_V4, 41000 + i, 7, b"ecn"))
        p[1] = inner_ecn
        recompute_checksums(p)
        gw.drive(0, lambda c, now, p=bytes(p): c.send_packet(now, p))
    gw.world.run_for(secs(1))


def _marks_at_web(gw: GatewayWorld) -> dict[int, int]:
    return dict(gw.web.ecn_marks)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("relayed", [False, True])
def test_outer_ce_marks_an_ect_inner_packet_ce(seed: int, relayed: bool) -> None:
    gw = _ready(seed, relay_only=relayed)
    gw.web.ecn_marks.clear()
    senders = gw.relay_names if relayed else [gw.client_hosts[0].name]
    for s in senders:
        gw.world.mark_ecn(s, gw.gateway_host.name, CE)
    _send(gw, ECT0)
    _send(gw, ECT1)
    assert _marks_at_web(gw) == {CE: 2}


def test_non_ect_inner_packets_and_non_ce_outer_marks_change_nothing() -> None:
    gw = _ready(3)
    gw.web.ecn_marks.clear()
    client = gw.client_hosts[0].name
    gw.world.mark_ecn(client, gw.gateway_host.name, CE)
    _send(gw, NOT_ECT)  # the sender is not ECN-capable: CE must not be invented
    gw.world.mark_ecn(client, gw.gateway_host.name, ECT1)
    _send(gw, ECT0)  # an outer ECT(1) does not overwrite the inner ECT(0)
    gw.world.mark_ecn(client, gw.gateway_host.name, None)
    _send(gw, CE)  # an inner CE is never cleared
    assert _marks_at_web(gw) == {NOT_ECT: 1, ECT0: 1, CE: 1}


@pytest.mark.parametrize("relayed", [False, True])
def test_the_datagram_carries_the_inner_packets_ecn_bits(relayed: bool) -> None:
    """The other half (snownet's ``Transmit::ecn``): an encapsulated packet's datagram carries the inner
    packet's ECN bits, on a direct path and to the relay; control traffic stays Not-ECT."""
    gw = _ready(4, relay_only=relayed)
    client = gw.client_hosts[0].name
    seen: list[dict[str, object]] = []
    gw.world.trace.listeners.append(lambda r: seen.append(r) if r.get("ev") == "deliver" else None)
    _send(gw, ECT1, 2)
    _send(gw, NOT_ECT)
    _send(gw, ECT0)
    def wg_data(hex_payload: str) -> bool:
        """A WireGuard data message that is no keepalive, bare or behind a ChannelData header."""
        skip = 8 if 0x40 <= int(hex_payload[:2], 16) <= 0x7F else 0
        return hex_payload[skip : skip + 8] == "04000000" and len(hex_payload) - skip > 64

    data = [r for r in seen if r["from"] == client and wg_data(str(r["payload"]))]
    assert [r.get("ecn", 0) for r in data] == [ECT1, ECT1, NOT_ECT, ECT0]
    assert all((r["to"] in gw.relay_names) is relayed for r in data)
