"""Noise IKpsk2 as WireGuard uses it: the handshake of one tunnel, in both roles (boringtun
``noise/handshake.rs``).

Theory of operation: a :class:`Handshake` knows our static key, the peer's static public key and the PSK.
Its state is the outgoing initiation we are waiting to hear back on (``state``) and the one before it
(``previous``): boringtun keeps two so that a late response to a retransmitted initiation still completes
(``handshake.rs:584-588``). ``None`` means no handshake of ours is in progress; ``expired`` marks a tunnel
whose handshake attempts gave up or whose keys aged out (the timers in ``peer.py`` set it).

- Initiator: :meth:`create_initiation` draws a new sender index and uses a fresh ephemeral key every time
  (retransmissions included), remembers ``(C, H, e)`` and returns the 148-byte message; the matching
  :meth:`consume_response` verifies the response and returns the new :class:`Session`.
- Responder: :meth:`consume_initiation` authenticates the initiator (its static key must be the configured
  one; its TAI64N timestamp must be strictly greater than the last accepted one), then builds the response
  and the session at once; nothing is left in progress (boringtun's ``InitReceived`` lasts one call).
- Cookies: every message we send is sealed with mac1/mac2 by :class:`CookieState`.
- A node with many tunnels finds the one an initiation is for with :class:`InitiatorIdentifier` (one
  Diffie-Hellman, after the node checked mac1) and hands the resulting :class:`Initiator` to the tunnel,
  which continues the handshake from it.

Failures raise :class:`HandshakeRejected` with a :class:`DropReason`; ``peer.py`` turns it into a drop.
Sender indices are ``global << 8 | n`` with ``n`` an 8-bit counter incremented before each message we
create (boringtun fork ``index.rs``), so the first index of a tunnel ends in ``01``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway_core.clock import Instant
from gateway_core.entropy import Entropy
from gateway_core.errors import DropReason, UsageError
from gateway_core.wireguard import crypto
from gateway_core.wireguard.cookie import CookieRejected, CookieState
from gateway_core.wireguard.messages import (
    INITIATION_LEN,
    MSG_INITIATION,
    MSG_RESPONSE,
    RESPONSE_LEN,
    TYPE,
    CookieReply,
    Initiation,
    Response,
    decode_initiation,
)
from gateway_core.wireguard.session import Session

_ZERO_PSK = bytes(32)
_INIT_PREFIX = TYPE.pack(MSG_INITIATION)
_RESP_PREFIX = TYPE.pack(MSG_RESPONSE)


class HandshakeRejected(Exception):
    """A handshake message that must be dropped; carries the reason."""

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class InitSent:
    """An initiation we sent and have not yet seen answered."""

    __slots__ = ("chaining_key", "ephemeral", "hash", "local_index", "time_sent")

    def __init__(
        self, local_index: int, chaining_key: bytes, hash_: bytes, ephemeral: X25519PrivateKey, now: Instant
    ) -> None:
        self.local_index = local_index
        self.chaining_key = chaining_key
        self.hash = hash_
        self.ephemeral = ephemeral
        self.time_sent = now


def _open(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return crypto.aead_decrypt(key, 0, ciphertext, ad)
    except crypto.AuthError:
        raise HandshakeRejected(DropReason.WG_HANDSHAKE_FAILED) from None


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return crypto.dh(private, public)
    except crypto.AuthError:
        raise HandshakeRejected(DropReason.WG_HANDSHAKE_FAILED) from None


def _initiation_prefix(
    static_private: X25519PrivateKey, static_public: bytes, m: Initiation
) -> tuple[bytes, bytes, bytes]:
    """Responder side up to the encrypted static: ``(C, H, initiator static public)``."""
    h = crypto.hash_(crypto.H0, static_public)
    h = crypto.hash_(h, m.ephemeral)
    c = crypto.kdf1(crypto.C0, m.ephemeral)
    c, k = crypto.kdf2(c, _dh(static_private, m.ephemeral))
    peer_static = _open(k, m.encrypted_static, h)
    h = crypto.hash_(h, m.encrypted_static)
    return c, h, peer_static


@dataclass(frozen=True, slots=True)
class Initiator:
    """Who sent a Handshake Initiation, with the Noise state after its encrypted static key: the tunnel that
    then authenticates the initiation goes on from here instead of repeating the Diffie-Hellman."""

    sender: int
    """The initiator's sender index."""
    static_public: bytes
    """The initiator's static public key (decrypted, not yet authenticated: anyone can encrypt any key)."""
    chaining_key: bytes
    hash: bytes


