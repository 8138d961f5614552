"""WireGuard's cryptographic primitives in ``cryptography``, ``hashlib`` and PyNaCl terms.

Names follow the WireGuard paper and boringtun ``noise/handshake.rs``: ``HASH`` (BLAKE2s-256), ``HMAC``
(RFC 2104 over BLAKE2s), ``KDFn`` (the HKDF-like chain), ``MAC`` (keyed BLAKE2s-128, not HMAC), ``AEAD``
(ChaCha20-Poly1305 with a 64-bit little-endian counter nonce), ``XAEAD`` (XChaCha20-Poly1305 for cookie
replies) and ``TAI64N``. Nothing here keeps state; every function is pure given its inputs.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

# Noise protocol name and WireGuard's prologue (boringtun handshake.rs:20-35; the WireGuard paper §5.4).
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
# Labels of the mac1 and cookie keys (WireGuard paper §5.4.4, §5.4.7).
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# TAI64N label offset: boringtun adds 2^62 + 37 to Unix seconds (handshake.rs:185-191); wireguard-go adds
# 2^62 + 10. Receivers only compare timestamps of one sender, so either works; we follow boringtun.
TAI64_BASE = (1 << 62) + 37

KEY_LEN = 32
"""Length of every symmetric key, hash and X25519 key."""
TAG_LEN = 16
"""Poly1305 tag length."""

_NONCE = struct.Struct("<IQ")
"""ChaCha20-Poly1305 nonce: 4 zero bytes then the 64-bit little-endian counter."""
_TAI64N = struct.Struct(">QI")
_HCHACHA_WORDS = struct.Struct("<16I")


class AuthError(Exception):
    """An AEAD tag did not verify or a Diffie-Hellman result was degenerate."""


def hash_(*parts: bytes) -> bytes:
    """``HASH(p0 || p1 || ...)``: BLAKE2s with a 32-byte digest."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """``HMAC(key, data)`` over BLAKE2s-256 (block 64)."""
    return hmac.digest(key, data, hashlib.blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    """``KDF1``: one 32-byte output."""
    t0 = hmac_(key, data)
    return hmac_(t0, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """``KDF2``: two 32-byte outputs."""
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """``KDF3``: three 32-byte outputs."""
    t0 = hmac_(key, data)
    t1 = hmac_(t0, b"\x01")
    t2 = hmac_(t0, t1 + b"\x02")
    t3 = hmac_(t0, t2 + b"\x03")
    return t1, t2, t3


def mac(key: bytes, data: bytes) -> bytes:
    """``MAC(key, data)``: keyed BLAKE2s with a 16-byte digest (mac1, mac2, cookie)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def mac24(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 24-byte digest (boringtun derives cookie-reply nonces this way)."""
    return hashlib.blake2s(data, key=key, digest_size=24).digest()


def nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce for ``counter``."""
    return _NONCE.pack(0, counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """``AEAD(key, counter, plaintext, ad)``."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(0, counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Open ``AEAD``; raises :class:`AuthError` when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(0, counter), ciphertext, ad)
    except InvalidTag as e:
        raise AuthError("aead") from e


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``XAEAD``: XChaCha20-Poly1305 (PyNaCl / libsodium)."""
    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce24, key))


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Open ``XAEAD``; raises :class:`AuthError` when the tag does not verify."""
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce24, key))
    except CryptoError as e:
        raise AuthError("xaead") from e


_SIGMA = _HCHACHA_WORDS.unpack(b"expand 32-byte k" + bytes(48))[:4]


def hchacha20(key: bytes, input16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2) from ``cryptography``'s ChaCha20 keystream.

    The first keystream block is ``permute(state) + state``; subtracting the initial state word by word
    leaves the permutation, whose words 0-3 and 12-15 are HChaCha20's output. Used to cross-check the
    PyNaCl XChaCha20-Poly1305 against the draft-irtf-cfrg-xchacha vector.
    """
    block = Cipher(algorithms.ChaCha20(key, input16), mode=None).encryptor().update(bytes(64))
    out = _HCHACHA_WORDS.unpack(block)
    state = _SIGMA + _HCHACHA_WORDS.unpack(bytes(16) + key + input16)[4:]
    w = [(out[i] - state[i]) & 0xFFFFFFFF for i in range(16)]
    return struct.pack("<8I", *w[0:4], *w[12:16])


def xaead_encrypt_hchacha(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``XAEAD`` built from HChaCha20 and ``cryptography``'s ChaCha20-Poly1305 (reference for tests)."""
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(bytes(4) + nonce24[16:24], plaintext, ad)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; a low-order peer point (all-zero result) raises :class:`AuthError`."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as e:
        raise AuthError("dh") from e


def private_key(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from 32 raw bytes (clamped internally)."""
    return X25519PrivateKey.from_private_bytes(raw)


def public_key(raw_private: bytes) -> bytes:
    """``DH_PUBKEY``: the raw public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(raw_private).public_key().public_bytes_raw()


def tai64n(unix_ns: int) -> bytes:
    """12-byte TAI64N label of a Unix time in nanoseconds (boringtun's base, see :data:`TAI64_BASE`)."""
    secs, nanos = divmod(unix_ns, 1_000_000_000)
    return _TAI64N.pack(secs + TAI64_BASE, nanos)


def tai64n_key(stamp: bytes) -> tuple[int, int]:
    """A timestamp as a comparable ``(seconds, nanoseconds)`` pair."""
    secs, nanos = _TAI64N.unpack(stamp)
    return secs, nanos


C0 = hash_(CONSTRUCTION)
"""Initial chaining key ``HASH(CONSTRUCTION)``."""
H0 = hash_(C0, IDENTIFIER)
"""Initial hash ``HASH(C0 || IDENTIFIER)``."""
