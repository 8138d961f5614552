"""A small loop driving one portal channel alone over the real WebSocket client, for the IO tests.

Theory of operation: :class:`PortalDriver` is the driving contract in miniature for a
:class:`~gateway_core.portal.channel.PortalChannel` and :class:`gateway_io.portal.PortalIO`, without the
rest of the gateway. One task (:meth:`PortalDriver.run`) owns the channel (R1): it starts it, waits for
an input from the IO tasks or the channel's deadline, feeds what came (a batch at most, then the timer)
and executes the channel's commands after every call (R3); the channel's events are kept in
:attr:`PortalDriver.events`. A test acts on the channel with :meth:`PortalDriver.call`, which hands the
function to the loop: it runs on the loop's task, never on the test's. The run ends when the channel
stops or fails.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from gateway_core.clock import Instant
from gateway_core.inputs import Input
from gateway_core.portal.channel import PortalChannel, PortalEvent, PortalFailed, PortalStopped
from gateway_io.portal import PortalIO

BATCH = 64
"""Inputs fed per turn before the timer is looked at (R9 in miniature)."""


@dataclass(frozen=True, slots=True)
class _Call:
    """A test's action on the channel, run by the loop."""

    fn: Callable[[Instant], object]


class PortalDriver:
    """See the module docstring."""

    def __init__(
        self,
        channel: PortalChannel,
        on_event: Callable[[Instant, PortalEvent], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.channel = channel
        self.on_event = on_event
        self.ssl_context = ssl_context
        self.clock = clock
        self.events: list[PortalEvent] = []
        self.done = anyio.Event()
        # Unbounded: IO tasks report synchronously and must never fail to; the loop drains in batches.
        self._send, self._recv = anyio.create_memory_object_stream[Input | _Call](math.inf)

    def now(self) -> Instant:
        return Instant(self.clock())

    def report(self, inp: Input) -> None:
        """For :class:`PortalIO`: an outcome of a command, fed to the channel by the loop."""
        self._send.send_nowait(inp)

    def call(self, fn: Callable[[Instant], object]) -> None:
        """Have the loop call ``fn(now)`` on the channel (e.g. push a message) and execute what it orders."""
        self._send.send_nowait(_Call(fn))

    def _feed(self, io: PortalIO, item: Input | _Call) -> None:
        if isinstance(item, _Call):
            item.fn(self.now())
        else:
            self.channel.handle_input(self.now(), item)
        self._drain(io)

    def _drain(self, io: PortalIO) -> None:
        ch = self.channel
        while (cmd := ch.poll_command()) is not None:
            io.execute(cmd)
        while (ev := ch.poll_event()) is not None:
            self.events.append(ev)
            if self.on_event is not None:
                self.on_event(self.now(), ev)
            if isinstance(ev, PortalFailed | PortalStopped):
                self.done.set()

    async def run(self, started: Callable[[PortalIO], None] | None = None) -> None:
        """Run until the channel stops or fails (or the caller cancels)."""
        async with anyio.create_task_group() as tg:
            io = PortalIO(tg, self.report, self.ssl_context)
            self.channel.start(self.now())
            self._drain(io)
            if started is not None:
                started(io)
            while not self.done.is_set():
                deadline = self.channel.poll_timeout()
                wait = None if deadline is None else max(0, deadline.at - self.clock()) / 1e9
                item: Input | _Call | None = None
                with anyio.move_on_after(wait):
                    item = await self._recv.receive()
                if item is not None:
                    self._feed(io, item)
                    for _ in range(BATCH):
                        try:
                            more = self._recv.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        self._feed(io, more)
                deadline = self.channel.poll_timeout()
                if deadline is not None and deadline.at <= self.clock():
                    self.channel.handle_timeout(self.now())
                    self._drain(io)
            tg.cancel_scope.cancel()
