"""A WireGuard tunnel fed garbage (``gateway_core/wireguard/peer.py``): ``decapsulate`` never raises
(R6), returns either ``None`` or the IP packet a valid transport message carried (cut to its IP length),
and the tunnel keeps the driving contract (R4: ``poll_timeout`` never before ``now``; R5: nothing due
is left after ``handle_timeout``).

Each input starts from the same tunnel: the responder side of a completed handshake (a copy of a
template, :mod:`fuzz.snapshot`). The input is a sequence of operations chosen with a
``FuzzedDataProvider``: raw bytes; a recorded message of the peer (initiation, transport data, keepalive)
with some bytes changed; a transport message correctly encrypted on the peer's session with a chosen
counter and plaintext (so the fuzzer reaches the replay window and the inner-packet checks); time
passing.
"""

from __future__ import annotations

import struct

from atheris import FuzzedDataProvider

from fuzz.snapshot import fresh
from gateway_core.clock import Instant, millis, secs
from gateway_core.wireguard.peer import WireGuardPeer
from tests.unit.wireguard_link import A_IP, Link, ipv4_udp

MAX_OPS = 12
"""Operations per input: enough for a replay-window or timer sequence, few enough to stay fast."""
STEPS = (0, millis(1), millis(500), secs(5), secs(11), secs(130), secs(200))
"""Time advances to choose from: none, sub-timer, just past the keepalive (10 s), rekey (120 s),
session expiry (180 s)."""
_HDR = struct.Struct("<IIQ")
_NONCE = struct.Struct("<IQ")


def _template() -> tuple[WireGuardPeer, list[bytes], Link]:
    link = Link.make(seed=7)
    link.send_a(ipv4_udp(b"hello"))
    link.send_a(ipv4_udp(b"second"))
    link.advance(secs(11))  # a passive keepalive goes out
    assert link.received_b and link.b.current_session is not None
    return link.b, list(link.wire_a_to_b), link


TEMPLATE, RECORDED, LINK = _template()
_A_SESSION = LINK.a.current_session
assert _A_SESSION is not None
START = LINK.now


def _encrypt(counter: int, plaintext: bytes) -> bytes:
    s = _A_SESSION
    assert s is not None
    return _HDR.pack(4, s.peer_index, counter) + s.encrypt(_NONCE.pack(0, counter), plaintext, None)


def _settle(peer: WireGuardPeer, now: Instant) -> None:
    while peer.poll_transmit() is not None:
        pass
    while peer.poll_event() is not None:
        pass
    d = peer.poll_timeout()
    assert d is None or d.at >= now, f"R4: deadline {d} before now {now}"


def test_one_input(data: bytes) -> None:
    fdp = FuzzedDataProvider(data)
    peer = fresh(TEMPLATE)
    now = START
    for _ in range(MAX_OPS):
        if fdp.remaining_bytes() == 0:
            break
        op = fdp.ConsumeIntInRange(0, 3)
        if op == 3:
            end = Instant(now + STEPS[fdp.ConsumeIntInRange(0, len(STEPS) - 1)])
            for _ in range(64):
                d = peer.poll_timeout()
                if d is None or d.at > end:
                    break
                now = Instant(max(now, d.at))
                peer.handle_timeout(now)
                after = peer.poll_timeout()
                assert after is None or after.at > now, f"R5: {after} still due after handle_timeout({now})"
                _settle(peer, now)
            now = end
            continue
        plaintext = b""
        if op == 0:
            datagram = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
        elif op == 1:
            buf = bytearray(RECORDED[fdp.ConsumeIntInRange(0, len(RECORDED) - 1)])
            for _ in range(fdp.ConsumeIntInRange(0, 3)):
                buf[fdp.ConsumeIntInRange(0, len(buf) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
            datagram = bytes(buf)
        else:
            counter = fdp.ConsumeIntInRange(0, 3000) if fdp.ConsumeBool() else fdp.ConsumeInt(8) & (2**64 - 1)
            plaintext = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 120))
            datagram = _encrypt(counter, plaintext)
        out = peer.decapsulate(now, datagram, A_IP)
        if out is not None:
            assert out, "an empty packet came out"
            if op == 2:
                assert plaintext.startswith(out), "the packet is not the plaintext's prefix"
            version = out[0] >> 4
            declared = (out[2] << 8 | out[3]) if version == 4 else (out[4] << 8 | out[5]) + 40
            assert version in (4, 6) and declared == len(out), "not cut to its IP length"
        _settle(peer, now)
