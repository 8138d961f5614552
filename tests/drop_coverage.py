"""A pytest plugin: every ``DropReason`` must be produced by some test (no drop path goes untested).

It records each reason passed to :meth:`gateway_core.stats.Stats.drop` while the tests run in this
process. When the whole suite ran (no selection by path, ``-k`` or ``-m``) and passed, a reason that no
test produced fails the run: either the code that should drop for it is untested, or the reason is dead
and should go. Drops counted inside subprocesses (the daemon's system tests) are not seen, so each reason
needs at least one in-process test.
"""

from __future__ import annotations

from collections.abc import Callable
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


def _whole_suite(config: pytest.Config) -> bool:
    opt: Any = config.option
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not any(getattr(opt, name, None) for name in ("keyword", "markexpr", "lf", "deselect"))
    )


def missing_reasons() -> list[str]:
    return sorted(r.value for r in DropReason if r not in _seen)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
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
