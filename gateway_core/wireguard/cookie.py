"""mac1/mac2 on our handshake messages and the cookie we learn from a Cookie Reply (boringtun
``noise/handshake.rs``, ``noise/rate_limiter.rs``).

Theory of operation (the sending side; the checking side is ``ratelimit.py``): every handshake message we
send ends with ``mac1 = MAC(HASH("mac1----" || peer_public), msg[:-32])`` and ``mac2 = MAC(cookie,
msg[:-16])`` if we hold a cookie younger than :data:`COOKIE_EXPIRATION` (else 16 zero bytes). We remember
the index and mac1 of the last handshake message we sent, because a Cookie Reply answers exactly that
message: it must name that index and its XChaCha20-Poly1305 tag binds that mac1 as associated data. A
valid reply stores the cookie; it never triggers a retransmission by itself (the handshake retry timer
does that, 5 s later).
"""

from __future__ import annotations

from gateway_core.clock import Duration, Instant, secs
from gateway_core.errors import DropReason
from gateway_core.wireguard import crypto
from gateway_core.wireguard.messages import CookieReply

COOKIE_EXPIRATION: Duration = secs(120)
"""How long a received cookie is used as the mac2 key (WireGuard ``COOKIE_EXPIRATION_TIME``; boringtun
``timers.rs`` 120 s)."""


class CookieRejected(Exception):
    """A Cookie Reply that does not fit; carries the drop reason."""

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class CookieState:
    """Our mac keys towards one peer, the last mac1 we sent and the cookie we were given."""

    __slots__ = ("cookie", "cookie_at", "cookie_key", "last_index", "last_mac1", "mac1_key")

    def __init__(self, peer_public: bytes) -> None:
        self.mac1_key = crypto.hash_(crypto.LABEL_MAC1, peer_public)
        self.cookie_key = crypto.hash_(crypto.LABEL_COOKIE, peer_public)
        self.last_mac1: bytes | None = None
        self.last_index = 0
        self.cookie: bytes | None = None
        self.cookie_at: Instant = Instant(0)

    def seal(self, sender_index: int, body: bytes) -> bytes:
        """Append mac1 and mac2 to ``body`` (the message without its last 32 bytes)."""
        mac1 = crypto.mac(self.mac1_key, body)
        mac2 = crypto.mac(self.cookie, body + mac1) if self.cookie is not None else bytes(16)
        self.last_mac1 = mac1
        self.last_index = sender_index
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: Instant) -> None:
        """Store the cookie of a valid reply; raises :class:`CookieRejected` otherwise."""
        if self.last_mac1 is None:
            raise CookieRejected(DropReason.WG_UNEXPECTED)
        if reply.receiver != self.last_index:
            raise CookieRejected(DropReason.WG_UNKNOWN_INDEX)
        try:
            cookie = crypto.xaead_decrypt(
                self.cookie_key, reply.nonce, reply.encrypted_cookie, self.last_mac1
            )
        except crypto.AuthError:
            raise CookieRejected(DropReason.WG_DECRYPT_FAILED) from None
        self.cookie = cookie
        self.cookie_at = now

    def expiry(self) -> Instant | None:
        """When the held cookie must be forgotten, if we hold one."""
        if self.cookie is None:
            return None
        return Instant(self.cookie_at + COOKIE_EXPIRATION)

    def clear_cookie(self) -> None:
        self.cookie = None
