"""Candidate pairs and their check schedule (str0m ``src/ice/pair.rs``, ``src/io/stun.rs``).

Theory of operation: a :class:`Pair` joins one local and one remote candidate (same family). It keeps its
last ``max_retransmits`` binding attempts ``(tid, sent_at, answered_at, nominated)``. Its next check time
is computed when an attempt is sent, a response arrives or the timing changes, and cached in
``next_at``:

- nominated by the peer and our nomination check not yet sent, or no attempt yet: immediately;
- otherwise ``last_sent + resend_delay(k)`` where ``k`` is the number of unanswered attempts at the tail
  if the oldest of them is older than ``max_rto / 2``, else the number of recorded attempts;
  ``resend_delay(n) = 0 if n == 0 else min(initial_rto << min(n - 1, max_retransmits), max_rto)``.

Checks never stop (they are the consent/keepalive mechanism). A pair fails when all ``max_retransmits``
recorded attempts are unanswered and ``now >= last_sent + resend_delay(max_retransmits)``: with the default
timing (250 ms, 1.5 s, 12) a never-answered pair is checked 12 times and removed at 15.25 s. One deviation
from str0m (decision 0169): a timing change never fails a pair retroactively; the agent gives a pair that
was still possible a ``fail_floor`` of one last-resend window of the new timing from the change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice

from gateway_core.clock import Instant, millis, secs


@dataclass(frozen=True, slots=True)
class StunTiming:
    """RTO schedule of connectivity checks."""

    initial_rto: int
    max_rto: int
    max_retransmits: int


DEFAULT_TIMING = StunTiming(millis(250), millis(1500), 12)
"""snownet default (``node.rs:2409-2413``): ICE timeout 15.25 s."""
IDLE_TIMING = StunTiming(secs(25), secs(25), 4)
"""snownet idle timing (``node.rs:2415-2419``): ICE timeout 100 s."""
MAX_PAIRS = 100
"""str0m keeps at most 100 pairs, dropping the lowest priority ones."""


def resend_delay(timing: StunTiming, n: int) -> int:
    if n == 0:
        return 0
    return min(timing.initial_rto << min(n - 1, timing.max_retransmits), timing.max_rto)


def pair_priority(controlling_prio: int, controlled_prio: int) -> int:
    """RFC 8445 §6.1.2.3 with G = controlling side's candidate priority, D = controlled side's."""
    g, d = controlling_prio, controlled_prio
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


@dataclass(slots=True)
class Attempt:
    tid: bytes
    sent_at: Instant
    nominated: bool
    answered_at: Instant | None = None


@dataclass(slots=True, eq=False)
class Pair:
    """One candidate pair; ``local``/``remote`` index the agent's candidate lists."""

    local: int
    remote: int
    priority: int
    nominated: bool = False
    """The controlling peer sent USE-CANDIDATE on this pair."""
    nominated_at: Instant = Instant(0)
    """When it was nominated: among nominated pairs of equal priority the latest nomination wins."""
    nomination_check_sent: bool = False
    succeeded: bool = False
    attempts: deque[Attempt] = field(default_factory=deque)
    next_at: Instant = Instant(0)
    fail_memo: tuple[StunTiming, Instant | None] | None = field(default=None, repr=False)
    """``fail_at``'s last answer and the timing it was for; cleared whenever ``attempts`` change (only
    :meth:`record_attempt` and :meth:`record_answer` change them)."""
    fail_floor: Instant = Instant(0)
    """The earliest time this pair may fail, set by :meth:`IceAgent.set_timing` (decision 0169): a pair
    that was still possible when the timing changed keeps one last-resend window of the new timing."""

    def record_attempt(self, tid: bytes, now: Instant, timing: StunTiming) -> None:
        if self.nominated:
            self.nomination_check_sent = True
        self.fail_memo = None
        self.attempts.append(Attempt(tid, now, self.nominated))
        while len(self.attempts) > timing.max_retransmits:
            self.attempts.popleft()
        self.recompute(now, timing)

    def record_answer(self, tid: bytes, now: Instant, timing: StunTiming) -> bool:
        for a in self.attempts:
            if a.tid == tid:
                self.fail_memo = None
                if a.answered_at is None:
                    a.answered_at = now
                self.succeeded = True
                self.recompute(now, timing)
                return True
        return False

    def has_tid(self, tid: bytes) -> bool:
        return any(a.tid == tid for a in self.attempts)

    def _unanswered_tail(self) -> list[Attempt]:
        tail: list[Attempt] = []
        for a in reversed(self.attempts):
            if a.answered_at is not None:
                break
            tail.append(a)
        return tail

    def recompute(self, now: Instant, timing: StunTiming) -> None:
        if (self.nominated and not self.nomination_check_sent) or not self.attempts:
            self.next_at = now
            return
        tail = self._unanswered_tail()
        if tail and now - tail[-1].sent_at > timing.max_rto // 2:
            k = len(tail)
        else:
            k = len(self.attempts)
        last = self.attempts[-1].sent_at
        self.next_at = Instant(min(last + resend_delay(timing, k), max(now, last) + timing.max_rto))

    def fail_at(self, timing: StunTiming) -> Instant | None:
        """When this pair is removed if nothing answers, or ``None`` while it cannot fail yet.

        Called for every pair on every ``poll_timeout``: walks the last ``max_retransmits`` attempts
        newest first without copying the deque (an answered attempt is usually the newest)."""
        memo = self.fail_memo
        if memo is not None and memo[0] == timing:
            at = memo[1]
        else:
            at = self._fail_at(timing)
            self.fail_memo = (timing, at)
        if at is not None and at < self.fail_floor:
            return self.fail_floor
        return at

    def _fail_at(self, timing: StunTiming) -> Instant | None:
        n = timing.max_retransmits
        attempts = self.attempts
        if n <= 0:
            recent = list(attempts)[-n:]
            if len(recent) < n or any(a.answered_at is not None for a in recent):
                return None
            return Instant(recent[-1].sent_at + resend_delay(timing, n))
        if len(attempts) < n:
            return None
        for a in islice(reversed(attempts), n):
            if a.answered_at is not None:
                return None
        return Instant(attempts[-1].sent_at + resend_delay(timing, n))
