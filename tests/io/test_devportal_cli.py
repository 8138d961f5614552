"""``firezone-dev-portal`` as a process: starts, serves the admin API, refuses bad upgrades, stops."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest

from gateway_core.clock import millis, secs
from gateway_core.entropy import SeededEntropy
from gateway_core.portal.channel import (
    ChannelConfig,
    ChannelState,
    PortalChannel,
    PortalJoined,
    PortalMessageReceived,
)
from gateway_core.portal.login import login_url, user_agent
from gateway_core.portal.messages import Init
from tests.io.portal_driver import PortalDriver

CONFIG = Path(__file__).parent / "devportal_test.toml"


def test_cli_serves_admin_api_and_refuses_bad_token(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devio.portal", "--config", str(CONFIG), "--listen", "127.0.0.1:0"],
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
        [sys.executable, "-m", "devio.portal", "--config", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "secret" in r.stderr


@pytest.mark.system
def test_gateway_channel_against_the_dev_portal_process() -> None:
    """Our channel, driven by the gateway_io WebSocket client, against a separately
    started ``firezone-dev-portal``: connects, joins, receives ``init``, keeps heartbeating."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devio.portal", "--config", str(CONFIG), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        url = login_url(f"ws://127.0.0.1:{port}", "dev-token", "gw-system", "gw-system", bytes(range(32)))
        cfg = ChannelConfig(heartbeat_interval=millis(300), heartbeat_timeout=secs(5))
        ch = PortalChannel(url, user_agent("Debian", "12", "x86_64", None), SeededEntropy(7), cfg)
        drv = PortalDriver(ch)

        async def scenario() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drv.run)
                with anyio.fail_after(20):
                    while ch.stats.counters["portal.heartbeats"] < 5:
                        await anyio.sleep(0.05)
                assert ch.state is ChannelState.JOINED and ch.conn == 1
                drv.call(ch.close)
                with anyio.fail_after(10):
                    await drv.done.wait()

        anyio.run(scenario)
        inits = [
            e for e in drv.events if isinstance(e, PortalMessageReceived) and isinstance(e.message, Init)
        ]
        assert len(inits) == 1 and isinstance(drv.events[0], PortalJoined)
        assert ch.stats.total_drops == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/status", timeout=5) as r:
            status = json.loads(r.read())
        assert [g["name"] for g in status["gateways"]] == ["gw-system"]
        assert status["gateways"][0]["version"] == "1.4.18"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_admin_token_required_when_configured(tmp_path: Path) -> None:
    cfg = tmp_path / "portal.toml"
    cfg.write_text('admin_token = "sesame"\n' + CONFIG.read_text())
    proc = subprocess.Popen(
        [sys.executable, "-m", "devio.portal", "--config", str(cfg), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/status", timeout=5)
        assert e.value.code == 403
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/admin/status?admin_token=sesame", timeout=5
        ) as r:
            assert json.loads(r.read())["gateways"] == []
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/frobnicate?admin_token=sesame", timeout=5)
        assert e.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=10)
