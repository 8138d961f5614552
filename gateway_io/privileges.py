"""The start-up permission check (as Firezone's ``rust/gateway/src/main.rs``): root or ``CAP_NET_ADMIN``.

Unless ``--no-check`` is given, the daemon refuses to start (exit 1, :data:`PERMISSION_MESSAGE` on
stderr) when its real user is not root and ``CAP_NET_ADMIN`` is not in its effective capability set
(Firezone ``gateway/src/main.rs:40-47``, ``79-91``). The capability sets are read from
``/proc/self/status``; nothing here changes them.
"""

from __future__ import annotations

import os
from pathlib import Path

CAP_NET_ADMIN = 12
"""Bit of ``CAP_NET_ADMIN`` in the capability masks (``linux/capability.h``)."""

PERMISSION_MESSAGE = (
    "firezone-gateway needs to be executed as `root` or with the `CAP_NET_ADMIN` capability.\n"
    "See https://www.firezone.dev/kb/deploy/gateways#permissions for details."
)
"""Firezone's text, printed to stderr before any logging is set up."""


def effective_capabilities(status_text: str) -> int:
    """The ``CapEff`` mask of a ``/proc/<pid>/status`` text (0 when the line is missing or malformed)."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            try:
                return int(value.strip(), 16)
            except ValueError:
                return 0
    return 0


def has_net_admin(status_text: str | None = None) -> bool:
    """Whether ``CAP_NET_ADMIN`` is in the effective set (of this process unless a status text is given)."""
    if status_text is None:
        try:
            status_text = Path("/proc/self/status").read_text()
        except OSError:
            return False
    return bool(effective_capabilities(status_text) >> CAP_NET_ADMIN & 1)


def has_necessary_permissions() -> bool:
    """Real UID 0 or ``CAP_NET_ADMIN`` effective (Firezone's ``has_necessary_permissions``)."""
    return os.getuid() == 0 or has_net_admin()
