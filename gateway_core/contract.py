"""The driving contract as a type: what every sans-IO component offers its driver.

See ``docs/design/driving-contract.md`` for the rules (R1-R10). In short: inputs are ``handle_*`` calls that
take ``now``; outputs are drained with :meth:`Component.poll_command` until it returns ``None``; the next
deadline is :meth:`Component.poll_timeout` (pure) and it is served with :meth:`Component.handle_timeout`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from gateway_core.clock import Instant
from gateway_core.commands import Command
from gateway_core.errors import UsageError

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a component next wants :meth:`Component.handle_timeout`, and why."""

    at: Instant
    reason: str


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    """The earliest of ``deadlines``, or ``None`` when all are ``None``. A tie at the same instant goes to
    the smallest reason, so the answer does not depend on the order the parts are asked in (the one rule
    for "earliest deadline" in every component)."""
    best: Deadline | None = None
    for d in deadlines:
        if d is not None and (best is None or d.at < best.at or (d.at == best.at and d.reason < best.reason)):
            best = d
    return best


def advance(last: Instant, now: Instant) -> Instant:
    """R2 for every component: ``now`` if it is not before ``last``, else :class:`UsageError`.

    The one check of "time never goes back" (``self._now = advance(self._now, now)``); no component clamps
    with ``max`` instead, so a driver bug is found where it happens."""
    if now < last:
        raise UsageError(f"time went backwards: {now} < {last}")
    return now


class TimerHeap(Generic[K]):
    """Kept deadlines of many children: a heap of ``(at, seq, key)`` with lazy invalidation.

    Each key has at most one *live* entry (the last :meth:`schedule` that lowered or set it; its ``seq``
    is remembered in a dict); older entries of the key stay in the heap and are skipped when they reach
    the top. :meth:`schedule` only ever moves a key's kept time earlier (or sets it): a child whose
    deadline moved later (a packet refreshed an idle timer) keeps its old, earlier entry and is
    *rechecked* when it comes due, never served late. :meth:`pop_due` hands out the keys whose kept time
    has come; the owner serves or rechecks them and schedules their next deadline again.

    Costs: :meth:`schedule` O(log n), :meth:`pop_due` O(k log n) for k due keys, :meth:`peek` O(1)
    amortised (stale tops are dropped by the mutating calls, never by :meth:`peek`, so polling is pure).
    """

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, K]] = []
        self._live: dict[K, tuple[int, int]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def kept(self, key: K) -> Instant | None:
        """The kept time of ``key``, or ``None`` when it is not scheduled."""
        e = self._live.get(key)
        return None if e is None else Instant(e[0])

    def schedule(self, key: K, at: int | None) -> None:
        """Keep ``at`` for ``key`` unless an earlier time is already kept (``None``: nothing to add)."""
        if at is None:
            return
        cur = self._live.get(key)
        if cur is not None and cur[0] <= at:
            return
        self._seq += 1
        self._live[key] = (at, self._seq)
        heapq.heappush(self._heap, (at, self._seq, key))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def set(self, key: K, at: int | None) -> None:
        """Keep exactly ``at`` for ``key`` (``None``: forget it); nothing changes if that is already kept."""
        cur = self._live.get(key)
        if cur is not None and cur[0] == at:
            return
        self._live.pop(key, None)
        self.schedule(key, at)

    def discard(self, key: K) -> None:
        """Forget ``key`` (its heap entries become stale)."""
        self._live.pop(key, None)

    def _drop_stale(self) -> None:
        heap, live = self._heap, self._live
        while heap:
            _, seq, key = heap[0]
            e = live.get(key)
            if e is not None and e[1] == seq:
                return
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(at, seq, k) for k, (at, seq) in self._live.items()]
        heapq.heapify(self._heap)

    def pop_due(self, now: int) -> list[K]:
        """Every key kept at or before ``now`` (unscheduled now), in (time, scheduling) order."""
        heap, live = self._heap, self._live
        out: list[K] = []
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            e = live.get(key)
            if e is not None and e[1] == seq:
                del live[key]
                out.append(key)
        self._drop_stale()
        return out

    def peek(self) -> Instant | None:
        """The earliest kept time (pure)."""
        heap, live = self._heap, self._live
        for at, seq, key in heap[:1]:
            e = live.get(key)
            if e is not None and e[1] == seq:
                return Instant(at)
        # a stale top (only between a discard and the next mutating call): look further, still pure
        best = min((at for at, _ in live.values()), default=None)
        return None if best is None else Instant(best)

    def earliest_exact(self, true_deadline: Callable[[K], Deadline | None]) -> Deadline | None:
        """The exact earliest deadline of all children, from their kept times (pure).

        Kept times are lower bounds of the children's real deadlines (they only go stale by being too
        early); a best-first walk of the heap asks ``true_deadline`` of each child whose kept time is not
        later than the best real deadline found so far. Usually that is one or two children; the walk
        stops as soon as every remaining kept time is later than the answer."""
        heap, live = self._heap, self._live
        best: Deadline | None = None
        frontier: list[tuple[int, int, int]] = [(heap[0][0], heap[0][1], 0)] if heap else []
        while frontier:
            at, _, i = heapq.heappop(frontier)
            if best is not None and at > best.at:
                break
            _, seq, key = heap[i]
            e = live.get(key)
            if e is not None and e[1] == seq:
                d = true_deadline(key)
                if d is not None and (best is None or (d.at, d.reason) < (best.at, best.reason)):
                    best = d
            for c in (2 * i + 1, 2 * i + 2):
                if c < len(heap):
                    heapq.heappush(frontier, (heap[c][0], heap[c][1], c))
        return best


@runtime_checkable
class Component(Protocol):
    """Anything the IO driver or the simulator can drive."""

    def handle_timeout(self, now: Instant) -> None:
        """Advance to ``now`` and do everything that is due."""
        ...

    def poll_timeout(self) -> Deadline | None:
        """The next deadline; no side effects, never before the last ``now``."""
        ...

    def poll_command(self) -> Command | None:
        """The next queued command, or ``None`` when the queue is empty."""
        ...
