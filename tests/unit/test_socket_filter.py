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
    assert sf.run(sf.PROGRAM_GRO, udp(5000, run + bytes(65507 - len(run) + 1))) == 0  # beyond 64 KiB
    for payload in (b"\x04\0\0\0" + bytes(40), STUN_MSG, attack.junk(), b"\x04\0\0\0" + bytes(27)):
        assert (sf.run(sf.PROGRAM_GRO, udp(5000, payload)) != 0) == (
            sf.run(sf.PROGRAM, udp(5000, payload)) != 0
        )


STUN_MSG = bytes([0, 1, 0, 4]) + sf.STUN_MAGIC.to_bytes(4, "big") + bytes(12) + b"attr"
"""A 28-byte STUN message (a binding request with one 4-byte attribute)."""


def _segmented(*datagrams: bytes) -> bytes:
    """What a socket with ``UDP_GRO`` gets for one ``UDP_SEGMENT`` send of ``datagrams`` (the segment size
    is the first's; the others are no longer, as the kernel requires)."""
    assert all(len(d) <= len(datagrams[0]) for d in datagrams)
    return b"".join(datagrams)


def test_the_gro_program_keeps_a_run_led_by_any_shape_the_node_uses() -> None:
    """A sender's segmented send may put a handshake message or a STUN message first and smaller datagrams
    after it (the dev client sent its initiation and a 92-byte STUN message in one send): the kernel shows
    the filter the first header and the run's length, and the run must pass whole, as the node uses every
    datagram of it once the daemon has split it. The plain program keeps its exact lengths."""
    initiation = attack.initiation(bytes(range(32)))
    response = struct.pack("<I", 2) + bytes(88)
    cookie = struct.pack("<I", 3) + bytes(60)
    stun92 = bytes([1, 1, 0, 72]) + sf.STUN_MAGIC.to_bytes(4, "big") + bytes(12 + 72)
    channel = bytes([0x40, 0, 0x05, 0x10]) + bytes(0x510)
    runs = [
        (5000, _segmented(initiation, stun92)),
        (5000, _segmented(initiation, initiation, STUN_MSG)),
        (5000, _segmented(response, response)),
        (5000, _segmented(cookie, STUN_MSG)),
        (5000, _segmented(stun92, stun92, STUN_MSG)),
        (3478, _segmented(channel, channel, channel)),
        (3478, _segmented(channel, STUN_MSG)),
    ]
    for sport, run in runs:
        assert sf.run(sf.PROGRAM_GRO, udp(sport, run)) != 0, run[:8].hex()
        assert sf.run(sf.PROGRAM, udp(sport, run)) == 0  # a plain socket never sees a run
    # Still dropped with UDP_GRO: a STUN length field beyond the datagram, no magic cookie, a handshake
    # message shorter than its length, ChannelData from another port than 3478.
    for sport, bad in [
        (5000, bytes([0, 1, 0, 8]) + sf.STUN_MAGIC.to_bytes(4, "big") + bytes(12)),
        (5000, bytes([0, 1, 0, 0]) + bytes(16)),
        (5000, initiation[:147]),
        (5000, _segmented(channel, channel)),
    ]:
        assert sf.run(sf.PROGRAM_GRO, udp(sport, bad)) == 0, bad[:8].hex()
