"""Relay credentials: Firezone's scheme (``rust/relay/server/src/auth.rs``) and coturn's TURN REST scheme.

The gateway treats username and password as opaque strings from the portal; these functions exist so that
tests and the simulated relay can mint and check them exactly as the real servers do.

- Firezone relay: username ``"<expiry>:<salt>"``, password = base64 (standard alphabet, no padding) of
  SHA-256(``"<expiry>:<secret>:<salt>"``), plain concatenation, not an HMAC (relay ``auth.rs``).
  For gateways the salt is base64-no-pad(SHA-256(gateway public key string)), expiry now + 90 days.
- coturn ``use-auth-secret``: username ``"<expiry>:<anything>"``, password = base64(HMAC-SHA1(secret,
  username)) with padding.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

FIREZONE_REALM = "firezone"
"""snownet and the Firezone relay always use this realm (``rust/connlib/tunnel/src/lib.rs:47``)."""


def _b64_nopad(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def firezone_password(expiry: int, secret: str, salt: str) -> str:
    """Password the Firezone relay derives for username ``f"{expiry}:{salt}"``."""
    return _b64_nopad(hashlib.sha256(f"{expiry}:{secret}:{salt}".encode()).digest())


def firezone_username(expiry: int, salt: str) -> str:
    return f"{expiry}:{salt}"


def coturn_rest_password(secret: str, username: str) -> str:
    """coturn ``use-auth-secret`` password: base64(HMAC-SHA1(secret, username))."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), "sha1").digest()).decode()
