"""System tests: DNS server binds retried until the address appears, inside network namespaces the test
creates (root required; CI runs as root, never skipped).

A child process (:mod:`tests.io.dns_netns_child`) runs a :class:`DnsServerSet` inside the namespace and
prints the inputs it reports to the core. The test watches them, changes the namespace's addresses with
``ip``, and queries the servers with ``dig`` from inside the namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest

pytestmark = [pytest.mark.system, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]
WAIT = 20


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=WAIT).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"fzdns-{os.getpid()}-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=WAIT)


class Child:
    """The DnsServerSet process and the JSON lines it printed so far."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.events: list[dict[str, object]] = []
        self._buf = b""

    async def wait_for(self, event: str, address: str, count: int = 1) -> list[dict[str, object]]:
        """Read lines until ``count`` events of kind ``event`` for ``address`` were seen."""
        assert self.process.stdout is not None
        with anyio.fail_after(WAIT):
            while True:
                hits = [e for e in self.events if e["event"] == event and e["address"] == address]
                if len(hits) >= count:
                    return hits
                while b"\n" not in self._buf:
                    self._buf += await self.process.stdout.receive()
                line, _, self._buf = self._buf.partition(b"\n")
                self.events.append(json.loads(line))


@pytest.fixture
async def child(netns: str, request: pytest.FixtureRequest) -> AsyncIterator[Child]:
    addresses, ipv6 = request.param
    if not ipv6:
        set_ipv6(netns, enabled=False)
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.io.dns_netns_child", *addresses]
    process = await anyio.open_process(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield Child(process)
    finally:
        assert process.stdin is not None
        await process.stdin.aclose()  # the child's signal to stop
        with anyio.move_on_after(WAIT):
            await process.wait()
        if process.returncode is None:
            process.kill()  # only our own child, by its PID
            await process.wait()
    assert process.returncode == 0


async def dig(netns: str, server: str, *args: str) -> str:
    argv = ["ip", "netns", "exec", netns, "dig", f"@{server}", "-p", "53535", "+tries=1", "+time=5", *args]
    with anyio.fail_after(WAIT):
        result = await anyio.run_process(argv, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    return result.stdout.decode()


def set_ipv6(netns: str, enabled: bool) -> None:
    """Disable or enable IPv6 inside ``netns`` (``/proc/sys/net`` is per namespace; no procps needed)."""
    value = "0" if enabled else "1"
    script = f"for i in all default lo; do echo {value} > /proc/sys/net/ipv6/conf/$i/disable_ipv6; done"
    sh("ip", "netns", "exec", netns, "sh", "-c", script)


V4 = "10.99.0.1"
V6 = "fd00:99::1"


@pytest.mark.parametrize(
    "child", [([f"{V4}:53535", f"[{V6}]:53535", "127.0.0.1:53535"], True)], indirect=True
)
async def test_bind_retried_until_the_address_appears(netns: str, child: Child) -> None:
    await child.wait_for("bound", "127.0.0.1:53535")
    # Neither tunnel address exists yet: both fail, again and again, each on its own schedule.
    failed_v4 = await child.wait_for("bind_failed", f"{V4}:53535", count=3)
    await child.wait_for("bind_failed", f"[{V6}]:53535", count=3)
    assert "Cannot assign requested address" in str(failed_v4[0]["error"])
    out = await dig(netns, "127.0.0.1", "+short", "a.fz.test", "TXT")
    assert out.strip() == '"udp 127.0.0.1 53535"'

    sh("ip", "-n", netns, "addr", "add", f"{V4}/32", "dev", "lo")
    await child.wait_for("bound", f"{V4}:53535")
    assert (await dig(netns, V4, "+short", "b.fz.test", "TXT")).strip() == f'"udp {V4} 53535"'
    assert (await dig(netns, V4, "+short", "+tcp", "c.fz.test", "TXT")).strip() == f'"tcp {V4} 53535"'
    assert not [e for e in child.events if e["event"] == "bound" and e["address"] == f"[{V6}]:53535"]

    sh("ip", "-n", netns, "addr", "add", f"{V6}/128", "dev", "lo", "nodad")
    await child.wait_for("bound", f"[{V6}]:53535")
    out = await dig(netns, V6, "+tcp", "+keepopen", "d.fz.test", "TXT", "e.fz.test", "SRV")
    assert f'"tcp {V6} 53535"' in out and "10 5 8080 www.fz.test." in out
    # Each address was bound exactly once: nothing already bound was ever re-bound.
    bound = sorted(str(e["address"]) for e in child.events if e["event"] == "bound")
    assert bound == sorted(["127.0.0.1:53535", f"{V4}:53535", f"[{V6}]:53535"])


@pytest.mark.parametrize("child", [(["127.0.0.1:53535", "[::1]:53535"], False)], indirect=True)
async def test_ipv6_disabled_does_not_stop_ipv4_and_recovers(netns: str, child: Child) -> None:
    await child.wait_for("bound", "127.0.0.1:53535")
    failed = await child.wait_for("bind_failed", "[::1]:53535", count=3)
    assert "Cannot assign requested address" in str(failed[0]["error"])
    assert (await dig(netns, "127.0.0.1", "+short", "v4.fz.test", "TXT")).strip() == '"udp 127.0.0.1 53535"'
    assert child.process.returncode is None  # still running: a failed bind is not fatal

    set_ipv6(netns, enabled=True)  # lo gets ::1 back
    await child.wait_for("bound", "[::1]:53535")
    assert (await dig(netns, "::1", "+short", "+tcp", "v6.fz.test", "TXT")).strip() == '"tcp ::1 53535"'
    assert (await dig(netns, "::1", "+short", "v6.fz.test", "TXT")).strip() == '"udp ::1 53535"'
