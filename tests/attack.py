"""What an outside attacker sends at the gateway's UDP port: packet builders (pure) and a flooder bounded in
time and count (``python -m tests.attack``), for the unit tests of the handshake order, the socket filter's
tests, the flood system test and ``bench/bench_flood.py``.

Kinds (``--kind``):

- ``random148``: random 148-byte datagrams starting ``01 00 00 00`` (the shape of a Handshake Initiation,
  with a random mac1);
- ``mac1``: Handshake Initiations with a valid mac1 for the gateway's public key, from random static keys
  (the attacker needs only the gateway's public key);
- ``victim``: the same, naming a real client's public key as the initiator (it needs only that public
  key; the timestamp cannot be encrypted without the client's private key);
- ``garbage``: a mix: random bytes of random length, broken STUN (good header, bad length or cookie),
  every WireGuard type at its exact length with random content, and ChannelData-like frames;
- ``wg4``: WireGuard data messages (type 4, 32-160 bytes) with random receiver indices: garbage the
  socket filter must let through, the reference for the daemon's cost per datagram read;
- ``junk``: random bytes whose first byte is none of STUN's, WireGuard's or ChannelData's (what the
  socket filter drops in the kernel), the reference for the per-datagram cost.

A flood picks ``--variants`` datagrams up front and sends them round robin in a tight ``sendto`` loop,
so the sender's CPU goes into sending (or paced at ``--rate`` datagrams per second); it stops after
``--seconds`` or ``--count`` datagrams, whichever comes first, and prints ``sent=N seconds=S``.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

from gateway_core.wireguard import crypto

_U32 = struct.Struct("<I")
MAGIC = b"\x21\x12\xa4\x42"


def initiation(gateway_public: bytes, static_public: bytes | None = None, sender: int | None = None) -> bytes:
    """A Handshake Initiation to ``gateway_public`` with a valid mac1 and no mac2, claiming
    ``static_public`` (random if ``None``); its timestamp is random bytes (it cannot be authenticated)."""
    rnd = os.urandom
    e = crypto.private_key(rnd(32))
    e_pub = e.public_key().public_bytes_raw()
    h = crypto.hash_(crypto.H0, gateway_public)
    h = crypto.hash_(h, e_pub)
    c = crypto.kdf1(crypto.C0, e_pub)
    _c, k = crypto.kdf2(c, crypto.dh(e, gateway_public))
    claimed = static_public if static_public is not None else rnd(32)
    enc_static = crypto.aead_encrypt(k, 0, claimed, h)
    idx = sender if sender is not None else int.from_bytes(rnd(4), "little")
    body = _U32.pack(1) + _U32.pack(idx) + e_pub + enc_static + rnd(28)
    mac1 = crypto.mac(crypto.hash_(crypto.LABEL_MAC1, gateway_public), body)
    return body + mac1 + bytes(16)


def random148() -> bytes:
    return _U32.pack(1) + os.urandom(144)


def junk(n: int | None = None) -> bytes:
    """Random bytes starting with a byte that is not STUN (0x00-0x3F), WireGuard or ChannelData."""
    size = n if n is not None else 20 + os.urandom(1)[0] * 4
    first = 0x50 + os.urandom(1)[0] % 0xB0
    return bytes([first]) + os.urandom(size - 1)


def garbage_mix(i: int) -> bytes:
    """Variant ``i`` of the garbage mix (see the module docstring), cycling through the kinds."""
    rnd = os.urandom
    match i % 8:
        case 0:
            return rnd(1 + rnd(1)[0] * 4)  # random bytes, any first byte
        case 1:  # STUN header with a bad length field
            return b"\x00\x01" + struct.pack("!H", 40) + MAGIC + rnd(12) + rnd(8)
        case 2:  # STUN-looking without the magic cookie
            return b"\x00\x01\x00\x08" + rnd(4) + rnd(12) + rnd(8)
        case 3:
            return random148()
        case 4:
            return _U32.pack(2) + rnd(88)
        case 5:
            return _U32.pack(3) + rnd(60)
        case 6:
            return _U32.pack(4) + rnd(28 + rnd(1)[0] * 4)
        case _:  # ChannelData-like
            body = rnd(16 + rnd(1)[0])
            return struct.pack("!HH", 0x4000 + rnd(1)[0], len(body)) + body


def build(kind: str, n: int, gateway_public: bytes | None, victim_public: bytes | None) -> list[bytes]:
    out: list[bytes] = []
    for i in range(n):
        match kind:
            case "random148":
                out.append(random148())
            case "mac1":
                assert gateway_public is not None
                out.append(initiation(gateway_public))
            case "victim":
                assert gateway_public is not None and victim_public is not None
                out.append(initiation(gateway_public, victim_public))
            case "garbage":
                out.append(garbage_mix(i))
            case "junk":
                out.append(junk())
            case "wg4":
                out.append(_U32.pack(4) + os.urandom(28 + (i % 33) * 4))
            case _:
                raise ValueError(f"unknown kind {kind!r}")
    return out


def flood(
    target: tuple[str, int],
    datagrams: list[bytes],
    seconds: float,
    count: int,
    sport: int = 0,
    rate: float = 0.0,
) -> tuple[int, float]:
    """Send ``datagrams`` round robin to ``target`` until ``seconds`` or ``count``, as fast as possible or
    at ``rate`` datagrams per second (paced in slices of 10 ms); ``(sent, elapsed)``."""
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
    s.connect(target)
    send = s.send
    sent = 0
    n = len(datagrams)
    t0 = time.monotonic()
    deadline = t0 + seconds
    if rate > 0:
        per_slice = max(1, round(rate / 100))
        while sent < count:
            for i in range(per_slice):
                try:
                    send(datagrams[(sent + i) % n])
                except OSError:
                    pass
            sent += per_slice
            now = time.monotonic()
            if now >= deadline:
                break
            ahead = t0 + sent / rate - now
            if ahead > 0:
                time.sleep(ahead)
        elapsed = time.monotonic() - t0
        s.close()
        return sent, elapsed
    while sent < count:
        for d in datagrams:  # 1 clock read per round of n sends
            try:
                send(d)
            except OSError:  # ECONNREFUSED from an earlier ICMP error, ENOBUFS: keep going
                pass
        sent += n
        if time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - t0
    s.close()
    return sent, elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.attack")
    ap.add_argument("--target", required=True, help="host:port")
    ap.add_argument("--kind", required=True)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--count", type=int, default=50_000_000)
    ap.add_argument("--variants", type=int, default=256)
    ap.add_argument("--sport", type=int, default=0, help="source port (e.g. 3478 to look like a relay)")
    ap.add_argument("--rate", type=float, default=0.0, help="datagrams per second (0: as fast as possible)")
    ap.add_argument("--gateway-public", default="", help="hex")
    ap.add_argument("--victim-public", default="", help="hex")
    a = ap.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    gw = bytes.fromhex(a.gateway_public) if a.gateway_public else None
    victim = bytes.fromhex(a.victim_public) if a.victim_public else None
    datagrams = build(a.kind, a.variants, gw, victim)
    sent, elapsed = flood((host.strip("[]"), int(port)), datagrams, a.seconds, a.count, a.sport, a.rate)
    print(f"sent={sent} seconds={elapsed:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
