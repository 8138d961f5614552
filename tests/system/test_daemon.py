"""The whole daemon in a network namespace against ``firezone-dev-portal``.

The test creates a namespace, starts the dev portal on its loopback (ws://) and ``firezone-gateway`` in
it; after ``init`` the namespace must show the interface configuration (addresses, MTU, the three policy
rules per family, the tunnel routes), exactly one UDP and one TCP DNS listener on each tunnel address at
53535, and a health check answering 200; SIGTERM then ends the daemon with exit code 0. The token never
appears in the daemon's output. Processes are stopped by PID and the namespace is deleted, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.system.io_netns import netns, sh

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PORTAL_CONFIG = ROOT / "tests" / "io" / "devportal_test.toml"
TOKEN = "dev-token"
PORTAL_PORT = 8081
HEALTH_PORT = 8080
DNS_PORT = 53535
WAIT = 60.0
"""Seconds any awaited condition may take (bounded; it is reached only when something is broken)."""


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns something truthy; fail after :data:`WAIT` seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def process(argv: list[str], ns: str, env: dict[str, str], out: IO[str]) -> Iterator[subprocess.Popen[str]]:
    """``argv`` inside ``ns`` (``ip netns exec`` execs it, so the PID is the program's); killed by PID."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)


def admin_status(ns: str) -> dict[str, Any]:
    code = (
        "import urllib.request as u; "
        f"print(u.urlopen('http://127.0.0.1:{PORTAL_PORT}/admin/status', timeout=5).read().decode())"
    )
    return json.loads(sh(sys.executable, "-c", code, ns=ns))  # type: ignore[no-any-return]


def health(ns: str) -> int:
    code = (
        "import http.client; "
        f"c = http.client.HTTPConnection('127.0.0.1', {HEALTH_PORT}, timeout=5); "
        "c.request('GET', '/healthz'); print(c.getresponse().status)"
    )
    return int(sh(sys.executable, "-c", code, ns=ns).strip())


def listeners(ns: str, flags: str) -> list[str]:
    """Local addresses of the sockets ``ss -H <flags>`` lists in ``ns`` on the DNS port."""
    out = sh("ss", "-H", flags, ns=ns)
    found = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[3].endswith(f":{DNS_PORT}"):
            found.append(cols[3])
    return sorted(found)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def test_daemon_connects_configures_the_namespace_and_stops_cleanly_on_sigterm(workdir: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "FIREZONE_ID": f"system-test-{os.getpid()}",
        "FIREZONE_NAME": "system-test",
        "FIREZONE_NO_INC_BUF": "true",  # the sysctls are global: leave the host's limits alone
        "RUST_LOG": "debug",
        "PYTHONUNBUFFERED": "1",
    }
    portal_log = workdir / "portal.log"
    gateway_log = workdir / "gateway.log"
    with (
        netns("fzgw") as ns,
        portal_log.open("w") as plog,
        gateway_log.open("w") as glog,
        process(
            [
                str(BIN / "firezone-dev-portal"),
                "--config",
                str(PORTAL_CONFIG),
                "--listen",
                f"127.0.0.1:{PORTAL_PORT}",
            ],
            ns,
            env,
            plog,
        ) as portal,
    ):
        wait_for("the dev portal to listen", lambda: "listening on" in portal_log.read_text())
        argv = [
            str(BIN / "firezone-gateway"),
            TOKEN,
            "--api-url",
            f"ws://127.0.0.1:{PORTAL_PORT}",
            "--health-check-addr",
            f"127.0.0.1:{HEALTH_PORT}",
        ]
        with process(argv, ns, env, glog) as gateway:
            try:
                gw = wait_for("the gateway to join the portal", lambda: _joined(ns))
                v4, v6 = gw["ipv4"], gw["ipv6"]

                # ip addr: the tunnel addresses as /32 and /128, MTU 1280, link up.
                def configured() -> bool:
                    out = sh("ip", "-o", "addr", "show", "dev", "tun-firezone", ns=ns)
                    return f"inet {v4}/32" in out and f"inet6 {v6}/128" in out

                wait_for("the tunnel addresses", configured)
                link = sh("ip", "-o", "link", "show", "dev", "tun-firezone", ns=ns)
                assert "mtu 1280" in link and ",UP" in link, link

                # ip rule: three "not fwmark" rules per family, priorities 100/200/300.
                for fam in ("-4", "-6"):
                    rules = sh("ip", fam, "rule", "show", ns=ns)
                    for prio, table in ((100, 0x2021FD00), (200, 0x2021FD01), (300, 0x2021FD02)):
                        assert re.search(
                            rf"^{prio}:\s+not from all fwmark 0xfd002021 lookup {table}\b", rules, re.M
                        ), rules

                # ip route: the tunnel ranges in table 0x2021fd00.
                r4 = sh("ip", "-4", "route", "show", "table", str(0x2021FD00), ns=ns)
                r6 = sh("ip", "-6", "route", "show", "table", str(0x2021FD00), ns=ns)
                assert "100.64.0.0/11 dev tun-firezone" in r4, r4
                assert "fd00:2021:1111::/107 dev tun-firezone" in r6, r6

                # ss: one UDP and one TCP DNS listener on each tunnel address (IPv6 may need a retry),
                # each bound to the TUN device (ss shows it as %tun-firezone; decision 0110).
                want = sorted([f"{v4}%tun-firezone:{DNS_PORT}", f"[{v6}]%tun-firezone:{DNS_PORT}"])
                wait_for("the UDP DNS listeners", lambda: listeners(ns, "-lnu") == want)
                wait_for("the TCP DNS listeners", lambda: listeners(ns, "-lnt") == want)
                udp_procs = sh("ss", "-H", "-lnup", ns=ns)
                assert udp_procs.count(f":{DNS_PORT} ") == 2 and f"pid={gateway.pid}" in udp_procs, udp_procs

                assert health(ns) == 200
                assert gateway.poll() is None, "the daemon stopped by itself"

                # The underlay guard: our nftables table, with the tunnel addresses (decision 0110).
                guard = sh("nft", "list", "table", "inet", "firezone-gateway", ns=ns)
                assert f"ip daddr {v4} counter" in guard and f"ip6 daddr {v6} counter" in guard, guard

                gateway.send_signal(signal.SIGTERM)
                code = gateway.wait(timeout=WAIT)
            except BaseException:
                glog.flush()
                print(gateway_log.read_text()[-6000:], file=sys.stderr)
                raise
        assert code == 0, gateway_log.read_text()[-4000:]
        assert portal.poll() is None
        assert "firezone-gateway" not in sh("nft", "list", "tables", ns=ns)  # removed on the way out
    out = gateway_log.read_text()
    assert TOKEN not in out, "the token leaked into the log"
    assert "shutdown requested" in out and "exit code 0" in out
    # The DNS servers are bound once the interface is configured, so the first bind succeeds (it used to
    # race the configuration and fail with "Cannot assign requested address" before a retry).
    assert "bind failed" not in out and "binding the DNS servers" not in out, out[-4000:]
    assert re.search(r"gateway \S+ disconnected", portal_log.read_text())  # the close reached the portal
    assert "underlay guard installed" in out
    # The namespace is gone with its TUN device: nothing is left behind.
    assert ns not in sh("ip", "netns", "list")


def _joined(ns: str) -> dict[str, Any] | None:
    try:
        status = admin_status(ns)
    except (RuntimeError, ValueError):
        return None
    for g in status.get("gateways", []):
        if g.get("joined") and g.get("ipv4"):
            return g  # type: ignore[no-any-return]
    return None


def test_daemon_without_a_token_exits_2_naming_the_setting() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FIREZONE_ID": "x"}
    r = subprocess.run(
        [str(BIN / "firezone-gateway"), "--no-check"], env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "FIREZONE_TOKEN" in lines[0], r.stderr
