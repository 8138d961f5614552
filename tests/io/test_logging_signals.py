"""Logging (RUST_LOG filters, human/JSON lines, redaction of secrets) and SIGINT/SIGTERM handling (a real
subprocess is sent the signal)."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_io.logging import (
    OFF,
    REDACTED,
    TRACE,
    LogFilter,
    Redactor,
    parse_filter,
    setup_logging,
)
from gateway_io.signals import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from tests.io.logging_state import restored_logging

REPO = Path(__file__).resolve().parents[2]
TOKEN = "SFMyNTY.g2gDaAJtAAAAJDUxYWI0ZTYwLTVmNTAtNDFkOC1iZjg5.secret-part-xyz"
PRIVATE_KEY = "kEVsqSFiQ1gAxwhH7S8GB6YKsWkuIbeJnAmQ9e6D2HM="


@pytest.fixture
def restore_logging() -> Iterator[None]:
    with restored_logging(
        "gateway_io", "gateway_core", "gateway_core.portal", "asyncio", "websockets", "pyroute2", "a.b"
    ):
        yield


def test_parse_filter() -> None:
    assert parse_filter("info") == (LogFilter(logging.INFO, {}), [])
    f, warnings = parse_filter("warn,gateway_io=debug, gateway_core::portal=trace ,a.b=off")
    assert warnings == []
    assert f.default == logging.WARNING
    assert f.targets == {"gateway_io": logging.DEBUG, "gateway_core.portal": TRACE, "a.b": OFF}
    f, warnings = parse_filter("DEBUG,gateway_io")
    assert f.default == logging.DEBUG and f.targets == {"gateway_io": TRACE}
    f, warnings = parse_filter("gateway_io=loud,foo[span]=debug,=info,info")
    assert f == LogFilter(logging.INFO, {})
    assert len(warnings) == 3


def test_filter_levels_apply_per_target(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("human", "warn,gateway_io=debug", stream=out)
    logging.getLogger("gateway_io.udp").debug("io debug shown")
    logging.getLogger("gateway_core.node").info("core info hidden")
    logging.getLogger("gateway_core.node").warning("core warning shown")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "DEBUG gateway_io.udp: io debug shown" in lines[0]
    assert " WARN gateway_core.node: core warning shown" in lines[1]
    assert lines[0][:4].isdigit() and "T" in lines[0].split()[0]  # ISO timestamp first


def test_json_format_flattens_fields(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    logging.getLogger("gateway_io.portal").info("connected to %s", "portal", extra={"attempt": 3})
    doc = json.loads(out.getvalue())
    assert doc["level"] == "INFO" and doc["target"] == "gateway_io.portal"
    assert doc["message"] == "connected to portal" and doc["attempt"] == 3
    assert doc["timestamp"].endswith("Z")
    with pytest.raises(ValueError):
        setup_logging("xml", "info", stream=out)


def test_redaction_of_registered_secrets_and_secret_fields(restore_logging: None) -> None:
    for fmt in ("human", "json"):
        out = io.StringIO()
        redactor = setup_logging(fmt, "debug", secrets=[TOKEN], stream=out)
        redactor.add_secret(PRIVATE_KEY)
        log = logging.getLogger("gateway_io.portal")
        log.info("connecting to wss://api.example.com/gateway/websocket?token=%s&external_id=abc", TOKEN)
        log.debug("key is %s", PRIVATE_KEY)
        log.info("frame %s", json.dumps({"token": "another-secret-token-value", "name": "gw"}))
        log.info("headers: Authorization: Bearer abc.def.ghi")
        log.info("dict %r", {"private_key": "0123456789abcdef", "public_key": "pub"})
        try:
            raise RuntimeError(f"failed with token {TOKEN}")
        except RuntimeError:
            log.exception("boom")
        text = out.getvalue()
        for secret in (TOKEN, PRIVATE_KEY, "another-secret-token-value", "abc.def.ghi", "0123456789abcdef"):
            assert secret not in text, (fmt, secret, text)
        assert text.count(REDACTED) >= 6
        assert "external_id=abc" in text and "pub" in text and "gw" in text  # the rest stays readable


def test_short_values_are_not_treated_as_secrets() -> None:
    r = Redactor(["abc", ""])
    assert r.redact("abc is fine") == "abc is fine"
    r.add_secret(b"bytes-secret-value")
    assert r.redact("x bytes-secret-value y") == f"x {REDACTED} y"


CHILD = """
import sys, anyio
from gateway_io.signals import EXIT_OK, shutdown_requests

async def main() -> int:
    async with shutdown_requests() as requests:
        print("ready", flush=True)
        async for request in requests:
            print(type(request).__name__, flush=True)
            return EXIT_OK
    return 1

sys.exit(anyio.run(main))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_becomes_a_shutdown_request(signum: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signum)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    assert child.returncode == EXIT_OK, err
    assert out.strip() == "ShutdownRequested"


def test_exit_codes() -> None:
    assert (EXIT_OK, EXIT_FAILURE, EXIT_USAGE) == (0, 1, 2)
