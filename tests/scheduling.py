"""A pytest plugin: how the suite is spread over the cores (pytest-xdist) and what runs alone.

``make test`` runs the suite in two sessions (``docs/testing.md``, "Running the tests in parallel"):

1. ``pytest -n 2 --dist loadfile -m "not serial"``: everything else, on both cores;
2. ``pytest -m serial``: the :data:`SERIAL` modules alone, one test at a time, nothing else on the machine
   from this suite. They flood a real gateway at full rate and assert thresholds on what gets through
   (ping loss, answers, CPU per datagram); a second pytest worker beside them would take the CPU the
   thresholds were set for.

This plugin marks those modules ``serial``. The parallel session distributes whole files
(``--dist loadfile``), so a module that builds an expensive module-scoped fixture (a whole namespace
topology, built wheels, the npm peer) builds it once, on one worker. (The plugin also gives the
:data:`GROUPED` modules an ``xdist_group`` mark for ``--dist loadgroup``, but with pytest 9.2 and
pytest-xdist 3.8 that mode spreads a group over the workers anyway: xdist writes the group into
``item._nodeid``, which pytest 9 no longer reads. ``loadfile`` took the parallel session from 3 min 57 s
to 3 min 24 s on this machine.) It also moves the
longest items first (:data:`LONG_FIRST`), so a worker does not pick one up at the end while the other
idles, and turns Hypothesis' per-example deadline off (below). Nothing here changes what a test
asserts; without xdist, ``-n`` or ``-m``, the groups and the order are harmless and ``pytest -q`` still
runs everything in one process.

The namespace tests are safe side by side: every namespace, veth and TUN name carries the process id
and a random suffix (``tests/system/io_netns.py``, ``wg_harness.py``, ``e2e/topology.py``), every
daemon and peer listens inside its own namespace, and scratch files live in per-test temporary
directories.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("fz-no-deadline", deadline=None)
settings.load_profile("fz-no-deadline")
"""Hypothesis' per-example deadline (200 ms by default) is a timing assertion in a pass/fail test: with two
workers on a shared machine an example can wait that long for a core (seen: ``DeadlineExceeded`` in a
policy property test at load 15). Timings belong in ``bench/``; tests that set their own settings keep
them."""

SERIAL = frozenset({"tests/system/test_floods.py", "tests/system/test_dns_fairness.py"})
"""Modules that run alone (session 2): full-rate floods with measured thresholds."""

GROUPED = frozenset(
    {
        "tests/system/test_e2e.py",
        "tests/system/test_metrics.py",
        "tests/system/test_underlay_guard.py",
        "tests/system/test_turn_coturn.py",
        "tests/interop/test_phoenix_js.py",
        "tests/test_wheels.py",
    }
)
"""Modules with a module-scoped fixture worth building once (a namespace topology, coturn, the npm peer,
the wheels): each runs wholly on one worker."""

LONG_FIRST = (
    "tests/sim/test_stateful.py::test_gateway_world_against_the_reference_model",
    "tests/fuzz/test_fuzz.py::test_short_atheris_run_of_every_target",
    "tests/sim/test_soak.py",
    "tests/system/test_e2e.py",
    "tests/unit/test_node_fuzz.py",
    "tests/system/test_underlay_guard.py",
)
"""Items (by node-id prefix) that take the longest, in the order a worker should start them."""


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _rank(item: pytest.Item) -> int:
    for i, prefix in enumerate(LONG_FIRST):
        if item.nodeid.startswith(prefix):
            return i
    return len(LONG_FIRST)


OWN_SCOPE = ("tests/sim/test_stateful.py::test_gateway_world_against_the_reference_model[",)
"""Items that are their own work unit under ``--dist loadfile`` (not their file's): the ``ci`` shards of
the stateful test are independent CPU-bound runs of about a minute each, so the two workers share them."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` with :data:`OWN_SCOPE` items split off (xdist's own file scheduler, one rule
    changed); any other mode is xdist's."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileSplitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(OWN_SCOPE):
                return nodeid
            return nodeid.split("::", 1)[0]

    return LoadFileSplitScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "serial: runs alone in make test's second session (tests/scheduling.py)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = _module(item)
        if module in SERIAL:
            item.add_marker(pytest.mark.serial)
        elif module in GROUPED:
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=_rank)  # stable: the rest keeps its order
