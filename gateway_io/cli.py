"""``firezone-gateway``: the daemon's entry point (as Firezone's ``rust/gateway/src/main.rs``).

1. Parse the flags and environment (:mod:`gateway_io.config`); a bad or missing setting is one line on
   stderr naming it, exit 2 (clap's usage-error code).
2. Unless ``--no-check``: require UID 0 or ``CAP_NET_ADMIN`` in the effective set, else exit 1.
3. One asyncio event loop (anyio) runs :func:`gateway_io.daemon.run`, whose result is the exit code.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from gateway_io import daemon
from gateway_io.config import FLOW_LOGS_DIRECTIVE, ConfigError, load
from gateway_io.logging import setup_logging
from gateway_io.signals import EXIT_FAILURE, EXIT_USAGE

CAP_NET_ADMIN = 12
"""Bit of ``CAP_NET_ADMIN`` in the capability sets (``linux/capability.h``)."""


def has_net_admin(status: Path = Path("/proc/self/status")) -> bool:
    """Real UID 0, or ``CAP_NET_ADMIN`` in the effective set (Firezone ``main.rs:79-91``)."""
    if os.getuid() == 0:
        return True
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
    except ConfigError as e:
        print(f"firezone-gateway: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not config.no_check and not has_net_admin():
        print(
            "firezone-gateway: needs root or the CAP_NET_ADMIN capability (to create the TUN device and "
            "configure routes); run it as root, grant CAP_NET_ADMIN, or pass --no-check to skip this check",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        log_filter = config.log_filter
        if config.flow_logs and FLOW_LOGS_DIRECTIVE not in log_filter:
            log_filter += "," + FLOW_LOGS_DIRECTIVE  # --flow-logs: the reference's directive, appended
        redactor = setup_logging(config.log_format, log_filter, secrets=[config.token])
    except ValueError as e:
        print(f"firezone-gateway: FIREZONE_LOG_FORMAT: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return anyio.run(functools.partial(daemon.run, config, redactor=redactor), backend="asyncio")
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
