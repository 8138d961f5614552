"""Logging for the daemon: ``RUST_LOG``-like filters, human or JSON lines on stdout, secrets redacted
(as Firezone's ``rust/logging/src/lib.rs``).

Filter syntax (a subset of Rust's ``tracing_subscriber::EnvFilter``): comma-separated directives, each
``LEVEL`` (the default for everything) or ``TARGET=LEVEL`` (that logger and its children; ``::`` may be
used for ``.``), or a bare ``TARGET`` (= ``trace``). Levels: ``off``, ``error``, ``warn``, ``info``,
``debug``, ``trace`` (case-insensitive). Invalid directives are skipped with a warning, as Rust does. The
most specific target wins (Python's logger hierarchy does exactly that once the levels are set).

Redaction: :class:`RedactionFilter` sits on the handler, renders each record's message (and exception
text) and replaces every registered secret value (the portal token, keys) and every value of a
secret-looking field (``token=...`` in URLs, ``"token": "..."``, ``Authorization:`` headers,
``private_key``/``preshared_key``/``secret``/``password`` fields) with ``<redacted>``, so a secret never
reaches a log line whichever logger wrote it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

TRACE = 5
"""Python level for Rust's ``trace`` (below ``DEBUG``)."""

OFF = logging.CRITICAL + 10
"""Level that lets nothing through (``off``)."""

DEFAULT_FILTER = "info"
"""``RUST_LOG`` when unset (Firezone's default, ``rust/logging/src/lib.rs:49``)."""

NOISY_LOGGERS = {"asyncio": logging.WARNING, "websockets": logging.WARNING, "pyroute2": logging.WARNING}
"""Libraries pre-silenced unless a directive names them (as Firezone silences noisy crates,
``rust/logging/src/lib.rs:118-133``)."""

REDACTED = "<redacted>"

MIN_SECRET_LEN = 8
"""Registered secrets shorter than this are not redacted by value (they would blank out common words);
tokens and base64 keys are far longer."""

LEVELS = {
    "off": OFF,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

_SECRET_FIELDS = r"(?:token|secret|password|passwd|private_key|preshared_key|psk|api_key)"
_PATTERNS = (
    # token=VALUE in URLs and key=value text
    re.compile(rf"(?i)(\b{_SECRET_FIELDS}=)[^&\s\"',;]+"),
    # "token": "VALUE" (JSON, Python reprs) and 'token': 'VALUE'
    re.compile(rf"(?i)([\"']{_SECRET_FIELDS}[\"']\s*:\s*[\"'])[^\"']*"),
    # Authorization / Cookie headers
    re.compile(r"(?i)(\b(?:authorization|proxy-authorization|cookie|x-authorization)\s*[:=]\s*)[^\r\n,]+"),
)


@dataclass(frozen=True, slots=True)
class LogFilter:
    """A parsed ``RUST_LOG``: the default level and levels per logger name."""

    default: int = logging.INFO
    targets: dict[str, int] = field(default_factory=dict)


def parse_filter(spec: str) -> tuple[LogFilter, list[str]]:
    """Parse a ``RUST_LOG`` value; returns the filter and one warning per directive that was skipped."""
    default = logging.INFO
    targets: dict[str, int] = {}
    warnings: list[str] = []
    for raw in spec.split(","):
        directive = raw.strip()
        if not directive:
            continue
        target, sep, level_text = directive.partition("=")
        target = target.strip().replace("::", ".")
        if "[" in target or "{" in target:
            warnings.append(f"ignoring {directive!r}: span filters are not supported")
            continue
        if not sep:
            level = LEVELS.get(target.lower())
            if level is not None:
                default = level
            elif target.isidentifier() or all(p.isidentifier() for p in target.split(".")):
                targets[target] = TRACE
            else:
                warnings.append(f"ignoring {directive!r}: not a level or a target")
            continue
        level = LEVELS.get(level_text.strip().lower())
        if level is None or not target:
            warnings.append(f"ignoring {directive!r}: expected TARGET=LEVEL with LEVEL in {sorted(LEVELS)}")
            continue
        targets[target] = level
    return LogFilter(default, targets), warnings


class Redactor:
    """Replaces registered secret values and secret-looking fields with :data:`REDACTED`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for s in secrets:
            self.add_secret(s)

    def add_secret(self, value: str | bytes | None) -> None:
        if value is None:
            return
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if len(text) >= MIN_SECRET_LEN:
            self._secrets.add(text)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


class RedactionFilter(logging.Filter):
    """Handler filter: renders the record's message and exception text with secrets redacted."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = self.redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


_LEVEL_NAMES = {TRACE: "TRACE", logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARN"}
_STANDARD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _level_name(record: logging.LogRecord) -> str:
    return _LEVEL_NAMES.get(record.levelno, record.levelname)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    """Fields passed with ``extra=`` (structured records such as the flow log's)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class HumanFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.000000Z  INFO gateway_io.portal: message key=value ...`` (like tracing's
    default: fields passed with ``extra=`` follow the message)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {_level_name(record):>5} {record.name}: {record.getMessage()}"
        for key, value in _extras(record).items():
            line += f" {key}={value}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed with ``extra=`` are flattened into it."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "timestamp": _timestamp(record),
            "level": _level_name(record),
            "target": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)


def apply_filter(log_filter: LogFilter, root: logging.Logger | None = None) -> None:
    """Set logger levels from ``log_filter`` (noisy libraries quieted unless named)."""
    root = logging.getLogger() if root is None else root
    root.setLevel(log_filter.default)
    for name, level in NOISY_LOGGERS.items():
        if name not in log_filter.targets:
            logging.getLogger(name).setLevel(max(level, log_filter.default))
    for name, level in log_filter.targets.items():
        logging.getLogger(name).setLevel(level)


def setup_logging(
    log_format: str = "human",
    filter_spec: str = DEFAULT_FILTER,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Install one stdout handler with the format, the filter and redaction; returns the redactor
    (register more secrets with :meth:`Redactor.add_secret` as they become known)."""
    logging.addLevelName(TRACE, "TRACE")
    if log_format not in ("human", "json"):
        raise ValueError(f"log format must be human or json, not {log_format!r}")
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    handler.addFilter(RedactionFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    log_filter, warnings = parse_filter(filter_spec)
    apply_filter(log_filter, root)
    for w in warnings:
        logging.getLogger(__name__).warning("RUST_LOG: %s", w)
    return redactor
