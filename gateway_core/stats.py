"""Statistics counters.

A :class:`Stats` is a bag of named integer counters plus one counter per :class:`DropReason`. Every
component owns one; parents merge their children's into a snapshot. Counting is a dict increment, cheap
enough for the per-packet path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from gateway_core.errors import DropReason


class Stats:
    """Counters of events and drops for one component."""

    __slots__ = ("counters", "drops")

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.drops: Counter[DropReason] = Counter()

    def incr(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counters[name] += n

    def drop(self, reason: DropReason, n: int = 1) -> None:
        """Count ``n`` inputs dropped for ``reason``."""
        self.drops[reason] += n

    @property
    def total_drops(self) -> int:
        return sum(self.drops.values())

    def snapshot(self) -> dict[str, int]:
        """A flat, sorted copy: counters by name, drops as ``drop.<reason>``."""
        out: dict[str, int] = dict(self.counters)
        for reason, n in self.drops.items():
            out[f"drop.{reason.value}"] = n
        return dict(sorted(out.items()))

    def merge(self, other: Stats, prefix: str = "") -> None:
        """Add ``other``'s counts into this one; counter names get ``prefix``, drops are shared."""
        for k, v in other.counters.items():
            self.counters[prefix + k] += v
        self.drops.update(other.drops)

    @staticmethod
    def combine(parts: Mapping[str, Stats]) -> Stats:
        """One :class:`Stats` holding every part's counts, counters prefixed ``<name>.``."""
        total = Stats()
        for name, part in sorted(parts.items()):
            total.merge(part, prefix=f"{name}.")
        return total
