"""The driver's DNS plumbing: queries into the core, answers and forwarded queries out, with no task,
queue hop or ``await`` per query where the transports allow it (decision 0112).

Theory of operation
-------------------
:class:`DnsPath` belongs to :class:`gateway_io.driver.Driver`, which calls it from its one loop (R1):

- **in**: a server set that can (:class:`gateway_io.transports.BatchDnsServers`, e.g.
  ``DnsServerSet``) is *attached*: its UDP reader callbacks hand whole batches to :meth:`DnsPath.sink`,
  which turns them into ``DnsQueryReceived`` inputs and wakes the loop; the loop takes one batch per turn
  (:meth:`DnsPath.take`, R9). While :data:`PENDING_BATCHES` batches wait, the sink says "full" and the
  servers stop reading (the kernel buffers the rest) until :meth:`DnsPath.take` makes room and resumes
  them. Other sets, and TCP queries, still come through the driver's reader task (:meth:`DnsPath.inputs`
  converts those too).
- **addresses**: each query's ``(host, port)`` pairs become ``SocketAddr``; parsing an address costs more
  than the rest of the conversion, so parsed addresses are cached (:data:`ADDRESS_CACHE`), and their text
  too, for the answers going back.
- **out**: ``SendDnsResponse`` is executed at once by the set's ``send_response_nowait`` (UDP sends,
  TCP queues on its connection); ``ForwardDnsQuery`` is submitted to a resolver that can
  (:class:`gateway_io.transports.SubmittingResolver`), whose outcomes are reported later. A transport that
  raises is a bug: logged and counted, and a failed forward still reaches the core as an input (R7).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio.abc

from gateway_core.addr import SocketAddr
from gateway_core.dns.forwarding import DnsQueryReceived, DnsUpstreamFailed, ForwardDnsQuery, SendDnsResponse
from gateway_core.inputs import Input
from gateway_core.stats import Stats
from gateway_io.transports import BatchDnsServers, DnsServers, Report, Resolver, SubmittingResolver

log = logging.getLogger("gateway_io.driver")

PENDING_BATCHES = 4
"""Batches of UDP queries (up to 64 each) waiting for the loop before the servers stop reading."""

ADDRESS_CACHE = 4096
"""Parsed query addresses kept (cleared when full)."""


class DnsPath:
    """See the module docstring."""

    def __init__(self, wake: Callable[[], None], counters: Stats) -> None:
        self._wake = wake
        self._counters = counters
        self._ips: dict[str, Any] = {}
        self._texts: dict[Any, str] = {}
        self._pending: deque[list[Input]] = deque()
        self._attached: BatchDnsServers | None = None
        self._nowait: Callable[..., bool] | None = None
        self._submit: Callable[[ForwardDnsQuery], None] | None = None
        self._report_resolver: Report | None = None

    def start(
        self,
        tg: anyio.abc.TaskGroup,
        dns: DnsServers | None,
        resolver: Resolver | None,
        report_resolver: Report,
    ) -> None:
        """Use what the transports offer (called once, from the driver's task group, before any bind)."""
        self._report_resolver = report_resolver
        if isinstance(dns, BatchDnsServers):
            self._nowait = dns.send_response_nowait
            if dns.attach(self.sink):
                self._attached = dns
        if isinstance(resolver, SubmittingResolver):
            resolver.start(tg, report_resolver)
            self._submit = resolver.submit

    # --- in --------------------------------------------------------------------------------------------

    def inputs(self, queries: list[Any]) -> list[Input]:
        """The servers' queries (``gateway_io.dns_server.DnsQuery``) as the core's inputs."""
        ips, texts = self._ips, self._texts
        batch: list[Input] = []
        for q in queries:
            (lhost, lport), (rhost, rport) = q.local, q.remote
            lip, rip = ips.get(lhost), ips.get(rhost)
            if lip is None or rip is None:
                if len(ips) >= ADDRESS_CACHE:
                    ips.clear()
                    texts.clear()
                lip = ips[lhost] = ipaddress.ip_address(lhost)
                rip = ips[rhost] = ipaddress.ip_address(rhost)
                texts[lip], texts[rip] = lhost, rhost
            local, remote = SocketAddr(lip, int(lport)), SocketAddr(rip, int(rport))
            batch.append(DnsQueryReceived(local, remote, q.transport, q.message))
        return batch

    def sink(self, queries: list[Any]) -> bool:
        """An attached set's UDP batch, straight from its reader callback; ``False``: full."""
        self._pending.append(self.inputs(queries))
        self._wake()
        return len(self._pending) < PENDING_BATCHES

    def take(self) -> list[list[Input]]:
        """The next waiting batch (at most one per turn), resuming the servers if they had paused."""
        out = [self._pending.popleft()] if self._pending else []
        if self._attached is not None and len(self._pending) < PENDING_BATCHES:
            self._attached.resume()
        return out

    # --- out -------------------------------------------------------------------------------------------

    def send_response(self, cmd: SendDnsResponse) -> bool:
        """Send ``cmd`` now if the set can; ``False``: it cannot (the driver's worker task does it)."""
        if self._nowait is None:
            return False
        texts = self._texts
        lhost, rhost = texts.get(cmd.local.ip), texts.get(cmd.remote.ip)
        local = (lhost if lhost is not None else str(cmd.local.ip), cmd.local.port)
        remote = (rhost if rhost is not None else str(cmd.remote.ip), cmd.remote.port)
        try:
            sent = self._nowait(cmd.transport, local, remote, cmd.message)
        except Exception:  # a bug in the transport: logged and counted, the loop goes on
            log.exception("sending a DNS response raised")
            sent = False
        if not sent:
            self._counters.incr("driver.dns_response_failed")
        return True

    def forward(self, cmd: ForwardDnsQuery) -> bool:
        """Submit ``cmd`` if the resolver can; ``False``: it cannot (the driver runs a task for it)."""
        if self._submit is None:
            return False
        try:
            self._submit(cmd)
        except Exception as e:  # a bug in the resolver must still reach the core as a failure (R7)
            log.exception("forwarding a DNS query raised")
            assert self._report_resolver is not None
            self._report_resolver(DnsUpstreamFailed(cmd.query_id, f"{type(e).__name__}: {e}"))
        return True