class InitiatorIdentifier:
    """Finds the initiator of a Handshake Initiation addressed to us (boringtun ``parse_handshake_anon``,
    as snownet's ``rust/connlib/snownet/src/node.rs`` uses it to pick the tunnel): one X25519 exchange with
    our static key. It checks neither mac1 nor the timestamp: the caller checks mac1 (and the load) first,
    because this is the expensive step (WireGuard's order). Our key pair is derived once, not per message.
    """

    __slots__ = ("_private", "_public")

    def __init__(self, static_private: bytes) -> None:
        self._private = crypto.private_key(static_private)
        self._public = self._private.public_key().public_bytes_raw()

    def __call__(self, msg: bytes) -> Initiator | None:
        try:
            m = decode_initiation(msg)
            c, h, peer_static = _initiation_prefix(self._private, self._public, m)
        except (HandshakeRejected, ValueError):
            return None
        return Initiator(m.sender, peer_static, c, h)


def identify_initiator(static_private: bytes, msg: bytes) -> tuple[int, bytes] | None:
    """``(sender_index, initiator static public key)`` of a Handshake Initiation addressed to us, or
    ``None`` (one-off form of :class:`InitiatorIdentifier`; no mac1 or timestamp check)."""
    found = InitiatorIdentifier(static_private)(msg)
    return None if found is None else (found.sender, found.static_public)


