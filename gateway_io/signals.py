"""SIGINT and SIGTERM as shutdown requests, and the daemon's exit codes (as Firezone's
``rust/bin-shared/src/signals/linux.rs`` and ``rust/gateway/src/eventloop.rs``).

Both signals mean the same: ask the portal channel to close, send goodbyes, flush for at most 1 s, exit.
:func:`shutdown_requests` turns them into :class:`gateway_core.inputs.ShutdownRequested` inputs for the
driver (R10); SIGHUP is deliberately not handled (Firezone leaves its default action: terminate).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from gateway_core.inputs import ShutdownRequested

SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Signals that stop the gateway gracefully (``bin-shared/src/signals/linux.rs:20-34``)."""

SHUTDOWN_FLUSH_TIMEOUT = 1.0
"""Seconds the driver may spend flushing goodbyes after a shutdown request (``tunnel/src/lib.rs:328``)."""

EXIT_OK = 0
"""Clean shutdown after SIGINT/SIGTERM, and ``--help``/``--version``."""

EXIT_FAILURE = 1
"""Fatal error: portal refused us (4xx, TLS, join error, unreachable for 15 min), TUN/route/DNS setup
failed, the permission check failed, or the shutdown flush did not finish within 1 s."""

EXIT_USAGE = 2
"""Command-line or environment parsing error (clap's usage-error exit code)."""


@asynccontextmanager
async def shutdown_requests() -> AsyncIterator[AsyncIterator[ShutdownRequested]]:
    """Install the SIGINT/SIGTERM handlers for the block; yields an iterator of shutdown requests.

    ``async with shutdown_requests() as requests: async for _ in requests: ...`` - one request per signal
    received (a second signal during the shutdown is a second request; the driver may then exit at once).
    """
    with anyio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:

        async def requests() -> AsyncIterator[ShutdownRequested]:
            async for _ in signals:
                yield ShutdownRequested()

        yield requests()


async def wait_for_shutdown_signal() -> signal.Signals:
    """Wait for the first SIGINT or SIGTERM and return it (handlers installed only while waiting)."""
    with anyio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        async for signum in signals:
            return signal.Signals(signum)
    raise AssertionError("signal receiver ended")  # pragma: no cover
