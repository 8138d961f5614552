"""Exponential backoff with jitter drawn from injected entropy.

Theory of operation: a :class:`Backoff` hands out successive delays. Delay ``k`` (0-based) is
``min(max_interval, initial * multiplier**k)`` with a multiplicative jitter of ``±randomization_factor``,
the scheme of the Rust ``backoff`` crate that Firezone uses for its portal reconnects. The first delay can
be forced to zero (``first_immediate``). Once ``max_elapsed`` has passed since the first failure,
:meth:`next_delay` returns ``None``: the caller gives up. :meth:`reset` starts over after a success.

Everything is integer nanoseconds; the multiplier and the randomisation factor are rational numbers
given as (numerator, denominator) pairs so that no float enters a simulated trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.entropy import Entropy


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    """Parameters of an exponential backoff (all durations in ns)."""

    initial: Duration = millis(500)
    """First non-immediate delay (Rust ``backoff`` default: 500 ms)."""
    multiplier: tuple[int, int] = (3, 2)
    """Growth per attempt as a fraction (default 1.5, as the ``backoff`` crate)."""
    randomization: tuple[int, int] = (1, 2)
    """Jitter as a fraction of the delay, applied as ±factor (default 0.5, as the ``backoff`` crate)."""
    max_interval: Duration = secs(60)
    """Cap on a single delay (``backoff`` crate default: 60 s)."""
    max_elapsed: Duration | None = secs(15 * 60)
    """Give up after this long since the first failure; ``None`` retries forever (Firezone: 15 min)."""
    first_immediate: bool = False
    """Return 0 for the first delay (Firezone's portal client reconnects at once the first time)."""


class Backoff:
    """A running exponential backoff; see the module docstring."""

    __slots__ = ("_attempt", "_config", "_current", "_entropy", "_started")

    def __init__(self, config: BackoffConfig, entropy: Entropy) -> None:
        self._config = config
        self._entropy = entropy
        self._attempt = 0
        self._current = config.initial
        self._started: Instant | None = None

    @property
    def attempt(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt

    def reset(self) -> None:
        """Forget past failures (call after a success)."""
        self._attempt = 0
        self._current = self._config.initial
        self._started = None

    def next_delay(self, now: Instant) -> Duration | None:
        """The delay before the next attempt, or ``None`` when ``max_elapsed`` has run out."""
        cfg = self._config
        if self._started is None:
            self._started = now
        elapsed = now - self._started
        if cfg.max_elapsed is not None and elapsed > cfg.max_elapsed:
            # As the ``backoff`` crate (used by ``rust/connlib/phoenix-channel/src/lib.rs``): give up once
            # the window is *exceeded*.
            return None
        self._attempt += 1
        if cfg.first_immediate and self._attempt == 1:
            return 0
        base = self._current
        num, den = cfg.multiplier
        self._current = min(cfg.max_interval, base * num // den)
        rnum, rden = cfg.randomization
        spread = base * rnum // rden
        low = base - spread
        delay = low + self._entropy.randbelow(2 * spread + 1) if spread > 0 else base
        if cfg.max_elapsed is not None and elapsed + delay > cfg.max_elapsed:
            # As the ``backoff`` crate: a delay that would end past the window means giving up.
            return None
        return max(0, delay)
