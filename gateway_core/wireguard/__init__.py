"""WireGuard as Firezone's boringtun fork speaks it, as pure sans-IO machines.

- :mod:`.crypto`: primitives (BLAKE2s hash/HMAC/KDF, keyed MAC, ChaCha20-Poly1305, XChaCha20-Poly1305,
  X25519, TAI64N).
- :mod:`.messages`: the four message layouts.
- :mod:`.noise`: the Noise IKpsk2 handshake (both roles).
- :mod:`.session`: transport keys, counters and the replay window.
- :mod:`.cookie`, :mod:`.ratelimit`: mac1/mac2, cookies and load.
- :mod:`.timers`: the timer constants and :class:`WireGuardConfig`.
- :mod:`.index`: the 24-bit per-tunnel index allocator.
- :mod:`.peer`: :class:`WireGuardPeer`, one tunnel with every timer.
"""

from gateway_core.wireguard.index import IndexAllocator
from gateway_core.wireguard.noise import identify_initiator
from gateway_core.wireguard.peer import WgEvent, WireGuardPeer
from gateway_core.wireguard.ratelimit import RateLimiter
from gateway_core.wireguard.timers import WireGuardConfig

__all__ = [
    "IndexAllocator",
    "RateLimiter",
    "WgEvent",
    "WireGuardConfig",
    "WireGuardPeer",
    "identify_initiator",
]
