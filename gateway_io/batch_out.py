"""Writing one data-plane batch's results (decision 0150): the datagrams with each socket's
``send_batch`` (one ``sendmsg`` with ``UDP_SEGMENT`` per run to one peer), the TUN packets with
``write_batch`` (consecutive segments of one flow coalesced). Transports without the batch methods (test
fakes) get one call per item through the driver's own ``transmit`` and ``write_tun``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway_core.commands import Transmit
from gateway_core.inputs import Input
from gateway_core.stats import Stats
from gateway_io.io_counters import IoCounters
from gateway_io.transports import Transports

log = logging.getLogger(__name__)


def flush(
    t: Transports,
    tx: list[Transmit],
    tun_out: list[bytes],
    counters: Stats,
    io: IoCounters,
    report: Callable[[Input], None],
    transmit: Callable[[Transmit], None],
    write_tun: Callable[[bytes], None],
) -> None:
    """Send ``tx`` (datagrams first), then write ``tun_out``; failures are counted and reported (R7),
    what was written is counted in ``io`` (the per-item fallbacks count their own)."""
    if tx:
        send_batch(t, tx, counters, io, report, transmit)
    if not tun_out:
        return
    write_batch = getattr(t.tun, "write_batch", None)
    if write_batch is None:
        for packet in tun_out:
            write_tun(packet)
        return
    errors = write_batch(tun_out)
    for packet in tun_out[: len(tun_out) - len(errors)]:  # (which failed is not known: a close count)
        io.tun_written(packet)
    if errors:
        counters.incr("driver.tun_write_failed", len(errors))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("TUN write failed: %s", errors[0])


def send_batch(
    t: Transports,
    tx: list[Transmit],
    counters: Stats,
    io: IoCounters,
    report: Callable[[Input], None],
    transmit: Callable[[Transmit], None],
) -> None:
    """Each socket sends its family's datagrams in one batch (order kept per socket)."""
    for sock in t.udp:
        send = getattr(sock, "send_batch", None)
        if send is None:
            break
        version = sock.local.ip.version
        mine = [x for x in tx if x.dst.ip.version == version]
        if not mine:
            continue
        failures = send(mine)
        for failed in failures:
            counters.incr("driver.send_failed")
            report(failed)
        v6 = version == 6
        for x in mine[: len(mine) - len(failures)]:  # (a close count when some failed)
            io.udp_sent(v6, x.payload)
        if len(mine) == len(tx):
            return
        tx = [x for x in tx if x.dst.ip.version != version]
    for x in tx:
        transmit(x)
