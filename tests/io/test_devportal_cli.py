"""``firezone-dev-portal`` as a process: starts, serves the admin API, refuses bad upgrades, stops."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = Path(__file__).parent / "devportal_test.toml"


def test_cli_serves_admin_api_and_refuses_bad_token(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_io.devportal", "--config", str(CONFIG), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("firezone-dev-portal: listening on ws://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/status", timeout=5) as r:
            status = json.loads(r.read())
        assert status == {"flows": [], "gateways": [], "received": []}
        try:
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/gateway/websocket?token=bad&external_id=x&public_key=y", timeout=5
            )
            raise AssertionError("expected HTTP 401")
        except urllib.error.HTTPError as e:
            assert e.code == 401 and e.read().decode().strip() == "Invalid token"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_rejects_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('token = "t"\n')
    r = subprocess.run(
        [sys.executable, "-m", "gateway_io.devportal", "--config", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "secret" in r.stderr
