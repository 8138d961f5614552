"""One WireGuard transport session: keys, indices, the send counter and the receive replay window.

Theory of operation: a session is born from a completed handshake with two keys (send, receive), our
index (the peer puts it in the ``receiver_index`` of data it sends us) and the peer's index (we put it in
ours). Sending numbers each packet with a counter starting at 0 (keepalives included). Receiving checks the
counter against a sliding window of :data:`REPLAY_WINDOW` counters *before* decrypting (cheap rejection of
replays) and marks it *after* the tag verified (a forged packet must not move the window). The session
itself has no timers; the tunnel (``peer.py``) expires it 180 s after ``established_at``.

Window semantics (boringtun ``session.rs``, 16 words of 64 bits): with ``next`` the highest counter seen
plus one, ``counter >= next`` is new; ``counter + 1024 < next`` is too old; otherwise it is new unless its
bit is set. We keep the bitmap as one Python int where bit ``i`` stands for counter ``next - 1 - i``: an
in-order packet costs one shift of a 1024-bit int.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway_core.clock import Instant

REPLAY_WINDOW = 1024
"""Counters that may arrive out of order (boringtun fork ``N_WORDS * WORD_SIZE`` = 16 x 64; wireguard-go
uses 8192 - 64; the WireGuard paper asks for at least 2000 in the kernel but any size interoperates)."""
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1

REPLAY_OK = 0
REPLAY_DUPLICATE = 1
REPLAY_TOO_OLD = 2


class ReplayWindow:
    """Sliding window of received counters."""

    __slots__ = ("bits", "next", "received")

    def __init__(self) -> None:
        self.next = 0
        self.bits = 0
        self.received = 0

    def check(self, counter: int) -> int:
        """``REPLAY_OK``, ``REPLAY_DUPLICATE`` or ``REPLAY_TOO_OLD``; does not change the window."""
        nxt = self.next
        if counter >= nxt:
            return REPLAY_OK
        if counter + REPLAY_WINDOW < nxt:
            return REPLAY_TOO_OLD
        if (self.bits >> (nxt - 1 - counter)) & 1:
            return REPLAY_DUPLICATE
        return REPLAY_OK

    def mark(self, counter: int) -> int:
        """Record ``counter`` as received; returns what :meth:`check` would have said before."""
        nxt = self.next
        if counter >= nxt:
            shift = counter + 1 - nxt
            self.bits = ((self.bits << shift) | 1) & _WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self.next = counter + 1
            self.received += 1
            return REPLAY_OK
        if counter + REPLAY_WINDOW < nxt:
            return REPLAY_TOO_OLD
        bit = 1 << (nxt - 1 - counter)
        if self.bits & bit:
            return REPLAY_DUPLICATE
        self.bits |= bit
        self.received += 1
        return REPLAY_OK


class Session:
    """Keys and counters of one established session (no timers, no IO)."""

    __slots__ = (
        "established_at",
        "local_index",
        "peer_index",
        "receiver",
        "replay",
        "send_counter",
        "sender",
    )

    def __init__(
        self, local_index: int, peer_index: int, receive_key: bytes, send_key: bytes, now: Instant
    ) -> None:
        self.established_at = now
        self.local_index = local_index
        self.peer_index = peer_index
        self.receiver = ChaCha20Poly1305(receive_key)
        self.sender = ChaCha20Poly1305(send_key)
        self.send_counter = 0
        self.replay = ReplayWindow()

    def __repr__(self) -> str:
        return f"Session(local={self.local_index:#010x}, peer={self.peer_index:#010x})"
