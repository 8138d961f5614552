"""Injected randomness.

The core never reads randomness from the world. Whatever needs random bytes (keys, nonces, STUN transaction
ids, jitter) receives an :class:`Entropy`. The IO layer passes one backed by the operating system
(``gateway_io.entropy.SystemEntropy``); tests and the simulator pass :class:`SeededEntropy`, which gives the
same stream for the same seed on every platform (SHAKE-256 of the seed, read in order), so that a
simulation run is reproducible byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable


@runtime_checkable
class Entropy(Protocol):
    """A source of random bytes and bounded random integers."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` random bytes."""
        ...

    def randbelow(self, n: int) -> int:
        """Return a uniformly distributed integer in ``[0, n)``; ``n`` must be positive."""
        ...


def randbelow_from_bytes(source: Entropy, n: int) -> int:
    """Uniform integer in ``[0, n)`` by rejection sampling over ``source.random_bytes``.

    Shared by every :class:`Entropy` so that the mapping from bytes to integers is identical everywhere.
    """
    if n <= 0:
        raise ValueError("randbelow needs a positive bound")
    if n == 1:
        return 0
    nbits = (n - 1).bit_length()
    nbytes = (nbits + 7) // 8
    mask = (1 << nbits) - 1
    while True:
        v = int.from_bytes(source.random_bytes(nbytes), "big") & mask
        if v < n:
            return v


class SeededEntropy:
    """Deterministic entropy for tests and the simulator.

    The stream is SHAKE-256 over ``seed || label`` read in blocks; two instances with the same seed and
    label give the same bytes. ``fork(label)`` derives an independent stream, so that adding a consumer of
    randomness in one component does not shift the stream another component sees.
    """

    __slots__ = ("_block", "_buf", "_label", "_pos", "_seed")

    _BLOCK = 4096
    _FIRST = 256
    """The first block is squeezed in two steps: its first 256 bytes, then (only if a stream draws more)
    all 4096. SHAKE's output for a shorter length is a prefix of the longer one, so the stream is the same;
    a fork that draws a few dozen bytes (one per WireGuard tunnel: keys, indices, jitter) keeps 256 bytes
    instead of 4 KiB (decision 0140: it was a fifth of a connected client's memory)."""

    def __init__(self, seed: int | bytes, label: bytes = b"") -> None:
        if isinstance(seed, int):
            seed = seed.to_bytes(16, "big", signed=True)
        self._seed = bytes(seed)
        self._label = bytes(label)
        self._block = 0
        self._buf = b""
        self._pos = 0

    def _refill(self) -> None:
        h = hashlib.shake_256(
            b"fz-sim-entropy\x00" + self._seed + b"\x00" + self._label + self._block.to_bytes(8, "big")
        )
        if self._block == 0 and len(self._buf) < self._FIRST:
            self._buf = h.digest(self._FIRST)  # block 0, first part (``_pos`` is 0)
            return
        if self._block == 0 and len(self._buf) == self._FIRST:
            self._buf = h.digest(self._BLOCK)  # block 0 in full; ``_pos`` stays where it was
            self._block = 1
            return
        self._buf = h.digest(self._BLOCK)
        self._block += 1
        self._pos = 0

    def random_bytes(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("negative length")
        out = bytearray()
        while len(out) < n:
            if self._pos >= len(self._buf):
                self._refill()
            take = min(n - len(out), len(self._buf) - self._pos)
            out += self._buf[self._pos : self._pos + take]
            self._pos += take
        return bytes(out)

    def randbelow(self, n: int) -> int:
        return randbelow_from_bytes(self, n)

    def fork(self, label: str | bytes) -> SeededEntropy:
        """An independent deterministic stream derived from this one's seed and ``label``."""
        lab = label.encode() if isinstance(label, str) else label
        return SeededEntropy(self._seed, self._label + b"/" + lab)
