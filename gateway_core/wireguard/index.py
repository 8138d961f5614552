"""Per-tunnel 24-bit global indices (Firezone's ``rust/connlib/snownet/src/index.rs:11-51``).

Theory of operation: every tunnel's session indices are ``global << 8 | n``; ``global`` must be unique per
node so that a data packet's ``receiver_index`` finds its tunnel. snownet draws them from a 24-bit Galois
LFSR with a random non-zero seed and a random non-zero XOR mask: the sequence visits every value once per
period (2^24 - 1) and is not sequential, so indices do not reveal how many connections a node has served.
Randomness comes from the injected :class:`Entropy`, so a seeded simulation gets the same indices.
"""

from __future__ import annotations

from gateway_core.entropy import Entropy

_BITS = 24
_FULL = (1 << _BITS) - 1
_TAPS = 0xD80000
"""Feedback taps of a maximal-length 24-bit Galois LFSR (x^24 + x^23 + x^21 + x^20 + 1; snownet's value)."""


class IndexAllocator:
    """Hands out distinct 24-bit global indices."""

    __slots__ = ("_mask", "_seed", "_state")

    def __init__(self, entropy: Entropy) -> None:
        self._seed = 1 + entropy.randbelow(_FULL)
        self._mask = 1 + entropy.randbelow(_FULL)
        self._state = self._seed

    def next(self) -> int:
        """The next global index; raises ``RuntimeError`` after 2^24 - 1 indices (period exhausted)."""
        state = self._state
        value = (state - 1) ^ self._mask
        state = (state >> 1) ^ (_TAPS if state & 1 else 0)
        if state == self._seed:
            raise RuntimeError("index space exhausted")
        self._state = state
        return value & _FULL
