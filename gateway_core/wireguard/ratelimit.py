"""Checking mac1/mac2 of incoming handshake messages, and cookie replies under load (boringtun
``noise/rate_limiter.rs``).

Theory of operation: one :class:`RateLimiter` per node (our static key), shared by all tunnels. Every
incoming Handshake Initiation or Response must carry a valid mac1 for our public key, else it is dropped.
Each mac1-valid message increments a counter; while the counter is at or above ``limit`` (from the
``limit + 1``-th message since the last reset on) the node is *under load*: a message must also carry a
valid mac2, computed with the cookie of its source IP, or it is answered with a Cookie Reply instead of
being processed. Under load every source IP also has a budget (a token bucket of :data:`SOURCE_RATE` per
second, :data:`SOURCE_BURST` at once, as the kernel's WireGuard ``ratelimiter.c``): a message beyond it is
dropped before any cookie is computed, so one source gets at most that many cookie replies or processed
handshakes per second however fast it sends (the kernel limits mac2-valid messages only; we limit cookie
replies too, so a flood of initiations cannot make us send more than a trickle to any address, decision
0115). Whoever owns the limiter resets the counter once per second (:meth:`reset_count`);
snownet does that from its node timer (``Node::handle_timeout`` in ``rust/connlib/snownet/src/node.rs``;
a quirk: not while every connection is idle). :meth:`verify` also forgets a count older than a second
itself, so that quirk cannot keep an idle node under load after a burst.

The cookie for an IP is ``MAC(secret16, LE64(seconds_since_start // 128) || ip16)`` (boringtun
``rate_limiter.rs:108-122``): it changes every 128 s, does not include the port, and ``secret16`` is random
per limiter. Cookie Reply nonces are ``MAC24(nonce_key, LE64(counter))``: unique, not secret.
"""

from __future__ import annotations

import hmac
import struct

from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, Instant, secs
from gateway_core.entropy import Entropy
from gateway_core.errors import DropReason
from gateway_core.wireguard import crypto
from gateway_core.wireguard.messages import TYPE, CookieReply, encode_cookie_reply

HANDSHAKE_RATE_LIMIT = 100
"""mac1-valid handshake messages per reset period before cookies are demanded (snownet ``node.rs:41``:
100 per node; boringtun's own per-tunnel default is 10)."""
RESET_PERIOD: Duration = secs(1)
"""How often the counter is reset (boringtun ``RESET_PERIOD`` 1 s)."""
COOKIE_REFRESH: Duration = secs(128)
"""Lifetime of the cookie secret's time bucket (boringtun uses 128 s where the paper says 120 s)."""

SOURCE_RATE = 20
"""Handshake messages per second per source IP while under load (WireGuard's ``ratelimiter.c``:
``PACKETS_PER_SECOND`` 20); boringtun has no such limit."""
SOURCE_BURST = 5
"""Messages a source may send at once while under load (``ratelimiter.c``: ``PACKETS_BURSTABLE`` 5)."""
SOURCE_TABLE = 4096
"""Sources tracked at most; a new source beyond that is refused while under load (a flood from spoofed
addresses then gets nothing back) until the once-a-second reset forgets sources whose bucket refilled."""
_COST = secs(1) // SOURCE_RATE
_BURST = _COST * SOURCE_BURST

_LE64 = struct.Struct("<Q")

VERIFY_OK = 0
VERIFY_COOKIE_SENT = 1
VERIFY_DROP = 2


