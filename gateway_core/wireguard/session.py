"""One WireGuard transport session: keys, indices, the send counter and the receive replay window.

Theory of operation: a session is born from a completed handshake with two keys (send, receive), our
index (the peer puts it in the ``receiver_index`` of data it sends us) and the peer's index (we put it in
ours). Sending numbers each packet with a counter starting at 0 (keepalives included). Receiving checks the
counter against a sliding window of :data:`REPLAY_WINDOW` counters *before* decrypting (cheap rejection of
replays) and marks it *after* the tag verified (a forged packet must not move the window). The session
itself has no timers; the tunnel (``peer.py``) expires it 180 s after ``established_at``.

Window semantics (boringtun ``session.rs``): with ``next`` the highest counter seen plus one,
``counter >= next`` is new; ``counter + 1024 < next`` is too old; otherwise it is new unless marked. Like
boringtun we keep one flag per counter modulo 1024, valid for the counters ``next - 1024 .. next - 1``;
moving ``next`` forward clears the flags of the counters skipped. Flags live in a ``bytearray`` because an
in-order packet then costs one item assignment (a 1024-bit Python int costs a new int per packet).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gateway_core.clock import Instant

REPLAY_WINDOW = 1024
"""Counters that may arrive out of order (boringtun fork ``N_WORDS * WORD_SIZE`` = 16 x 64; wireguard-go
uses 8192 - 64; the WireGuard paper asks for at least 2000 in the kernel but any size interoperates)."""
_SLOT = REPLAY_WINDOW - 1

REPLAY_OK = 0
REPLAY_DUPLICATE = 1
REPLAY_TOO_OLD = 2


class ReplayWindow:
    """Sliding window of received counters."""

    __slots__ = ("flags", "next")

    def __init__(self) -> None:
        self.next = 0
        self.flags = bytearray(REPLAY_WINDOW)

    def check(self, counter: int) -> int:
        """``REPLAY_OK``, ``REPLAY_DUPLICATE`` or ``REPLAY_TOO_OLD``; does not change the window."""
        nxt = self.next
        if counter >= nxt:
            return REPLAY_OK
        if counter + REPLAY_WINDOW < nxt:
            return REPLAY_TOO_OLD
        return REPLAY_DUPLICATE if self.flags[counter & _SLOT] else REPLAY_OK

    def mark(self, counter: int) -> int:
        """Record ``counter`` as received; returns what :meth:`check` said before marking."""
        nxt = self.next
        flags = self.flags
        if counter >= nxt:
            skipped = counter - nxt
            if skipped >= REPLAY_WINDOW:
                flags[:] = bytes(REPLAY_WINDOW)
            elif skipped:
                lo, hi = nxt & _SLOT, counter & _SLOT
                if lo < hi:
                    flags[lo:hi] = bytes(hi - lo)
                else:
                    flags[lo:] = bytes(REPLAY_WINDOW - lo)
                    flags[:hi] = bytes(hi)
            flags[counter & _SLOT] = 1
            self.next = counter + 1
            return REPLAY_OK
        if counter + REPLAY_WINDOW < nxt:
            return REPLAY_TOO_OLD
        if flags[counter & _SLOT]:
            return REPLAY_DUPLICATE
        flags[counter & _SLOT] = 1
        return REPLAY_OK


class Session(ReplayWindow):
    """Keys and counters of one established session (no timers, no IO); it is its own replay window
    (one attribute hop less on the data path)."""

    __slots__ = (
        "decrypt",
        "encrypt",
        "established_at",
        "local_index",
        "peer_index",
        "receiver",
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
        # Bound methods kept ready: the data path saves an attribute lookup and a method binding per packet.
        self.encrypt = self.sender.encrypt
        self.decrypt = self.receiver.decrypt
        self.send_counter = 0
        super().__init__()

    def __repr__(self) -> str:
        return f"Session(local={self.local_index:#010x}, peer={self.peer_index:#010x})"
