"""The layer-4 DNS servers as the core sees them: commands, inputs, and the bind-retry policy.

Theory of operation. The IO layer keeps one UDP and one TCP DNS server per socket address (as Firezone's
``rust/connlib/tunnel/src/io.rs``). The core says *which* addresses with :class:`BindDnsServers` (the whole
desired set, declarative: the IO layer reconciles, keeping unchanged servers, binding new ones and closing
removed ones). For each address the IO layer reports either :class:`DnsServerBound` or
:class:`DnsServerBindFailed`.

A failed bind (the address is not yet on the interface, IPv6 is disabled, the port is still taken) never
stops the gateway (a deliberate fix: Firezone 1.4.18 exits, ``rust/gateway/src/eventloop.rs``). Instead
:class:`DnsBindRetry` decides when to try that one address again: it keeps an exponential backoff per
failed address, offers the earliest retry as its :meth:`DnsBindRetry.poll_timeout`, and when a retry falls
due it queues :class:`RetryDnsServerBind` for that address alone (R7: IO only executes). A success resets
the address; an address that leaves the desired set is forgotten. Every address's backoff is independent,
so one address that never binds does not delay any other.

States per desired address: *pending* (bind commanded, no answer yet), *bound*, *waiting* (failed, a retry
is scheduled at some instant). The retry never gives up (``max_elapsed=None``): an IPv6 address on a host
with IPv6 disabled is retried at the capped interval for as long as the core wants it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from gateway_core.addr import SocketAddr
from gateway_core.backoff import Backoff, BackoffConfig
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Command
from gateway_core.contract import Deadline, advance
from gateway_core.entropy import Entropy
from gateway_core.inputs import Input

TUN_DNS_PORT = 53535
"""Port of the layer-4 DNS servers on the gateway's tunnel addresses (Firezone ``TUN_DNS_PORT``,
``rust/connlib/tunnel/src/gateway.rs:28``)."""


class DnsTransport(StrEnum):
    """Which layer-4 server a DNS query arrived on (and its response must leave by)."""

    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class BindDnsServers(Command):
    """Keep exactly one UDP and one TCP DNS server on each of ``addresses`` (the whole desired set)."""

    addresses: tuple[SocketAddr, ...]


@dataclass(frozen=True, slots=True)
class RetryDnsServerBind(Command):
    """Try again to bind the UDP and TCP servers of ``address`` (only if it is still desired and unbound)."""

    address: SocketAddr


@dataclass(frozen=True, slots=True)
class DnsServerBound(Input):
    """Both servers of ``address`` are bound; ``local_port`` is the bound port (differs when 0 was asked)."""

    address: SocketAddr
    local_port: int


@dataclass(frozen=True, slots=True)
class DnsServerBindFailed(Input):
    """Binding the servers of ``address`` failed (neither is kept); ``error`` is the OS error text."""

    address: SocketAddr
    error: str


DnsServerCommand = BindDnsServers | RetryDnsServerBind
"""Every command of the :class:`DnsBindRetry`."""


DNS_BIND_BACKOFF = BackoffConfig(
    initial=millis(100),
    multiplier=(2, 1),
    randomization=(1, 4),
    max_interval=secs(30),
    max_elapsed=None,
    first_immediate=False,
)
"""Retry schedule for one address. 100 ms first, as the pause of Firezone's later fix (``58c524b265``: 3
attempts, 100 ms apart, then exit); doubling so that an address that appears a little late (TUN still being
configured) is caught within a second or two; capped at 30 s because a bind attempt costs two syscalls and
an address can appear at any time (IPv6 re-enabled); never giving up because the gateway must not stop."""


@dataclass(slots=True)
class _Waiting:
    backoff: Backoff
    retry_at: Instant | None


class DnsBindRetry:
    """Per-address retry of failed DNS server binds; a small sans-IO component (see the module docstring)."""

    __slots__ = ("_commands", "_config", "_desired", "_entropy", "_failures", "_now", "_waiting")

    def __init__(self, entropy: Entropy, config: BackoffConfig = DNS_BIND_BACKOFF) -> None:
        self._entropy = entropy
        self._config = config
        self._desired: frozenset[SocketAddr] = frozenset()
        self._waiting: dict[SocketAddr, _Waiting] = {}
        self._commands: deque[DnsServerCommand] = deque()
        self._now: Instant | None = None
        self._failures = 0

    @property
    def failures(self) -> int:
        """How many bind failures were reported in total."""
        return self._failures

    def _advance(self, now: Instant) -> None:
        self._now = now if self._now is None else advance(self._now, now)

    def set_addresses(self, now: Instant, addresses: tuple[SocketAddr, ...]) -> None:
        """The core wants servers on exactly ``addresses``: queue :class:`BindDnsServers`, forget the rest."""
        self._advance(now)
        ordered = tuple(sorted(set(addresses), key=_sort_key))
        self._desired = frozenset(ordered)
        for address in [a for a in self._waiting if a not in self._desired]:
            del self._waiting[address]
        self._commands.append(BindDnsServers(ordered))

    def handle_bound(self, now: Instant, event: DnsServerBound) -> None:
        """``event.address`` is bound: no retry for it any more."""
        self._advance(now)
        self._waiting.pop(event.address, None)

    def handle_bind_failed(self, now: Instant, event: DnsServerBindFailed) -> None:
        """Schedule the next attempt for ``event.address`` alone (ignored if it is no longer desired)."""
        self._advance(now)
        self._failures += 1
        if event.address not in self._desired:
            return
        waiting = self._waiting.get(event.address)
        if waiting is None:
            waiting = _Waiting(Backoff(self._config, self._entropy), None)
            self._waiting[event.address] = waiting
        delay = waiting.backoff.next_delay(now)
        # max_elapsed is None in the default schedule; a custom one that runs out falls back to the cap.
        waiting.retry_at = Instant(now + (delay if delay is not None else self._config.max_interval))

    def retry_at(self, address: SocketAddr) -> Instant | None:
        """When ``address`` is due for its next attempt, ``None`` if it is not waiting."""
        waiting = self._waiting.get(address)
        return None if waiting is None else waiting.retry_at

    def poll_timeout(self) -> Deadline | None:
        due = [w.retry_at for w in self._waiting.values() if w.retry_at is not None]
        if not due:
            return None
        at = min(due)
        if self._now is not None and at < self._now:
            at = self._now
        return Deadline(Instant(at), "dns server bind retry")

    def handle_timeout(self, now: Instant) -> None:
        self._advance(now)
        for address in sorted(self._waiting, key=_sort_key):
            waiting = self._waiting[address]
            if waiting.retry_at is not None and waiting.retry_at <= now:
                waiting.retry_at = None  # pending until the IO layer reports the outcome
                self._commands.append(RetryDnsServerBind(address))

    def poll_command(self) -> DnsServerCommand | None:
        return self._commands.popleft() if self._commands else None


def _sort_key(address: SocketAddr) -> tuple[int, int, int]:
    return (address.ip.version, int(address.ip), address.port)
