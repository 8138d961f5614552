"""A pytest plugin: every ``DropReason`` must be produced by some test (no drop path goes untested).

It records each reason passed to :meth:`gateway_core.stats.Stats.drop` while the tests run in this
process. When the whole suite ran (no selection by path, ``-k`` or ``-m``) and passed, a reason that no
test produced fails the run: either the code that should drop for it is untested, or the reason is dead
and should go. Drops counted inside subprocesses (the daemon's system tests) are not seen, so each reason
needs at least one in-process test.

Under pytest-xdist every worker records its own reasons and hands them to the controller when it finishes
(``workeroutput``); the controller checks the union. ``make test`` runs the suite in two sessions (the
parallel one and the serial group, ``docs/testing.md``): with ``FZ_DROP_REASONS_FILE`` set, each session
adds what it saw to that file and counts what the file already holds, and ``FZ_DROP_COVERAGE_CHECK=1``
asks for the check in a session that selected tests by marker (the last one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway_core.errors import DropReason
from gateway_core.stats import Stats

_seen: set[DropReason] = set()
_original: Callable[..., None] | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _original
    if _original is not None:
        return
    _original = Stats.drop
    original = _original

    def recording_drop(self: Stats, reason: DropReason, n: int = 1) -> None:
        _seen.add(reason)
        original(self, reason, n)

    Stats.drop = recording_drop  # type: ignore[method-assign]


WORKER_KEY = "fz_drop_reasons"
FILE_ENV = "FZ_DROP_REASONS_FILE"
CHECK_ENV = "FZ_DROP_COVERAGE_CHECK"


def _whole_suite(config: pytest.Config) -> bool:
    if os.environ.get(CHECK_ENV) == "1":
        return True
    opt: Any = config.option
    return config.args_source == pytest.Config.ArgsSource.TESTPATHS and not any(
        getattr(opt, name, None) for name in ("keyword", "markexpr", "lf", "deselect")
    )


def _record(values: list[str]) -> None:
    for v in values:
        _seen.add(DropReason(v))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: a worker finished; take the reasons it saw."""
    _record(getattr(node, "workeroutput", {}).get(WORKER_KEY, []))


def _merge_file() -> None:
    path = os.environ.get(FILE_ENV)
    if not path:
        return
    p = Path(path)
    if p.exists():
        _record(p.read_text(encoding="ascii").split())
    p.write_text("".join(f"{r.value}\n" for r in sorted(_seen, key=lambda r: r.value)), encoding="ascii")


def missing_reasons() -> list[str]:
    return sorted(r.value for r in DropReason if r not in _seen)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller checks
        workeroutput[WORKER_KEY] = sorted(r.value for r in _seen)
        return
    _merge_file()
    if exitstatus != 0 or not _whole_suite(session.config):
        return
    missing = missing_reasons()
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "drop-reason coverage: no test produced " + ", ".join(missing), red=True, bold=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
