"""Contract checks the simulator runs on every component it drives, after every step.

Theory of operation: the world owns one :class:`ContractChecker` per driven component and calls it around
every mutating call:

- :meth:`ContractChecker.check_now` before the call: the ``now`` handed in never goes backwards (R2).
- :meth:`ContractChecker.network_input` wraps every ``handle_*`` that carries bytes from the network: any
  exception (``DecodeError``, ``IndexError``, even ``UsageError``) is a violation (R6).
- :meth:`ContractChecker.settle` after the call and after the command queue has been drained (R3):
  ``poll_timeout()`` is pure (two calls agree, the component's attributes are unchanged by a shallow
  :func:`state_fingerprint`, and polling queued no command) and never before ``now`` (R4); after
  ``handle_timeout(now)`` the deadline that was served is gone (R5); and the number of
  wake-ups at one instant is bounded, so a component that keeps asking for ``now`` is caught as a busy
  loop (R5).
- Kept deadlines (decision 0140): a component that keeps its children's deadlines instead of asking every
  child (the gateway, the node) also offers ``poll_timeout_recomputed()``, the same answer the slow way,
  and ``stale_kept_deadlines()``, the children whose kept time is later than their real deadline. The
  answers must be equal and no child stale: a kept deadline that went stale (too late: a timer would be
  missed; too early in the answer: a wake-up for nothing, and R4 says the deadline is exact) is an R4
  violation, not a slow drift. (A child's kept time may be *earlier* than its real deadline: that is the
  lazy kind, rechecked when it comes.) The
  comparison runs with the purity check (first settle, then every ``purity_every``-th), and on every
  settle when ``FIREZONE_CHECK_DEADLINES=1`` is in the environment (the debug mode).

The double ``poll_timeout()`` and the two fingerprints are the expensive part of R4 (on a gateway with
many connections, ``poll_timeout`` walks every ICE pair and TURN allocation): they run on the first settle
and then on every ``purity_every``-th settle of each component (a per-checker counter, so deterministic);
the other settles poll once and still check that polling queued no command, the deadline is not in the
past, and R5. ``purity_every=1`` checks every settle (the contract's own tests do).

A violation raises :class:`ContractViolation` naming the component, the virtual time and the rule.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from gateway_core.clock import Instant, fmt
from gateway_core.contract import Component, Deadline

T = TypeVar("T")

MAX_WAKEUPS_PER_INSTANT = 32
"""How many times one component may be woken at the same instant. A component serves everything due in
one ``handle_timeout``; a few chained zero-delay timers are legitimate, dozens are a busy loop."""


PURITY_EVERY = 16
"""Full R4 purity check (double poll + fingerprints) on one settle in this many, per component. An impure
``poll_timeout`` is impure on most steps, so sampling still catches it; checking every step made the
checker most of the simulator's cost (docs/performance.md, "Simulator speed")."""


KEPT_PER_CHECK = 8
"""The brute-force comparison of kept deadlines walks every connection and client (O(n)); on a sampled
settle it runs once per this many of them (one full settle in ``n // KEPT_PER_CHECK``), so its cost per
step stays constant as a world grows to thousands of clients, and small worlds (up to 8 connections and
clients) check on every sampled settle as before. ``FIREZONE_CHECK_DEADLINES`` checks every settle."""


CHECK_DEADLINES_ALWAYS = os.environ.get("FIREZONE_CHECK_DEADLINES", "") in ("1", "true", "yes", "on")
"""Debug mode: compare kept deadlines with recomputed ones on every settle, not only on sampled ones."""


class Rule(StrEnum):
    """The driving-contract rules the simulator checks (numbering of docs/design/driving-contract.md)."""

    R2 = "R2"
    R4 = "R4"
    R5 = "R5"
    R6 = "R6"


RULE_TEXT: dict[Rule, str] = {
    Rule.R2: "time never goes backwards",
    Rule.R4: "poll_timeout is pure and never in the past",
    Rule.R5: "deadlines are consumed",
    Rule.R6: "the network cannot raise",
}


class ContractViolation(AssertionError):
    """A component broke the driving contract (a bug in the component, found by the simulator)."""

    def __init__(self, component: str, now: int, rule: Rule, detail: str) -> None:
        self.component = component
        self.now = now
        self.rule = rule
        self.detail = detail
        super().__init__(
            f"{rule.value} ({RULE_TEXT[rule]}) violated by {component!r} at {fmt(now)} ({now} ns): {detail}"
        )


_SCALARS = (int, str, bytes, bool, float, type(None))
_SIZED = (list, dict, set, frozenset, deque, bytearray, tuple)


def _attributes(obj: object) -> dict[str, object]:
    out: dict[str, object] = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if isinstance(name, str) and name not in out and hasattr(obj, name):
                out[name] = getattr(obj, name)
    return out


