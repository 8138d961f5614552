"""Two WireGuard peers over an in-memory link, driven with virtual time (test helper)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.wireguard import crypto
from gateway_core.wireguard.peer import WgEvent, WireGuardPeer
from gateway_core.wireguard.ratelimit import RateLimiter
from gateway_core.wireguard.timers import WireGuardConfig

A_IP = IPv4Address("192.0.2.1")
B_IP = IPv4Address("192.0.2.2")
MAX_STEPS = 10_000
"""Livelock bound: no exchange in these tests needs more deliveries or timer steps than this."""


def ipv4_udp(payload: bytes, src: str = "100.64.0.1", dst: str = "100.96.0.1") -> bytes:
    """A minimal IPv4/UDP packet (checksums left zero; WireGuard does not look at them)."""
    total = 28 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        17,
        0,
        IPv4Address(src).packed,
        IPv4Address(dst).packed,
    )
    return hdr + struct.pack("!HHHH", 1000, 53, 8 + len(payload), 0) + payload


def check_contract(peer: WireGuardPeer, now: Instant) -> None:
    """R4/R5: poll_timeout is pure, never before now, and after handle_timeout strictly later."""
    d1, d2 = peer.poll_timeout(), peer.poll_timeout()
    assert d1 == d2
    if d1 is not None:
        assert d1.at > now, (d1, now)


@dataclass
class Link:
    a: WireGuardPeer
    b: WireGuardPeer
    now: Instant = Instant(0)
    # Filters decide per datagram whether it is delivered (True) or lost (False).
    a_to_b: Callable[[bytes], bool] = lambda d: True
    b_to_a: Callable[[bytes], bool] = lambda d: True
    received_a: list[bytes] = field(default_factory=list)
    received_b: list[bytes] = field(default_factory=list)
    events_a: list[WgEvent] = field(default_factory=list)
    events_b: list[WgEvent] = field(default_factory=list)
    wire_a_to_b: list[bytes] = field(default_factory=list)
    wire_b_to_a: list[bytes] = field(default_factory=list)

    @staticmethod
    def make(
        seed: int = 1,
        config: WireGuardConfig | None = None,
        b_limiter: Callable[[bytes, SeededEntropy], RateLimiter] | None = None,
    ) -> Link:
        ent = SeededEntropy(seed)
        a_priv, b_priv, psk = ent.random_bytes(32), ent.random_bytes(32), ent.random_bytes(32)
        b_ent = ent.fork("b")
        limiter = None
        if b_limiter is not None:
            limiter = b_limiter(crypto.public_key(b_priv), b_ent.fork("rl"))
        a = WireGuardPeer(
            static_private=a_priv,
            peer_public=crypto.public_key(b_priv),
            psk=psk,
            global_index=0x000A01,
            entropy=ent.fork("a"),
            now=Instant(0),
            wall_unix_ns=1_700_000_000_000_000_000,
            config=config,
        )
        b = WireGuardPeer(
            static_private=b_priv,
            peer_public=crypto.public_key(a_priv),
            psk=psk,
            global_index=0x000B02,
            entropy=b_ent,
            now=Instant(0),
            wall_unix_ns=1_700_000_000_000_000_000,
            config=config,
            rate_limiter=limiter,
        )
        return Link(a, b)

    def send_a(self, packet: bytes) -> None:
        out = self.a.encapsulate(self.now, packet)
        if out is not None:
            self._deliver(self.a, out)
        self.pump()

    def send_b(self, packet: bytes) -> None:
        out = self.b.encapsulate(self.now, packet)
        if out is not None:
            self._deliver(self.b, out)
        self.pump()

    def _deliver(self, sender: WireGuardPeer, datagram: bytes) -> None:
        if sender is self.a:
            self.wire_a_to_b.append(datagram)
            if self.a_to_b(datagram):
                pt = self.b.decapsulate(self.now, datagram, A_IP)
                if pt is not None:
                    self.received_b.append(pt)
        else:
            self.wire_b_to_a.append(datagram)
            if self.b_to_a(datagram):
                pt = self.a.decapsulate(self.now, datagram, B_IP)
                if pt is not None:
                    self.received_a.append(pt)

    def pump(self) -> None:
        """Deliver every queued datagram both ways until nothing is left (bounded)."""
        for _ in range(MAX_STEPS):
            moved = False
            for peer in (self.a, self.b):
                d = peer.poll_transmit()
                if d is not None:
                    moved = True
                    self._deliver(peer, d)
            while (ev := self.a.poll_event()) is not None:
                self.events_a.append(ev)
            while (ev := self.b.poll_event()) is not None:
                self.events_b.append(ev)
            if not moved:
                return
        raise AssertionError("livelock: datagrams kept flowing")

    def advance(self, duration: int) -> None:
        """Advance virtual time by ``duration``, serving every deadline on the way."""
        end = self.now + duration
        for _ in range(MAX_STEPS):
            deadlines = [d.at for p in (self.a, self.b) if (d := p.poll_timeout()) is not None]
            nxt = min(deadlines, default=end)
            if nxt > end:
                self.now = Instant(end)
                return
            self.now = Instant(max(self.now, nxt))
            for p in (self.a, self.b):
                d = p.poll_timeout()
                if d is not None and d.at <= self.now:
                    p.handle_timeout(self.now)
                    check_contract(p, self.now)
            self.pump()
            if nxt == end:
                return
        raise AssertionError("livelock: timers kept firing")
