"""Soak (sim/soak.py): clients joining, roaming, revoked and expiring for a long time; memory flat.

In ``make test`` a modest size (2 clients, 100 s cycles, 20 minutes of warm-up and 4 cycles
compared: about 30 s of CPU); with the nightly profile
(``FZ_STATEFUL_PROFILE=nightly``, ``make nightly``) the full size: 1,000 clients for 6 simulated hours.
``FZ_SOAK_CLIENTS`` / ``FZ_SOAK_HOURS`` override either.

The bound: after the warm-up, no sample may hold more bytes allocated by ``gateway_core`` than the
first sample plus :data:`RELATIVE` of it, plus :data:`PER_CLIENT` bytes per client (where each client is
in its life at a sample moves the figure by a few KiB per client), plus :data:`OUTBOX`. A leak adds the
same amount every cycle and crosses the bound; the longer the soak, the smaller the leak it catches.
"""

from __future__ import annotations

import os

import pytest

from gateway_core.clock import secs
from sim.soak import CYCLE, WARMUP, growth_ok, run_soak, soak_summary

NIGHTLY = os.environ.get("FZ_STATEFUL_PROFILE") == "nightly"
CLIENTS = int(os.environ.get("FZ_SOAK_CLIENTS", "1000" if NIGHTLY else "2"))
HOURS = float(os.environ.get("FZ_SOAK_HOURS", "6" if NIGHTLY else "0"))
QUICK_CYCLE = secs(100)
"""``make test``'s cycle: the shortest the phases allow (ICE, the expiry and its sweep)."""
QUICK_CYCLES = 4
"""Cycles compared after the warm-up in ``make test``."""
RELATIVE = 0.10
PER_CLIENT = 4096
OUTBOX = 32 * 1024
"""The portal channel remembers up to 256 pushes awaiting a reply (about 100 bytes each): a short soak
ends before that ring is full, so its filling is allowed for on top of the relative bound."""


@pytest.mark.timeout(6 * 3600 if NIGHTLY else 300)
def test_memory_stays_flat_while_clients_come_roam_and_go() -> None:
    if HOURS:
        cycle, duration = CYCLE, int(HOURS * 3600) * secs(1)
    else:
        cycle, duration = QUICK_CYCLE, WARMUP + QUICK_CYCLES * QUICK_CYCLE
    r = run_soak(11, CLIENTS, duration, cycle)
    print("\n" + soak_summary(r))
    cycles = duration // cycle
    assert len(r.samples) == (duration - WARMUP) // cycle + 1
    assert r.joins >= 2 * CLIENTS * (cycles - 1) and r.roams >= CLIENTS * (cycles - 1)
    assert r.revokes >= 2 * CLIENTS * (cycles - 1) and r.expiries >= CLIENTS * (cycles - 1)
    assert r.replies >= 3 * CLIENTS * (cycles - 1), "the clients' traffic went through"
    assert growth_ok(r, PER_CLIENT, RELATIVE, OUTBOX), soak_summary(r)


def test_a_leak_fails_the_bound() -> None:
    """The bound is not vacuous: samples growing by a fixed amount every cycle fail it."""
    from sim.soak import SoakResult

    flat = SoakResult(10, samples=[(i, 1_000_000 + (i % 2) * 20_000, 0) for i in range(6)])
    assert growth_ok(flat, PER_CLIENT, RELATIVE)
    leak = SoakResult(10, samples=[(i, 1_000_000 + i * 40_000, 0) for i in range(6)])
    assert not growth_ok(leak, PER_CLIENT, RELATIVE)
    assert not growth_ok(SoakResult(10, samples=[(0, 1, 1)]), PER_CLIENT, RELATIVE)
