"""Inputs: facts the driver reports to the core, named as facts.

Every input is a small frozen slotted dataclass handed to ``handle_input(now, input)``. The data plane does
not use these (it has typed methods returning their result directly, see docs/design/driving-contract.md);
they are for the control plane. Component-specific inputs live beside their component and subclass
:class:`Input`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_core.addr import SocketAddr


@dataclass(frozen=True, slots=True)
class Input:
    """Base of every input."""


@dataclass(frozen=True, slots=True)
class SendFailed(Input):
    """A :class:`gateway_core.commands.Transmit` to ``dst`` could not be sent (R7: IO failures are inputs)."""

    dst: SocketAddr
    error: str


@dataclass(frozen=True, slots=True)
class ShutdownRequested(Input):
    """The operator asked the process to stop (SIGTERM/SIGINT): say goodbye, then :class:`Exit`."""
