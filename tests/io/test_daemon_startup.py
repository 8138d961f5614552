"""Daemon start-up without root: the permission check, start-up failures as one line and exit 1, the key
kept out of the logs, the User-Agent's OS identity. (The full run is tests/system/test_daemon.py.)"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import anyio
import pytest

from gateway_io import cli, daemon
from gateway_io.config import load
from gateway_io.logging import setup_logging


def test_has_net_admin_reads_the_effective_capability_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli.os, "getuid", lambda: 1000)
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n")
    assert cli.has_net_admin(status)
    status.write_text("Name:\tx\nCapEff:\t0000000000000400\n")  # CAP_NET_BIND_SERVICE only
    assert not cli.has_net_admin(status)
    assert not cli.has_net_admin(tmp_path / "missing")
    monkeypatch.setattr(cli.os, "getuid", lambda: 0)
    assert cli.has_net_admin(tmp_path / "missing")


def test_permission_check_fails_with_exit_1_unless_no_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "has_net_admin", lambda: False)
    monkeypatch.setenv("FIREZONE_ID", "x")
    assert cli.main(["tok"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CAP_NET_ADMIN" in err[0] and "--no-check" in err[0]


def test_missing_resolv_conf_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = load(
        ["secret-token-123", "--no-check", "--no-inc-buf"], {"FIREZONE_ID": "x"}, id_file=tmp_path / "id"
    )
    out = io.StringIO()
    setup_logging("human", "info", secrets=[config.token], stream=out)
    try:
        paths = daemon.Paths(resolv_conf=tmp_path / "resolv.conf")
        code = anyio.run(lambda: daemon.run(config, paths=paths))
    finally:
        logging.getLogger().handlers.clear()
    assert code == 1
    errors = [line for line in out.getvalue().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "resolv.conf" in errors[0], out.getvalue()
    assert "secret-token-123" not in out.getvalue()


def test_private_key_forms_are_redacted() -> None:
    out = io.StringIO()
    redactor = setup_logging("human", "info", stream=out)
    try:
        key = daemon.new_private_key()
        daemon.register_key(redactor, key)
        log = logging.getLogger("test.daemon")
        log.info("hex %s b64 %s", key.hex(), base64.b64encode(key).decode())
    finally:
        logging.getLogger().handlers.clear()
    text = out.getvalue()
    assert key.hex() not in text and base64.b64encode(key).decode() not in text
    assert len(key) == 32


def test_os_identity_from_os_release(tmp_path: Path) -> None:
    f = tmp_path / "os-release"
    f.write_text('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')
    assert daemon.os_identity(f) == ("Debian", "12")
    assert daemon.os_identity(tmp_path / "none") == ("Linux", "unknown")
    ua = daemon.gateway_user_agent()
    assert " gateway/" in ua
