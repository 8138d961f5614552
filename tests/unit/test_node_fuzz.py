"""R6 for the node and the agent: no byte sequence from the network raises (hypothesis)."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis
from gateway_core.wire import stun
from gateway_core.wire import turn as tw
from gateway_core.wire.stun import Attr, Class, Method, StunMessage
from tests.unit.test_node import CL, GW, RELAY, World

SOURCES = [CL, RELAY, SocketAddr(IPv4Address("203.0.113.99"), 3478), SocketAddr(IPv4Address("10.9.9.9"), 1)]


def _shaped(kind: int, tail: bytes, tid: bytes) -> bytes:
    """Inputs near the classifier's edges: STUN-looking, ChannelData-looking, WireGuard-looking."""
    if kind == 0:
        m = StunMessage(Method.BINDING, Class.REQUEST, tid).add_text(Attr.USERNAME, "gwuf:cluf")
        m.add_u32(Attr.PRIORITY, 1).add(0x7F00, tail)
        return m.encode(b"gateway-password-22chr", fingerprint=True)
    if kind == 1:
        return stun.StunMessage(Method.ALLOCATE, Class.SUCCESS, tid).add(Attr.LIFETIME, tail[:4]).encode()
    if kind == 2:
        return tw.encode_channel_data(0x4000 + (len(tail) % 3), tail)
    if kind == 3:
        return bytes([1 + len(tail) % 4, 0, 0, 0]) + tail
    return tail


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.binary(max_size=200), st.sampled_from(SOURCES)), max_size=8))
def test_node_never_raises_on_datagrams(inputs: list[tuple[int, bytes, SocketAddr]]) -> None:
    w = World()
    w.connect()
    w.run_until(millis(500))
    for i, (kind, tail, src) in enumerate(inputs):
        w.now = Instant(w.now + millis(3))
        data = _shaped(kind, tail, bytes([i]) * 12)
        w.gw.handle_datagram(w.now, GW, src, data)
        w.pump()
    # Still working afterwards: the connection keeps its path.
    w.run_until(w.now + millis(1500))
    assert w.gw.connections["cl"].peer_socket is not None
