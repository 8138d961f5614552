"""WireGuard timer constants and the tunnel's configuration (boringtun ``noise/timers.rs``).

Every value carries the reason for it and, where Firezone's boringtun fork has one, its value there
(``boringtun@069a483 boringtun/src/noise/timers.rs:15-31``, ``mod.rs:43-47``). The timer *logic* lives in
``peer.py``; this module only names the numbers so that tests can shrink them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_core.clock import Duration, millis, secs
from gateway_core.errors import UsageError

REKEY_AFTER_TIME: Duration = secs(120)
"""The initiator of a session re-handshakes once the session is this old and it has sent on it
(WireGuard paper §6.1; boringtun 120 s)."""
REJECT_AFTER_TIME: Duration = secs(180)
"""A session is discarded this long after it was established (paper and boringtun: 180 s)."""
REKEY_ATTEMPT_TIME: Duration = secs(15)
"""Give up on a handshake this long after the attempt began. The paper and boringtun default to 90 s;
snownet sets 15 s (``node.rs`` ``Tunn::set_rekey_attempt_time``) so a dead path fails fast."""
REKEY_TIMEOUT: Duration = secs(5)
"""Retransmit an unanswered initiation after this long (paper and boringtun: 5 s)."""
KEEPALIVE_TIMEOUT: Duration = secs(10)
"""Passive keepalive after receiving data and sending nothing for this long (paper and boringtun: 10 s)."""
MAX_JITTER: Duration = millis(333)
"""Each handshake is delayed by a uniform 0..=333 ms drawn from the injected entropy, so both sides do not
retransmit in lock-step (paper and boringtun: 333 ms)."""
SHOULD_NOT_USE_AFTER: Duration = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT
"""The initiator stops sending on a session older than 170 s, so a packet cannot reach the peer after the
peer discarded the session (boringtun ``SHOULD_NOT_USE_AFTER_TIME``)."""
REKEY_ON_RECEIVE_AFTER: Duration = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
"""The initiator also re-handshakes after 165 s if it has received data on the session (paper §6.1)."""
CONNECTION_EXPIRY: Duration = 3 * REJECT_AFTER_TIME
"""Without any new session for 540 s the tunnel expires: keys are wiped and the connection fails
(paper: zero keys after 3 x REJECT_AFTER_TIME; boringtun ``ConnectionExpired``)."""
REKEY_AFTER_MESSAGES = 1 << 60
"""Re-handshake after sending this many messages on one session (paper §6.1). boringtun has no message
limits; see ``docs/decisions/0010-wg-message-limits-and-queue-flush.md``."""
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
"""Never send or accept a counter at or above this (paper §6.1): the nonce must not wrap."""
MAX_QUEUE_DEPTH = 256
"""IP packets held while no session is usable; more are dropped (boringtun ``MAX_QUEUE_DEPTH`` 256)."""
N_SESSIONS = 8
"""Sessions kept per tunnel, in slot ``local_index % 8`` (boringtun ``N_SESSIONS`` 8)."""


@dataclass(frozen=True, slots=True)
class WireGuardConfig:
    """The timing knobs of one tunnel; defaults are Firezone's (module constants above)."""

    rekey_after_time: Duration = REKEY_AFTER_TIME
    reject_after_time: Duration = REJECT_AFTER_TIME
    rekey_attempt_time: Duration = REKEY_ATTEMPT_TIME
    rekey_timeout: Duration = REKEY_TIMEOUT
    keepalive_timeout: Duration = KEEPALIVE_TIMEOUT
    max_jitter: Duration = MAX_JITTER
    rekey_after_messages: int = REKEY_AFTER_MESSAGES
    reject_after_messages: int = REJECT_AFTER_MESSAGES
    max_queue_depth: int = MAX_QUEUE_DEPTH
    persistent_keepalive: Duration | None = None
    """Send a keepalive this often regardless of traffic. Firezone: disabled (``None``)."""

    def __post_init__(self) -> None:
        if not (
            self.keepalive_timeout > 0
            and self.keepalive_timeout + self.rekey_timeout < self.reject_after_time
            and self.rekey_after_time < self.reject_after_time
        ):
            raise UsageError("WireGuardConfig: need keepalive + rekey_timeout < reject_after_time")
        if not 0 < self.rekey_after_messages <= self.reject_after_messages < 1 << 64:
            raise UsageError("WireGuardConfig: need rekey_after_messages <= reject_after_messages < 2^64")
        if self.persistent_keepalive is not None and self.persistent_keepalive <= 0:
            raise UsageError("WireGuardConfig: persistent_keepalive must be positive")

    @property
    def should_not_use_after(self) -> Duration:
        return self.reject_after_time - self.keepalive_timeout

    @property
    def rekey_on_receive_after(self) -> Duration:
        return self.reject_after_time - self.keepalive_timeout - self.rekey_timeout

    @property
    def connection_expiry(self) -> Duration:
        return 3 * self.reject_after_time
