"""Writing one data-plane batch's results (decision 0150): the datagrams with each socket's
``send_batch`` (one ``sendmsg`` with ``UDP_SEGMENT`` per run to one peer), the TUN packets with
``write_batch`` (consecutive segments of one flow coalesced). Transports without the batch methods (test
fakes) get one call per item through the driver's own ``transmit`` and ``write_tun``.

What each device can do is looked up once, when the driver starts (:class:`BatchOut`), not per batch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gateway_core.commands import Transmit
from gateway_core.inputs import Input
from gateway_core.stats import Stats
from gateway_io.io_counters import IoCounters
from gateway_io.transports import Transports

log = logging.getLogger(__name__)


class BatchOut:
    """The batch writer of one run of the driver over ``t``.

    Datagrams: the sockets send the batch in turn, order kept per socket: each sends its family's datagrams
    and hands the rest to the next (it looks at the family once per run to one destination, so the usual
    batch of one family costs no pass of its own here); what no socket took goes through ``transmit``, which
    reports "no IPv6 socket". Only sockets that can do this (:class:`gateway_io.transports.BatchUdpSocket`)
    are handed batches, in the order of ``t.udp`` up to the first that cannot; they count their own traffic.

    TUN packets: ``write_batch`` when the device has it (counted here unless the device counts its own
    traffic, ``count_into``), else ``write_tun`` per packet."""

    __slots__ = (
        "_counters",
        "_io",
        "_report",
        "_senders",
        "_transmit",
        "_tun_counts",
        "_write_batch",
        "_write_tun",
    )

    def __init__(
        self,
        t: Transports,
        counters: Stats,
        io: IoCounters,
        report: Callable[[Input], None],
        transmit: Callable[[Transmit], None],
        write_tun: Callable[[bytes], None],
    ) -> None:
        self._counters = counters
        self._io = io
        self._report = report
        self._transmit = transmit
        self._write_tun = write_tun
        self._senders: list[Callable[[list[Transmit], list[Transmit]], list[Any]]] = []
        for sock in t.udp:
            send = getattr(sock, "send_batch", None)
            if send is None or not hasattr(sock, "count_into"):
                break
            self._senders.append(send)
        self._write_batch: Callable[[list[bytes]], list[OSError]] | None = getattr(t.tun, "write_batch", None)
        self._tun_counts = hasattr(t.tun, "count_into")

    def flush(self, tx: list[Transmit], tun_out: list[bytes]) -> None:
        """Send ``tx`` (datagrams first), then write ``tun_out``; failures are counted and reported (R7)."""
        if tx:
            self.send(tx)
        if not tun_out:
            return
        write_batch = self._write_batch
        if write_batch is None:
            for packet in tun_out:
                self._write_tun(packet)
            return
        errors = write_batch(tun_out)
        if not self._tun_counts:  # (which failed is not known: a close count)
            self._io.tun_written_batch(tun_out[: len(tun_out) - len(errors)])
        if errors:
            self._counters.incr("driver.tun_write_failed", len(errors))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("TUN write failed: %s", errors[0])

    def send(self, tx: list[Transmit]) -> None:
        """Send the datagrams ``tx`` (see the class)."""
        rest = tx
        for send in self._senders:
            others: list[Transmit] = []
            for failed in send(rest, others):
                self._counters.incr("driver.send_failed")
                self._report(failed)
            rest = others
            if not rest:
                return
        for x in rest:
            self._transmit(x)
