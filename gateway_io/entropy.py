"""Entropy from the operating system, for the real daemon (the core only sees the ``Entropy`` protocol)."""

from __future__ import annotations

import os

from gateway_core.entropy import randbelow_from_bytes


class SystemEntropy:
    """Random bytes from ``os.urandom`` (getrandom(2))."""

    __slots__ = ()

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def randbelow(self, n: int) -> int:
        return randbelow_from_bytes(self, n)
