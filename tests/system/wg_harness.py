"""Network namespaces, veth pairs and a real-socket driver for our sans-IO WireGuard peer (test helper).

Everything created here lives inside namespaces the test creates (named with a per-run suffix) and is
deleted on exit, also on failure. Processes started here are stopped by PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.wireguard import RateLimiter, WireGuardConfig, WireGuardPeer
from gateway_core.wireguard.crypto import public_key

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run(*args: str, check: bool = True, ns: str | None = None, inp: bytes | None = None) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    res = subprocess.run(cmd, input=inp, capture_output=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {res.returncode} {res.stderr.decode(errors='replace')}")
    return res.stdout.decode()


def suffix() -> str:
    return f"{os.getpid() % 10000:04d}{os.urandom(1).hex()}"


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[None]:
    created: list[str] = []
    try:
        for n in names:
            run("ip", "netns", "add", n)
            created.append(n)
            run("ip", "link", "set", "lo", "up", ns=n)
        yield
    finally:
        for n in created:
            run("ip", "netns", "del", n, check=False)


def veth(ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str) -> None:
    """A veth pair created inside ``ns_a`` with its other end moved to ``ns_b`` (never in the root ns)."""
    run("ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b, ns=ns_a)
    run("ip", "link", "set", if_b, "netns", ns_b, ns=ns_a)
    run("ip", "addr", "add", addr_a, "dev", if_a, ns=ns_a)
    run("ip", "addr", "add", addr_b, "dev", if_b, ns=ns_b)
    run("ip", "link", "set", if_a, "up", ns=ns_a)
    run("ip", "link", "set", if_b, "up", ns=ns_b)


def udp_socket_in(ns: str, bind: tuple[str, int]) -> socket.socket:
    """A UDP socket created inside network namespace ``ns`` (a socket keeps its namespace for life)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(bind)
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def process(cmd: list[str], log: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` (own process group), stop it by PID on exit (TERM, then KILL)."""
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield p
    finally:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def now() -> Instant:
    return Instant(time.monotonic_ns())


@dataclass
class Harness:
    """Our WireGuard peer on a real UDP socket; IP packets out of the tunnel go to ``on_packet``."""

    sock: socket.socket
    peer_endpoint: tuple[str, int]
    peer: WireGuardPeer
    on_packet: Callable[[bytes], None]
    keys: tuple[bytes, bytes, bytes | None] = (b"", b"", None)
    received_datagrams: list[bytes] = field(default_factory=list)
    tunnel_packets: list[bytes] = field(default_factory=list)

    @staticmethod
    def make(
        sock: socket.socket,
        peer_endpoint: tuple[str, int],
        own_private: bytes,
        peer_public: bytes,
        psk: bytes | None,
        config: WireGuardConfig | None = None,
        seed: int = 7,
        rate_limiter: RateLimiter | None = None,
    ) -> Harness:
        peer = WireGuardPeer(
            static_private=own_private,
            peer_public=peer_public,
            psk=psk,
            global_index=0x00ABCD,
            entropy=SeededEntropy(seed),
            now=now(),
            wall_unix_ns=time.time_ns(),
            config=config,
            rate_limiter=rate_limiter,
        )
        return Harness(sock, peer_endpoint, peer, lambda p: None, (own_private, peer_public, psk))

    def reconfigure(
        self, config: WireGuardConfig | None = None, rate_limiter: RateLimiter | None = None
    ) -> None:
        """A fresh peer with the same keys, ``config`` and ``rate_limiter`` (before any traffic)."""
        own, peer_public, psk = self.keys
        fresh = Harness.make(self.sock, self.peer_endpoint, own, peer_public, psk, config, 8, rate_limiter)
        self.peer = fresh.peer

    @property
    def public(self) -> bytes:
        return self.peer.handshake.static_public

    def flush(self) -> None:
        while (d := self.peer.poll_transmit()) is not None:
            self.sock.sendto(d, self.peer_endpoint)

    def send_ip(self, packet: bytes) -> None:
        out = self.peer.encapsulate(now(), packet)
        if out is not None:
            self.sock.sendto(out, self.peer_endpoint)
        self.flush()

    def step(self, max_wait: float) -> None:
        """Wait for one datagram or the next deadline (at most ``max_wait`` s) and handle it."""
        d = self.peer.poll_timeout()
        wait = max_wait
        if d is not None:
            wait = max(0.0, min(max_wait, (d.at - time.monotonic_ns()) / 1e9))
        readable, _, _ = select.select([self.sock], [], [], wait)
        if readable:
            for _ in range(64):
                try:
                    data, src = self.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                self.received_datagrams.append(data)
                pt = self.peer.decapsulate(now(), data, IPv4Address(src[0]))
                self.flush()
                if pt is not None:
                    self.tunnel_packets.append(pt)
                    self.on_packet(pt)
        d = self.peer.poll_timeout()
        t = now()
        if d is not None and d.at <= t:
            self.peer.handle_timeout(t)
            self.flush()

    def run_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            self.step(0.05)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}; stats {self.peer.stats.snapshot()}"
        )


def wg_keypair() -> tuple[bytes, str, str]:
    """A private key as raw bytes and as base64 (for ``wg``), and the public key in base64."""
    import base64

    raw = os.urandom(32)
    return raw, base64.b64encode(raw).decode(), base64.b64encode(public_key(raw)).decode()
