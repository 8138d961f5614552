"""R6 for the whole gateway: no byte sequence from the network, the TUN, the tunnel or the portal raises
out of the facade, and the deadlines stay sane (R4) afterwards."""

from __future__ import annotations

import json
from ipaddress import ip_address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.portal.channel import PortalFrameReceived
from gateway_core.wire.ipbuild import build_udp_packet
from tests.unit.gateway_harness import CL_TUN4, GW, RELAY, Harness, dns_resource

_H: Harness | None = None


def harness() -> Harness:
    """One connected client with a DNS resource, shared by the examples (set-up costs ~0.3 s)."""
    global _H
    if _H is None:
        h = Harness()
        h.setup(dns_resource("**.example.com"))
        _H = h
    return _H


def _check(h: Harness) -> None:
    d = h.gw.poll_timeout()
    assert d is None or d.at >= h.now
    h.pump()


SOURCES = st.sampled_from([SocketAddr(ip_address("198.18.0.1"), 4000), RELAY, SocketAddr(RELAY.ip, 50000)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SOURCES, st.binary(max_size=200))
def test_random_datagrams(src: SocketAddr, data: bytes) -> None:
    h = harness()
    assert h.gw.handle_datagram(h.now, GW, src, data) is None
    _check(h)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_random_tun_packets(data: bytes) -> None:
    h = harness()
    h.gw.handle_tun_packet(h.now, data)
    mangled = bytearray(build_udp_packet(ip_address("10.0.0.1"), CL_TUN4, 53, 4000, data))
    mangled[data[0] % len(mangled)] ^= 0xFF
    h.gw.handle_tun_packet(h.now, bytes(mangled))
    _check(h)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=300))
def test_random_inner_packets_from_the_client(data: bytes) -> None:
    h = harness()
    t = h.client.encapsulate("gateway", data, h.now)
    if t is not None:
        h.gw.handle_datagram(h.now, GW, h.client.connections["gateway"].peer_socket.source, t.payload)  # type: ignore[union-attr]
    v4 = bytearray(build_udp_packet(CL_TUN4, ip_address("100.96.0.1"), 4000, 53, data))
    v4[data[0] % 28] ^= data[1]
    t = h.client.encapsulate("gateway", bytes(v4), h.now)
    if t is not None:
        h.deliver(h.client.connections["gateway"].peer_socket.source, t)  # type: ignore[union-attr]
    _check(h)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
EVENTS = st.sampled_from(
    [
        "init",
        "authorize_flow",
        "request_connection",
        "allow_access",
        "reject_access",
        "resource_updated",
        "access_authorization_expiry_updated",
        "relays_presence",
        "ice_candidates",
        "invalidate_ice_candidates",
        "nonsense",
    ]
)


@settings(max_examples=200, deadline=None)
@given(EVENTS, JSON)
def test_random_portal_messages(event: str, payload: object) -> None:
    h = harness()
    assert h.conn is not None
    text = json.dumps({"topic": "gateway", "event": event, "payload": payload, "ref": None})
    h.gw.handle_input(h.now, PortalFrameReceived(h.conn, text))
    _check(h)
