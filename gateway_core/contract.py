"""The driving contract as a type: what every sans-IO component offers its driver.

See ``docs/design/driving-contract.md`` for the rules (R1-R10). In short: inputs are ``handle_*`` calls that
take ``now``; outputs are drained with :meth:`Component.poll_command` until it returns ``None``; the next
deadline is :meth:`Component.poll_timeout` (pure) and it is served with :meth:`Component.handle_timeout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gateway_core.clock import Instant
from gateway_core.commands import Command


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a component next wants :meth:`Component.handle_timeout`, and why."""

    at: Instant
    reason: str


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    """The earliest of ``deadlines`` (the first given wins a tie), or ``None`` when all are ``None``."""
    best: Deadline | None = None
    for d in deadlines:
        if d is not None and (best is None or d.at < best.at):
            best = d
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
