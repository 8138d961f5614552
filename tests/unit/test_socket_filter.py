"""The UDP socket filter (``gateway_io.socket_filter``, decision 0116) is never stricter than the node: every
datagram two real nodes exchange (STUN, TURN, ChannelData, WireGuard handshakes, data, cookies) passes it,
and whatever it drops the node would have dropped by its shape alone. The program runs in the module's
interpreter here; ``tests/system/test_udp_filter_netns.py`` runs it in the kernel."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.clock import secs
from gateway_core.commands import Transmit
from gateway_core.errors import DropReason
from gateway_io import socket_filter as sf
from tests import attack
from tests.unit.test_node import CL, GW, RELAY, World

SHAPE_DROPS = {DropReason.DATAGRAM_UNCLASSIFIED, DropReason.WG_MALFORMED}
"""What the node counts for a datagram it cannot use by its shape (nothing else happens)."""


def udp(sport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, 52625, 8 + len(payload), 0) + payload


def kept(sport: int, payload: bytes) -> bool:
    return sf.run(sf.PROGRAM, udp(sport, payload)) != 0


def test_the_program_assembles_and_every_jump_lands_inside() -> None:
    prog = sf.PROGRAM
    for n, (code, jt, jf, _k) in enumerate(prog):
        if code == sf.RET_K:
            assert jt == jf == 0
        else:
            assert n + 1 + max(jt, jf) < len(prog)
    assert prog[-1] == (sf.RET_K, 0, 0, 0) and prog[-2] == (sf.RET_K, 0, 0, sf.KEEP)


class RecordingWorld(World):
    """Records what a node's socket receives (not what goes to a relay)."""

    def __init__(self) -> None:
        self.seen: list[tuple[SocketAddr, bytes]] = []
        super().__init__()

    def deliver(self, src: SocketAddr, t: Transmit) -> None:
        if t.dst in self.nodes:
            self.seen.append((src, t.payload))
        super().deliver(src, t)


def test_everything_two_real_nodes_exchange_passes() -> None:
    for block_direct in (False, True):
        w = RecordingWorld()
        w.block_direct = block_direct
        seen = w.seen
        w.connect()
        w.run_until(secs(30))  # ICE, TURN (allocate, refresh, channels), handshake, keepalives
        t = w.cl.encapsulate("gw", bytes([0x45]) + bytes(19), w.now)
        assert t is not None
        w.deliver(CL, t)
        firsts = {p[0] for _, p in seen}
        assert {0x00, 0x01, 0x02, 0x40} <= firsts  # STUN (0x00/0x01), WireGuard 1 and 2, ChannelData
        assert (0x04 in firsts) is not block_direct  # WireGuard data, direct (else inside ChannelData)
        rejected = [(s, p.hex()[:16]) for s, p in seen if not kept(s.port, p)]
        assert rejected == []


def test_shapes() -> None:
    gw_pub = bytes(32)
    for payload in (
        attack.initiation(bytes(range(32))),
        attack.random148(),
        struct.pack("<I", 2) + bytes(88),
        struct.pack("<I", 3) + bytes(60),
        struct.pack("<I", 4) + bytes(28),
        b"\x00\x01\x00\x00" + sf.STUN_MAGIC.to_bytes(4, "big") + bytes(12),
    ):
        assert kept(40000, payload) and kept(3478, payload)
    channel = b"\x40\x00\x00\x04abcd"
    assert kept(3478, channel) and kept(3478, channel + b"pad") and not kept(40000, channel)
    del gw_pub
    for payload in (
        attack.junk(),
        b"",
        b"\x01\x00\x00",
        struct.pack("<I", 1) + bytes(147),
        struct.pack("<I", 1) + bytes(145),
        struct.pack("<I", 4) + bytes(27),
        struct.pack("<I", 5) + bytes(60),
        b"\x01\x00\x00\x01" + bytes(144),
        b"\x00\x01\x00\x04" + sf.STUN_MAGIC.to_bytes(4, "big") + bytes(12),  # length beyond the end
        b"\x00\x01\x00\x02" + sf.STUN_MAGIC.to_bytes(4, "big") + bytes(14),  # not a multiple of 4
        b"\x00\x01\x00\x00" + bytes(16),  # no magic cookie
        b"\x40\x00\x00\x05abcd",  # ChannelData length beyond the end
        b"\x50\x00\x00\x00abcd",
        struct.pack("<I", 4) + bytes(sf.MAX_PAYLOAD - 3),  # oversized
    ):
        assert not kept(3478, payload), payload[:8].hex()


