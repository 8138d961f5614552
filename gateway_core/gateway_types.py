"""The gateway facade's configuration, its own inputs and commands, and the unions of all it takes and gives.

The facade (:class:`gateway_core.gateway.Gateway`) also takes the inputs and gives the commands of its
parts (portal channel, DNS forwarder, DNS server binding, interface); only what is new at this level is
defined here: domain resolution for DNS resources (:class:`ResolveDomain` / :class:`DomainResolved` /
:class:`DomainResolveFailed`) and re-anchoring the wall clock (:class:`WallClockAnchor`).
:data:`GatewayInput` and :data:`GatewayCommand` list every input and command of the facade, its parts'
included: a driver ``match``-es on them and ends in ``assert_never``, so that a new kind is a type error
wherever it is not handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway_core.addr import IPAddress
from gateway_core.clock import Duration, secs
from gateway_core.commands import Command, Exit, Transmit
from gateway_core.dns.forwarding import DnsForwarderCommand, DnsForwarderInput, DnsLimits
from gateway_core.dns.servers import TUN_DNS_PORT, DnsServerBindFailed, DnsServerBound, DnsServerCommand
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import ConfigureInterface, InterfaceConfigFailed, InterfaceConfigured
from gateway_core.policy.nat import MAX_NAT_SESSIONS
from gateway_core.portal.channel_types import ChannelConfig, PortalCommand, PortalInput
from gateway_core.portal.login import GATEWAY_VERSION

RESOLVE_TIMEOUT: Duration = secs(10)
"""How long a domain resolution may take before it counts as failed (Firezone ``DNS_RESOLUTION_TIMEOUT``,
10 s, ``eventloop.rs:38``; it must stay below the 20 s handshake timeout of the client)."""

MAX_PENDING_RESOLUTIONS = 1000
"""Domain resolutions in flight at once (Firezone: 1000, ``eventloop.rs:102-105``)."""

WG_PORT = 52625
"""The UDP port the IO layer binds for WireGuard/ICE (``sockets.rs:18-20``); informational here."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the core needs to know before it starts (identity for the portal login, limits)."""

    api_url: str
    """The portal URL (``FIREZONE_API_URL``, e.g. ``wss://api.firezone.dev``)."""
    token: str
    firezone_id: str
    name: str = "gateway"
    version: str = GATEWAY_VERSION
    user_agent: str | None = None
    """The User-Agent header; ``None``: a minimal one built from :attr:`version` (the IO layer passes the
    real one with OS, architecture and kernel, as
    ``rust/connlib/phoenix-channel/src/get_user_agent.rs``)."""
    dns_port: int = TUN_DNS_PORT
    """Port of the layer-4 DNS servers on the tunnel addresses (Firezone ``TUN_DNS_PORT`` 53535)."""
    wg_port: int = WG_PORT
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    max_nat_sessions: int = MAX_NAT_SESSIONS
    resolve_timeout: Duration = RESOLVE_TIMEOUT
    max_pending_resolutions: int = MAX_PENDING_RESOLUTIONS
    flow_logs: bool = False
    """Track TCP/UDP flows for flow logs (Firezone: only with ``RUST_LOG`` containing ``flow_logs=trace``)."""
    dns_limits: DnsLimits = field(default_factory=DnsLimits)
    """The SRV/TXT forwarder's limits: in flight, in all and per client, and the per-client rate."""
    validate_checksums: bool = False
    """Drop (and count as ``bad_checksum``) packets whose IPv4 header, TCP or UDP checksum is wrong, in
    both directions (``--validate-checksums``; Firezone only warns, and only towards the TUN: decision
    0166)."""
    check_deadlines: bool = False
    """Debug mode: :meth:`Gateway.poll_timeout` compares its kept deadline with one recomputed from every
    connection and client and raises ``AssertionError`` when they differ (O(clients) per call; the daemon's
    ``FIREZONE_CHECK_DEADLINES``; decision 0140)."""


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, slots=True)
class DomainResolved(Input):
    """The resolution ordered by :class:`ResolveDomain` ``request_id`` found ``addresses`` (maybe none)."""

    request_id: int
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class DomainResolveFailed(Input):
    """The resolution ordered by :class:`ResolveDomain` ``request_id`` failed (R7)."""

    request_id: int
    error: str


@dataclass(frozen=True, slots=True)
class WallClockAnchor(Input):
    """The wall clock reads ``utc_ns`` (nanoseconds since the Unix epoch) at the ``now`` of this call.

    The core derives UTC for expiry checks as ``utc_ns + (now - anchor_now)``; the IO layer re-anchors
    when it notices a wall-clock step (NTP), the simulator when its scenario moves the wall clock."""

    utc_ns: int


# --------------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True, slots=True)
class ResolveDomain(Command):
    """Resolve ``domain`` to its A and AAAA records; answer :class:`DomainResolved` or
    :class:`DomainResolveFailed` with the same ``request_id``. The core times it out itself."""

    request_id: int
    domain: str


# --------------------------------------------------------------------------------------------------
# Everything the facade takes and gives

GatewayInput = (
    PortalInput
    | DnsForwarderInput
    | DomainResolved
    | DomainResolveFailed
    | DnsServerBound
    | DnsServerBindFailed
    | InterfaceConfigured
    | InterfaceConfigFailed
    | SendFailed
    | ShutdownRequested
    | WallClockAnchor
)
"""Every input :meth:`Gateway.handle_input <gateway_core.gateway.Gateway.handle_input>` takes."""

GatewayCommand = (
    Transmit
    | PortalCommand
    | DnsForwarderCommand
    | DnsServerCommand
    | ResolveDomain
    | ConfigureInterface
    | Exit
)
"""Every command :meth:`Gateway.poll_command <gateway_core.gateway.Gateway.poll_command>` gives
(``Transmit`` first: it is by far the most frequent, and ``isinstance`` tries the members in order)."""


__all__ = [
    "MAX_PENDING_RESOLUTIONS",
    "RESOLVE_TIMEOUT",
    "DomainResolveFailed",
    "DomainResolved",
    "GatewayCommand",
    "GatewayConfig",
    "GatewayInput",
    "ResolveDomain",
    "WallClockAnchor",
]
