"""Writing one data-plane batch's results (decision 0150): the datagrams with each socket's
``send_batch`` (one ``sendmsg`` with ``UDP_SEGMENT`` per run to one peer), the TUN packets with
``write_batch`` (consecutive segments of one flow coalesced). Transports without the batch methods (test
fakes) get one call per item through the driver's own ``transmit`` and ``write_tun``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter

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


_DST_IP = attrgetter("dst.ip")
_PAYLOAD = attrgetter("payload")


def send_batch(
    t: Transports,
    tx: list[Transmit],
    counters: Stats,
    io: IoCounters,
    report: Callable[[Input], None],
    transmit: Callable[[Transmit], None],
) -> None:
    """Each socket sends its family's datagrams in one batch (order kept per socket).

    The families are told apart once per batch (the set of address types, in C); a batch of one family,
    the usual case, goes to its socket whole, with no per-packet filtering, and is counted in one update."""
    families = set(map(type, map(_DST_IP, tx)))
    for sock in t.udp:
        send = getattr(sock, "send_batch", None)
        if send is None:
            break
        v6 = sock.local.ip.version == 6
        want = IPv6Address if v6 else IPv4Address
        if want not in families:
            continue
        mine = tx if len(families) == 1 else [x for x in tx if type(x.dst.ip) is want]
        failures = send(mine)
        for failed in failures:
            counters.incr("driver.send_failed")
            report(failed)
        ok = mine[: len(mine) - len(failures)] if failures else mine  # (a close count when some failed)
        io.udp_sent_batch(v6, len(ok), sum(map(len, map(_PAYLOAD, ok))))
        families.discard(want)
        if not families:
            return
        tx = [x for x in tx if type(x.dst.ip) is not want]
    for x in tx:
        transmit(x)
