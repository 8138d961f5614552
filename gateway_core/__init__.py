"""A pure (sans-IO) Firezone Gateway core.

Bytes and ``now`` in, bytes and commands out. Nothing in this package reads a clock, randomness or a
socket; an architecture test (``tests/test_architecture.py``) enforces it.
"""

from gateway_core.addr import IPAddress, IPNetwork, SocketAddr
from gateway_core.backoff import Backoff, BackoffConfig
from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.commands import Command, Exit, Transmit, WriteTun
from gateway_core.contract import Component, Deadline
from gateway_core.entropy import Entropy, SeededEntropy
from gateway_core.errors import DecodeError, DropReason, UsageError
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import (
    DomainResolved,
    DomainResolveFailed,
    GatewayCommand,
    GatewayConfig,
    GatewayInput,
    ResolveDomain,
    WallClockAnchor,
)
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.stats import Stats

__all__ = [
    "Backoff",
    "BackoffConfig",
    "Command",
    "Component",
    "Deadline",
    "DecodeError",
    "DomainResolveFailed",
    "DomainResolved",
    "DropReason",
    "Duration",
    "Entropy",
    "Exit",
    "Gateway",
    "GatewayCommand",
    "GatewayConfig",
    "GatewayInput",
    "IPAddress",
    "IPNetwork",
    "Input",
    "Instant",
    "ResolveDomain",
    "SeededEntropy",
    "SendFailed",
    "ShutdownRequested",
    "SocketAddr",
    "Stats",
    "Transmit",
    "UsageError",
    "WallClockAnchor",
    "WriteTun",
    "millis",
    "secs",
]
