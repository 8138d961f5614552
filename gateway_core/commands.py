"""Commands: what the core orders its driver to do, named as orders.

Every command is a small frozen slotted dataclass. Components queue them; the driver drains them with
``poll_command()`` after every mutating call (R3) and executes them in order. Component-specific commands
live beside their component and subclass :class:`Command`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_core.addr import SocketAddr


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command."""


@dataclass(frozen=True, slots=True)
class Transmit(Command):
    """Send ``payload`` as one UDP datagram from ``src`` (``None``: any local address) to ``dst``."""

    src: SocketAddr | None
    dst: SocketAddr
    payload: bytes


@dataclass(frozen=True, slots=True)
class WriteTun(Command):
    """Write one IP packet to the TUN device."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class Exit(Command):
    """The component has finished shutting down; the driver may stop."""

    reason: str
    code: int = 0
