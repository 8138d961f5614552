"""Logging while fuzzing: every record is formatted (a log call with a bad format string or an argument
whose ``repr`` raises is a bug the fuzzer should see) and nothing is printed (millions of inputs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class FormatOnly(logging.Handler):
    """Formats each record and drops it; an exception while formatting escapes to the log call."""

    def emit(self, record: logging.LogRecord) -> None:
        record.getMessage()


def install() -> None:
    """Route every logger to :class:`FormatOnly` at DEBUG (debug lines take code paths too)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(FormatOnly())
    root.setLevel(logging.DEBUG)


@contextmanager
def installed() -> Iterator[None]:
    """:func:`install` for the duration of a block (the tests' in-process replay), then restore."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    disabled = logging.root.manager.disable
    logging.disable(logging.NOTSET)
    install()
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
        logging.disable(disabled)
