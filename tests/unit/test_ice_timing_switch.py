"""A timing switch never fails a pair retroactively (decision 0169).

The scenario of the stateful test's nightly find (``idle_pair_not_failed_by_the_timing_switch`` in
``tests/sim/stateful_regressions.json``) on two bare agents: a connected host pair loses its path, goes
idle with a full tail of unanswered checks (the idle timing keeps it), the path heals, and traffic
switches the agents back to the default timing. str0m would remove the pair at the switch (12 unanswered
attempts, the last more than 1.5 s ago); ours checks it at once and keeps it when the check is answered,
or removes it one last-resend window (1.5 s) later when the path is still dead.
"""

from __future__ import annotations

from gateway_core.clock import Instant, millis, secs
from gateway_core.ice.agent import IceAgent, IceState
from gateway_core.ice.pair import DEFAULT_TIMING, IDLE_TIMING, Pair
from tests.unit.test_ice_agent import Link, host_to_host

CUT_AT = secs(5)
RESUME_AT = secs(40)
"""Traffic comes back after the path healed and before the idle timing's next check (25 s after the last
unanswered one, about 20 s in)."""


def _connected() -> tuple[IceAgent, IceAgent, Link]:
    gw, cl, link = host_to_host()
    link.run_until(CUT_AT)
    assert gw.state is IceState.COMPLETED and cl.state is IceState.COMPLETED
    return gw, cl, link


def _full_unanswered_tail(link: Link) -> Instant:
    """Cut the path and run until both pairs hold 12 unanswered checks (not yet failed): the moment."""
    link.blocked = True
    t = CUT_AT
    while not all(
        len(a.pairs) == 1 and all(x.answered_at is None for x in _pair(a).attempts)
        for a in (link.gw, link.cl)
    ):
        t = Instant(t + millis(10))
        link.run_until(t)
    for a in (link.gw, link.cl):
        dead_at = _pair(a).fail_at(DEFAULT_TIMING)
        assert dead_at is not None and t < dead_at
    return t


def _idle_through_an_outage(link: Link, *, heal: bool) -> None:
    idle_at = _full_unanswered_tail(link)
    for a in (link.gw, link.cl):
        a.set_timing(IDLE_TIMING, idle_at)
    link.blocked = not heal
    link.run_until(RESUME_AT)


def _pair(a: IceAgent) -> Pair:
    (p,) = a.pairs
    return p


def test_a_healed_pair_survives_the_switch_back_to_default() -> None:
    gw, cl, link = _connected()
    _idle_through_an_outage(link, heal=True)
    before = len(link.checks("gw"))
    for a in (gw, cl):
        # str0m's rule alone would fail the pair 1.5 s after its last check, long before now.
        assert _pair(a).attempts[-1].sent_at + millis(1500) < RESUME_AT
        a.set_timing(DEFAULT_TIMING, Instant(RESUME_AT))
        assert _pair(a).fail_at(DEFAULT_TIMING) == RESUME_AT + millis(1500)
    link.run_until(RESUME_AT + secs(5))
    assert len(gw.pairs) == 1 and len(cl.pairs) == 1
    assert link.checks("gw")[before][0] == RESUME_AT  # the overdue check left at the switch
    assert _pair(gw).attempts[-1].answered_at is not None
    assert _pair(gw).fail_at(DEFAULT_TIMING) is None
    assert gw.state is not IceState.DISCONNECTED and cl.state is not IceState.DISCONNECTED


def test_a_dead_pair_fails_one_window_after_the_switch() -> None:
    gw, _, link = _connected()
    _idle_through_an_outage(link, heal=False)
    gw.set_timing(DEFAULT_TIMING, Instant(RESUME_AT))
    link.run_until(RESUME_AT + millis(1499))
    assert len(gw.pairs) == 1
    link.run_until(RESUME_AT + millis(1500))
    assert gw.pairs == [] and gw.state is IceState.DISCONNECTED


def test_a_pair_failed_under_the_old_timing_gets_no_floor() -> None:
    gw, _, link = _connected()
    _full_unanswered_tail(link)
    p = _pair(gw)
    dead_at = p.fail_at(DEFAULT_TIMING)
    assert dead_at is not None
    # The switch comes at the pair's failure time, before a timeout removed it: str0m's rule for the idle
    # timing applies unchanged (it keeps the pair, as str0m does), without the floor of ``now + 25 s``.
    gw.set_timing(IDLE_TIMING, Instant(dead_at))
    assert p.fail_at(IDLE_TIMING) == p.attempts[-1].sent_at + secs(25) < dead_at + secs(25)
