"""A real coturn for system tests: config written by the fixture, started on loopback, stopped by PID.

``use-auth-secret`` (TURN REST credentials, :func:`rest_credentials`), realm ``firezone``, random ports,
short allocation and nonce lifetimes so that refreshes and 438 challenges happen within seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.turn.credentials import coturn_rest_password
from gateway_core.wire import stun
from gateway_core.wire.stun import Method

SECRET = "coturn-secret-for-tests"
LIFETIME = 8
"""coturn ``max-allocate-lifetime``: our client refreshes at half of it (4 s)."""
STALE_NONCE = 3
"""coturn ``stale-nonce``: nonces expire quickly, so 438 challenges happen during the test."""


def _free_udp_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Coturn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.v4 = SocketAddr(ip_address("127.0.0.1"), port)
        self.v6 = SocketAddr(ip_address("::1"), port)


@contextlib.contextmanager
def running_coturn(d: Path, extra: tuple[str, ...] = ()) -> Iterator[Coturn]:
    """coturn with this module's configuration (plus ``extra`` lines) in directory ``d``, until the block
    ends (stopped by its PID)."""
    exe = shutil.which("turnserver")
    assert exe is not None, "coturn is missing: scripts/debian-packages.txt lists it (make deps)"
    port = _free_udp_port("127.0.0.1")
    lo = 20000 + (os.getpid() % 400) * 100 + (50 if extra else 0)
    conf = d / "turnserver.conf"
    conf.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                "listening-ip=::1",
                f"listening-port={port}",
                "relay-ip=127.0.0.1",
                "relay-ip=::1",
                f"min-port={lo}",
                f"max-port={lo + 49}",
                "realm=firezone",
                "use-auth-secret",
                f"static-auth-secret={SECRET}",
                f"max-allocate-lifetime={LIFETIME}",
                f"stale-nonce={STALE_NONCE}",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-tcp",
                "no-cli",
                "no-multicast-peers",
                "allow-loopback-peers",
                f"pidfile={d / 'turnserver.pid'}",
                f"userdb={d / 'turnserver.db'}",
                f"log-file={d / 'turnserver.log'}",
                "verbose",
                "simple-log",
                *extra,
                "",
            ]
        )
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = Coturn(port)
        probe = stun.StunMessage(Method.BINDING, stun.Class.REQUEST, b"\x01" * 12).encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            for _ in range(100):
                assert proc.poll() is None, "turnserver exited"
                s.sendto(probe, ("127.0.0.1", port))
                try:
                    s.recvfrom(2000)
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("coturn did not answer a BINDING within 10 s")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with running_coturn(tmp_path_factory.mktemp("coturn")) as server:
        yield server


@pytest.fixture(scope="module")
def coturn_external_ip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn with ``external-ip`` (a server behind NAT): it refuses dual allocations with 440."""
    with running_coturn(tmp_path_factory.mktemp("coturn-x"), ("external-ip=127.0.0.1",)) as server:
        yield server


def rest_credentials(name: str) -> tuple[str, str]:
    """A coturn REST username valid for an hour and its password."""
    user = f"{int(time.time()) + 3600}:{name}"
    return user, coturn_rest_password(SECRET, user)