def state_fingerprint(obj: object) -> dict[str, object]:
    """A shallow picture of ``obj``'s attributes: scalar values, and identity plus size of containers and
    other objects. Enough to see a ``poll_timeout`` that counts, caches or queues something (R4); changes
    deep inside child objects are the child's own checker's business."""
    fp: dict[str, object] = {}
    for name, value in _attributes(obj).items():
        if isinstance(value, _SCALARS):
            fp[name] = value
        elif isinstance(value, _SIZED):
            fp[name] = (id(value), len(value))
        else:
            fp[name] = id(value)
    return fp


class ContractChecker:
    """The checks for one component; see the module docstring."""

    __slots__ = (
        "_burst",
        "_burst_at",
        "_kept_skip",
        "_settles",
        "component",
        "last_now",
        "max_wakeups",
        "name",
        "purity_every",
    )

    def __init__(
        self,
        name: str,
        component: Component,
        max_wakeups: int = MAX_WAKEUPS_PER_INSTANT,
        purity_every: int = PURITY_EVERY,
    ) -> None:
        if purity_every < 1:
            raise ValueError(f"purity_every must be >= 1, not {purity_every}")
        self.name = name
        self.component = component
        self.max_wakeups = max_wakeups
        self.purity_every = purity_every
        self._settles = 0
        self._kept_skip = 0
        self.last_now: Instant | None = None
        self._burst_at: Instant | None = None
        self._burst = 0

    def violation(self, now: int, rule: Rule, detail: str) -> ContractViolation:
        return ContractViolation(self.name, now, rule, detail)

    def check_now(self, now: Instant) -> None:
        """R2: ``now`` is not before the last ``now`` this component was given."""
        if self.last_now is not None and now < self.last_now:
            raise self.violation(now, Rule.R2, f"driven with now={now} after now={self.last_now}")
        self.last_now = now

    def network_input(self, now: Instant, call: Callable[[], T]) -> T:
        """R6: run ``call`` (a ``handle_*`` with network bytes); any exception is a violation."""
        self.check_now(now)
        try:
            return call()
        except Exception as exc:
            raise self.violation(now, Rule.R6, f"network input raised {type(exc).__name__}: {exc}") from exc

    def check_kept(self, now: Instant, kept: Deadline | None) -> None:
        """R4 for kept deadlines: ``kept`` (what ``poll_timeout()`` said) equals the component's
        ``poll_timeout_recomputed()``, when it has one."""
        recompute: Callable[[], Deadline | None] | None = getattr(
            self.component, "poll_timeout_recomputed", None
        )
        if recompute is None:
            return
        exact = recompute()
        if exact != kept:
            raise self.violation(
                now, Rule.R4, f"stale kept deadline: poll_timeout() gave {kept!r}, recomputed {exact!r}"
            )
        stale: Callable[[], list[str]] | None = getattr(self.component, "stale_kept_deadlines", None)
        late = [] if stale is None else stale()
        if late:
            raise self.violation(
                now, Rule.R4, f"stale kept deadline (would be served late): {'; '.join(late)}"
            )

    def settle(self, now: Instant, served: Deadline | None) -> Deadline | None:
        """R4/R5 after a step whose commands were all drained; returns the component's next deadline.

        ``served`` is the deadline that was just served with ``handle_timeout(now)``, or ``None`` when the
        step was something else (network input, an external call).
        """
        comp = self.component
        full = self._settles % self.purity_every == 0
        self._settles += 1
        if full:
            before = state_fingerprint(comp)
            first = comp.poll_timeout()
            second = comp.poll_timeout()
            if first != second:
                raise self.violation(now, Rule.R4, f"poll_timeout not pure: {first!r} then {second!r}")
            after = state_fingerprint(comp)
            if after != before:
                changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
                raise self.violation(
                    now, Rule.R4, f"poll_timeout changed the component's state: {', '.join(changed)}"
                )
        else:
            first = comp.poll_timeout()
        if CHECK_DEADLINES_ALWAYS:
            self.check_kept(now, first)
        elif full:
            if self._kept_skip > 0:
                self._kept_skip -= 1
            else:
                self.check_kept(now, first)
                count: Callable[[], int] | None = getattr(comp, "kept_deadline_count", None)
                self._kept_skip = 0 if count is None else count() // KEPT_PER_CHECK
        leaked = comp.poll_command()
        if leaked is not None:
            raise self.violation(now, Rule.R4, f"poll_timeout queued a command: {leaked!r}")
        if first is not None and first.at < now:
            raise self.violation(now, Rule.R4, f"deadline {first.reason!r} at {fmt(first.at)} is in the past")
        if served is not None:
            if first == served:
                raise self.violation(
                    now,
                    Rule.R5,
                    f"deadline {served.reason!r} at {fmt(served.at)} still pending after it was served",
                )
            if self._burst_at == now:
                self._burst += 1
            else:
                self._burst_at = now
                self._burst = 1
            if first is not None and first.at <= now and self._burst >= self.max_wakeups:
                raise self.violation(
                    now,
                    Rule.R5,
                    f"busy loop: {self._burst} wake-ups at one instant, still due again ({first.reason!r})",
                )
        return first