class Handshake:
    """The handshake state of one tunnel (see the module docstring)."""

    __slots__ = (
        "_static_shared",
        "cookies",
        "expired",
        "last_timestamp",
        "next_index",
        "peer_public",
        "previous",
        "psk",
        "state",
        "static_private",
        "static_public",
        "wall_base_now",
        "wall_base_ns",
    )

    def __init__(
        self,
        static_private: bytes,
        peer_public: bytes,
        psk: bytes | None,
        global_index: int,
        now: Instant,
        wall_unix_ns: int,
    ) -> None:
        if not 0 <= global_index < 1 << 24:
            raise UsageError("the global index is a 24-bit number")
        if len(peer_public) != 32 or (psk is not None and len(psk) != 32):
            raise UsageError("keys are 32 bytes")
        self.static_private = crypto.private_key(static_private)
        self.static_public = self.static_private.public_key().public_bytes_raw()
        self.peer_public = bytes(peer_public)
        self.psk = _ZERO_PSK if psk is None else bytes(psk)
        try:
            self._static_shared = crypto.dh(self.static_private, self.peer_public)
        except crypto.AuthError:
            raise UsageError("the peer's public key is a low-order point") from None
        self.next_index = global_index << 8
        self.state: InitSent | None = None
        self.previous: InitSent | None = None
        self.expired = False
        self.last_timestamp = (0, 0)
        self.cookies = CookieState(self.peer_public)
        # TAI64N: wall clock at construction plus monotonic time since (boringtun TimeStamper).
        self.wall_base_ns = wall_unix_ns
        self.wall_base_now = now

    # --- state queries -------------------------------------------------------------------------------

    @property
    def in_progress(self) -> bool:
        """An initiation of ours awaits its response."""
        return self.state is not None

    def set_expired(self) -> None:
        self.state = None
        self.previous = None
        self.expired = True

    def _take_index(self) -> int:
        idx = self.next_index
        idx = (idx & ~0xFF) | ((idx + 1) & 0xFF)
        self.next_index = idx
        return idx

    def timestamp(self, now: Instant) -> bytes:
        return crypto.tai64n(self.wall_base_ns + (now - self.wall_base_now))

    # --- initiator -----------------------------------------------------------------------------------

    def create_initiation(self, now: Instant, entropy: Entropy) -> bytes:
        """A new Handshake Initiation (fresh ephemeral, fresh index); it becomes the current attempt."""
        local_index = self._take_index()
        e = crypto.private_key(entropy.random_bytes(32))
        e_pub = e.public_key().public_bytes_raw()
        h = crypto.hash_(crypto.H0, self.peer_public)
        h = crypto.hash_(h, e_pub)
        c = crypto.kdf1(crypto.C0, e_pub)
        c, k = crypto.kdf2(c, crypto.dh(e, self.peer_public))
        enc_static = crypto.aead_encrypt(k, 0, self.static_public, h)
        h = crypto.hash_(h, enc_static)
        c, k = crypto.kdf2(c, self._static_shared)
        enc_ts = crypto.aead_encrypt(k, 0, self.timestamp(now), h)
        h = crypto.hash_(h, enc_ts)
        self.previous = self.state
        self.state = InitSent(local_index, c, h, e, now)
        self.expired = False
        body = _INIT_PREFIX + TYPE.pack(local_index) + e_pub + enc_static + enc_ts
        return self.cookies.seal(local_index, body)

    def consume_response(self, now: Instant, m: Response) -> Session:
        """Complete our handshake from a (mac-checked) response; the matched attempt is consumed."""
        st = self.state
        if st is not None and st.local_index == m.receiver:
            is_previous = False
        elif self.previous is not None and self.previous.local_index == m.receiver:
            st = self.previous
            is_previous = True
        else:
            raise HandshakeRejected(DropReason.WG_UNEXPECTED)
        assert st is not None
        h = crypto.hash_(st.hash, m.ephemeral)
        c = crypto.kdf1(st.chaining_key, m.ephemeral)
        c = crypto.kdf1(c, _dh(st.ephemeral, m.ephemeral))
        c = crypto.kdf1(c, _dh(self.static_private, m.ephemeral))
        c, tau, k = crypto.kdf3(c, self.psk)
        h = crypto.hash_(h, tau)
        _open(k, m.encrypted_nothing, h)
        t_send, t_recv = crypto.kdf2(c, b"")
        if is_previous:
            self.previous = None
        else:
            self.state = None
        return Session(st.local_index, m.sender, t_recv, t_send, now)

    # --- responder -----------------------------------------------------------------------------------

    def consume_initiation(
        self, now: Instant, m: Initiation, entropy: Entropy, initiator: Initiator | None = None
    ) -> tuple[bytes, Session]:
        """Authenticate a (mac-checked) initiation; returns our response and the new session.

        ``initiator`` is what :class:`InitiatorIdentifier` found for this very message, if the caller ran
        it: its Noise state saves the first Diffie-Hellman."""
        if initiator is None:
            c, h, peer_static = _initiation_prefix(self.static_private, self.static_public, m)
        else:
            c, h, peer_static = initiator.chaining_key, initiator.hash, initiator.static_public
        if not hmac.compare_digest(peer_static, self.peer_public):
            raise HandshakeRejected(DropReason.WG_HANDSHAKE_FAILED)
        c, k = crypto.kdf2(c, self._static_shared)
        ts = _open(k, m.encrypted_timestamp, h)
        stamp = crypto.tai64n_key(ts)
        if stamp <= self.last_timestamp:
            raise HandshakeRejected(DropReason.WG_STALE_TIMESTAMP)
        self.last_timestamp = stamp
        h = crypto.hash_(h, m.encrypted_timestamp)
        # Our own attempt, if any, stays answerable as the previous one (boringtun InitReceived -> None).
        self.previous = self.state
        self.state = None
        self.expired = False
        e = crypto.private_key(entropy.random_bytes(32))
        e_pub = e.public_key().public_bytes_raw()
        local_index = self._take_index()
        h = crypto.hash_(h, e_pub)
        c = crypto.kdf1(c, e_pub)
        c = crypto.kdf1(c, _dh(e, m.ephemeral))
        c = crypto.kdf1(c, _dh(e, self.peer_public))
        c, tau, k = crypto.kdf3(c, self.psk)
        h = crypto.hash_(h, tau)
        enc_nothing = crypto.aead_encrypt(k, 0, b"", h)
        t_recv, t_send = crypto.kdf2(c, b"")
        body = _RESP_PREFIX + TYPE.pack(local_index) + TYPE.pack(m.sender) + e_pub + enc_nothing
        response = self.cookies.seal(local_index, body)
        return response, Session(local_index, m.sender, t_recv, t_send, now)

    # --- cookies -------------------------------------------------------------------------------------

    def consume_cookie_reply(self, now: Instant, reply: CookieReply) -> None:
        try:
            self.cookies.consume_reply(reply, now)
        except CookieRejected as e:
            raise HandshakeRejected(e.reason) from None


__all__ = [
    "INITIATION_LEN",
    "RESPONSE_LEN",
    "Handshake",
    "HandshakeRejected",
    "InitSent",
    "Initiator",
    "InitiatorIdentifier",
    "identify_initiator",
]
