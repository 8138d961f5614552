"""The independent npm ``phoenix`` client (1.8.16) against our dev portal over a real WebSocket.

Proves our server-side Phoenix framing (both serializers), joins, pushes, replies and heartbeats are what
Phoenix's own client expects. The npm packages are installed by ``make interop-deps`` (run by
``make test``) into ``tests/interop/node_modules``; when they are missing the fixture installs them with
the same command, so the test never skips.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from devio.portal import DevPortalServer
from devportal import DevPortal, load_config

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
CONFIG = HERE.parent / "io" / "devportal_test.toml"
CLIENT = "3abd725a-733b-4801-ac16-72f26cd98a24"
RESOURCE = "c7793628-8579-465b-83e3-1a5d4af4db3b"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    nm = HERE / "node_modules"
    if not (nm / "phoenix" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed for the interop test (install nodejs/npm)"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300)
    version = json.loads((nm / "phoenix" / "package.json").read_text())["version"]
    assert version == "1.8.16"
    return nm


@pytest.fixture
async def server() -> AsyncIterator[tuple[DevPortalServer, int]]:
    srv = DevPortalServer(DevPortal(load_config(CONFIG.read_text()), 1_700_000_000))
    port = await srv.start("127.0.0.1", 0)
    try:
        yield srv, port
    finally:
        await srv.stop()


@pytest.mark.parametrize("vsn", ["1", "2"])
async def test_phoenix_js_client(node_modules: Path, server: tuple[DevPortalServer, int], vsn: str) -> None:
    srv, port = server
    node = shutil.which("node")
    assert node is not None
    with anyio.fail_after(30):
        proc = await anyio.run_process(
            [node, str(HERE / "phoenix_client.mjs"), str(port), vsn, CLIENT, RESOURCE], check=False
        )
    out = proc.stdout.decode().strip().splitlines()
    assert out, proc.stderr.decode()
    summary = json.loads(out[-1])
    assert proc.returncode == 0, (summary, proc.stderr.decode())
    assert summary["joined"] is True
    rec = srv.portal.gateways[f"js-{vsn}"]
    assert summary["init"] == {"ipv4": str(rec.ipv4), "relays": 2}
    assert summary["admin"] == 200 and summary["authorize_flow"] is True
    assert summary["replies"]["valid_ref"] == {"status": "ok", "response": {}}
    assert summary["replies"]["forged_ref"] == {"status": "error", "response": {"reason": "invalid_ref"}}
    assert summary["replies"]["unknown"] == {"status": "error", "response": {"reason": "unknown_message"}}
    assert summary["heartbeats"] >= 2
    assert summary["left"] is True
    # What the portal saw, in order.
    assert [(r.event, r.reply) for r in srv.portal.received] == [
        ("flow_authorized", "ok"),
        ("flow_authorized", "{'reason': 'invalid_ref'}"),
        ("no_such_event", "{'reason': 'unknown_message'}"),
    ]