_FIRST = st.sampled_from([0, 1, 2, 3, 4, 5, 0x3F, 0x40, 0x41, 0x4F, 0x50, 0x80, 0xFF])
_SIZES = st.sampled_from(
    [0, 1, 3, 4, 5, 19, 20, 24, 28, 31, 32, 33, 63, 64, 65, 91, 92, 93, 147, 148, 149, 300]
)


@st.composite
def shaped(draw: st.DrawFn) -> bytes:
    size = draw(_SIZES)
    body = bytearray(draw(st.binary(min_size=size, max_size=size)))
    if size >= 1:
        body[0] = draw(_FIRST)
    if size >= 4 and draw(st.booleans()):
        body[1:4] = b"\x00\x00\x00"
    if size >= 8 and draw(st.booleans()):
        body[4:8] = sf.STUN_MAGIC.to_bytes(4, "big")
    if size >= 4 and draw(st.booleans()):
        delta = draw(st.sampled_from([-4, -1, 0, 0, 1, 4]))
        rest = size - (20 if body[0] < 0x40 else 4)
        body[2:4] = max(0, min(0xFFFF, rest + delta)).to_bytes(2, "big")
    return bytes(body)


@settings(max_examples=400, deadline=None)
@given(payload=shaped(), from_relay=st.booleans())
def test_what_the_filter_drops_the_node_drops_by_its_shape(payload: bytes, from_relay: bool) -> None:
    w = _world()
    src = RELAY if from_relay else SocketAddr(CL.ip, 40000)
    if kept(src.port, payload):
        return
    before = dict(w.gw.stats.drops)
    assert w.gw.handle_datagram(w.now, GW, src, payload) is None
    after = dict(w.gw.stats.drops)
    grown = {r for r in after if after[r] != before.get(r, 0)}
    assert len(grown) == 1 and grown <= SHAPE_DROPS, (payload.hex(), grown)
    assert w.gw.poll_command() is None


_WORLD: list[World] = []


def _world() -> World:
    """One connected world for every example (the property only reads its drop counters)."""
    if not _WORLD:
        w = World()
        w.connect()
        w.run_until(secs(3))
        _WORLD.append(w)
    return _WORLD[0]


def test_the_gro_program_keeps_coalesced_wireguard_data_and_bounds_the_rest() -> None:
    """With ``UDP_GRO`` the kernel filters a whole run of WireGuard data datagrams at once."""
    run = b"\x04\0\0\0" + bytes(1308) + b"\x04\0\0\0" + bytes(1308) * 3
    assert sf.run(sf.PROGRAM_GRO, udp(5000, run)) != 0
    assert sf.run(sf.PROGRAM, udp(5000, run)) == 0
    stun = bytes([0, 1]) + (1400).to_bytes(2, "big") + (0x2112A442).to_bytes(4, "big") + bytes(12 + 1400)
    assert sf.run(sf.PROGRAM_GRO, udp(5000, stun)) == 0  # longer than MAX_PAYLOAD: still dropped
    channel = bytes([0x40, 0, 0x05, 0x78]) + bytes(1400)
    assert sf.run(sf.PROGRAM_GRO, udp(3478, channel)) == 0
    assert sf.run(sf.PROGRAM_GRO, udp(3478, bytes([0x40, 0, 0x03, 0xE4]) + bytes(996))) != 0
    for payload in (b"\x04\0\0\0" + bytes(40), stun[:20] + bytes(0)):
        assert (sf.run(sf.PROGRAM_GRO, udp(5000, payload)) != 0) == (
            sf.run(sf.PROGRAM, udp(5000, payload)) != 0
        )
