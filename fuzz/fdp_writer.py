"""Writing inputs for ``FuzzedDataProvider``-driven targets: the seed corpus of a stateful target is a
sequence of meaningful operations, written with :class:`FdpWriter` so that atheris' provider reads them
back as written.

atheris' provider (3.0) reads ``ConsumeBytes`` and ``ConsumeBool`` from the front of the input and
``ConsumeIntInRange`` from the back, most significant byte first, as few bytes as the range needs, the
value taken modulo the range size. ``tests/fuzz/test_fuzz.py`` checks this model against atheris.
"""

from __future__ import annotations

Bytes = bytes


class FdpWriter:
    """Records the values a target will consume, in its order; :meth:`build` gives the input."""

    def __init__(self) -> None:
        self._front = bytearray()
        self._back = bytearray()  # in consumption order

    def int_in_range(self, lo: int, hi: int, value: int) -> FdpWriter:
        if not lo <= value <= hi:
            raise ValueError(f"{value} outside [{lo}, {hi}]")
        n = ((hi - lo).bit_length() + 7) // 8
        self._back += (value - lo).to_bytes(n, "big")
        return self

    def bool(self, value: bool) -> FdpWriter:
        self._front.append(1 if value else 0)
        return self

    def bytes(self, data: Bytes) -> FdpWriter:
        """Bytes consumed with ``ConsumeBytes(len(data))`` (the length itself written separately)."""
        self._front += data
        return self

    def sized(self, data: Bytes, max_len: int) -> FdpWriter:
        """The target's ``ConsumeBytes(ConsumeIntInRange(0, max_len))``."""
        return self.int_in_range(0, max_len, len(data)).bytes(data)

    def build(self) -> Bytes:
        return bytes(self._front) + bytes(reversed(self._back))
