"""A DnsServerSet with the core's bind-retry policy run beside it, for the IO tests.

Theory of operation: in the gateway, :class:`gateway_core.dns.servers.DnsBindRetry` lives inside the
core and its :class:`RetryDnsServerBind` commands reach :meth:`DnsServerSet.execute` through the driver.
The tests exercise the set and the policy together without a gateway: :class:`RetryingDnsServers` feeds
every outcome the set reports to the policy (then to the test's ``on_input``), runs the policy's timer in
a task of its own (sleep until ``poll_timeout``, ``handle_timeout``, execute the queued commands; woken
early whenever a command was executed, since that may change the deadline), and
:meth:`RetryingDnsServers.set_addresses` tells the policy a new desired set and executes what it orders.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import anyio
import anyio.abc

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant
from gateway_core.dns.servers import DnsBindRetry, DnsServerBindFailed, DnsServerBound
from gateway_core.inputs import Input
from gateway_io.dns_servers import DnsServerSet, ServerPair


class RetryingDnsServers:
    """See the module docstring; an async context manager like the set it wraps."""

    def __init__(
        self,
        on_input: Callable[[Input], None],
        retry: DnsBindRetry,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.retry = retry
        self.dns = DnsServerSet(self._report)
        """The set itself: its queries (``async for``) and ``send_response``."""
        self._on_input = on_input
        self._clock = clock
        self._last_now = 0
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> RetryingDnsServers:
        await self.dns.__aenter__()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._timer)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)
        return await self.dns.__aexit__(exc_type, exc, tb)

    @property
    def servers(self) -> dict[SocketAddr, ServerPair]:
        """The set's bound pairs (see :attr:`DnsServerSet.servers`)."""
        return self.dns.servers

    def _now(self) -> Instant:
        self._last_now = max(self._last_now, self._clock())
        return Instant(self._last_now)

    def _report(self, event: Input) -> None:
        if isinstance(event, DnsServerBound):
            self.retry.handle_bound(self._now(), event)
        elif isinstance(event, DnsServerBindFailed):
            self.retry.handle_bind_failed(self._now(), event)
        self._on_input(event)

    async def set_addresses(self, addresses: tuple[SocketAddr, ...] | list[SocketAddr]) -> None:
        """Tell the policy the new desired set and execute what it orders (at once: the whole set)."""
        self.retry.set_addresses(self._now(), tuple(addresses))
        await self._drain()

    async def _drain(self) -> None:
        while (command := self.retry.poll_command()) is not None:
            await self.dns.execute(command)
            self._wake.set()

    async def _timer(self) -> None:
        while True:
            deadline = self.retry.poll_timeout()
            self._wake = anyio.Event()
            if deadline is None:
                await self._wake.wait()
                continue
            delay = (deadline.at - self._clock()) / 1e9
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                continue  # something changed or the deadline came: look again
            self.retry.handle_timeout(self._now())
            await self._drain()