class RateLimiter:
    """mac1 checks, the handshake counter and cookie replies for one static key."""

    __slots__ = (
        "_cookie_key",
        "_mac1_key",
        "_nonce_ctr",
        "_nonce_key",
        "_secret",
        "_sources",
        "_start",
        "count",
        "last_reset",
        "limit",
    )

    def __init__(
        self, static_public: bytes, entropy: Entropy, now: Instant, limit: int = HANDSHAKE_RATE_LIMIT
    ) -> None:
        self._mac1_key = crypto.hash_(crypto.LABEL_MAC1, static_public)
        self._cookie_key = crypto.hash_(crypto.LABEL_COOKIE, static_public)
        self._secret = entropy.random_bytes(16)
        self._nonce_key = entropy.random_bytes(32)
        self._nonce_ctr = 0
        self._start = now
        self.limit = limit
        self.count = 0
        self.last_reset = now
        self._sources: dict[IPAddress, list[int]] = {}
        """Source IP -> [tokens in ns, when they were counted] (under load only)."""

    def reset_count(self, now: Instant) -> None:
        """Zero the counter if at least :data:`RESET_PERIOD` passed since the last reset; forget the
        sources whose budget is full again."""
        if now - self.last_reset >= RESET_PERIOD:
            self.count = 0
            self.last_reset = now
            if self._sources:
                full = [ip for ip, (tokens, at) in self._sources.items() if tokens + now - at >= _BURST]
                for ip in full:
                    del self._sources[ip]

    def _allow(self, ip: IPAddress, now: Instant) -> bool:
        """Take one message from ``ip``'s budget (token bucket in nanoseconds)."""
        entry = self._sources.get(ip)
        if entry is None:
            if len(self._sources) >= SOURCE_TABLE:
                return False
            self._sources[ip] = [_BURST - _COST, now]
            return True
        tokens = min(_BURST, entry[0] + now - entry[1])
        entry[1] = now
        if tokens < _COST:
            entry[0] = tokens
            return False
        entry[0] = tokens - _COST
        return True

    def next_reset(self) -> Instant | None:
        """When :meth:`reset_count` would next have an effect (``None``: the counter is zero)."""
        if self.count == 0:
            return None
        return Instant(self.last_reset + RESET_PERIOD)

    def cookie_for(self, ip: IPAddress, now: Instant) -> bytes:
        """The cookie a sender at ``ip`` must use as its mac2 key right now."""
        packed = ip.packed
        ip16 = packed + bytes(16 - len(packed))
        bucket = (now - self._start) // COOKIE_REFRESH
        return crypto.mac(self._secret, _LE64.pack(bucket) + ip16)

    def _nonce(self) -> bytes:
        ctr = self._nonce_ctr
        self._nonce_ctr = ctr + 1
        return crypto.mac24(self._nonce_key, _LE64.pack(ctr))

    def cookie_reply(self, receiver: int, cookie: bytes, mac1: bytes, nonce24: bytes | None = None) -> bytes:
        """A Cookie Reply carrying ``cookie`` to the sender of the message whose mac1 is ``mac1``."""
        n = self._nonce() if nonce24 is None else nonce24
        encrypted = crypto.xaead_encrypt(self._cookie_key, n, cookie, mac1)
        return encode_cookie_reply(CookieReply(receiver, n, encrypted))

    def verify(
        self, msg: bytes, src: IPAddress | None, now: Instant
    ) -> tuple[int, DropReason | bytes | None]:
        """Check a handshake message (initiation or response, length already validated).

        Returns ``(VERIFY_OK, None)`` to process it, ``(VERIFY_DROP, reason)`` to drop it, or
        ``(VERIFY_COOKIE_SENT, reply)`` with the Cookie Reply to send instead of processing it.
        """
        body = msg[:-32]
        mac1 = msg[-32:-16]
        if not hmac.compare_digest(crypto.mac(self._mac1_key, body), mac1):
            return VERIFY_DROP, DropReason.WG_BAD_MAC1
        if now - self.last_reset >= RESET_PERIOD:
            # The owner's timer may not have run (snownet does not reset while all connections are
            # idle): a count older than the period says nothing about the load now (decision 0115).
            self.count = 0
            self.last_reset = now
        under_load = self.count >= self.limit
        self.count += 1
        if not under_load:
            return VERIFY_OK, None
        if src is None or not self._allow(src, now):
            return VERIFY_DROP, DropReason.WG_RATE_LIMITED
        cookie = self.cookie_for(src, now)
        if hmac.compare_digest(crypto.mac(cookie, body + mac1), msg[-16:]):
            return VERIFY_OK, None
        # The sender index sits at offset 4 in both handshake messages.
        (sender,) = TYPE.unpack_from(msg, 4)
        return VERIFY_COOKIE_SENT, self.cookie_reply(sender, cookie, mac1)
