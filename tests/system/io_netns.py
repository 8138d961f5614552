"""Network namespaces for the IO-layer system tests: create, enter briefly, always delete.

:func:`netns` creates a uniquely named namespace (loopback up) and deletes it on exit, also on failure;
:func:`inside` moves the *calling thread* into it for the ``with`` block and back afterwards, so sockets,
TUN devices and netlink sockets created in the block belong to the namespace for life. Threads started
before the block stay where they were (the tests create everything they need in the calling thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
WAIT = 30


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    """Run a command (inside ``ns`` with ``ip netns exec``); its stdout."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({res.returncode}): {res.stderr}")
    return res.stdout


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 100000}-{os.urandom(2).hex()}"


@contextlib.contextmanager
def netns(prefix: str = "fzio") -> Iterator[str]:
    name = unique(prefix)
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=WAIT)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """The calling thread is in namespace ``name`` during the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
