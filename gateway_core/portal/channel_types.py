"""The portal channel's vocabulary: its configuration, the driver's reports (inputs), its orders to the
driver (commands) and what it tells its owner (events), each family also as a union type
(:data:`PortalInput`, :data:`PortalCommand`, :data:`PortalEvent`) for exhaustive ``match`` statements.

The machine itself is :class:`gateway_core.portal.channel.PortalChannel`, which re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gateway_core.backoff import BackoffConfig
from gateway_core.clock import Duration, secs
from gateway_core.commands import Command
from gateway_core.inputs import Input
from gateway_core.portal.login import LoginUrl
from gateway_core.portal.messages import InboundMessage


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    heartbeat_interval: Duration = secs(30)
    """Heartbeat after this long without sending (Firezone: 30 s; the portal drops sockets idle 37 s)."""
    heartbeat_timeout: Duration = secs(30)
    """No reply to a heartbeat within this long: the connection is dead (Phoenix JS: one interval)."""
    join_timeout: Duration = secs(5)
    """Unanswered join: reconnect (Firezone: 5 s, checked only on wake-up; here a timer)."""
    connect_timeout: Duration = secs(15)
    """TCP + TLS + upgrade must finish within this (Firezone: 5 s for TCP, no bound on TLS/upgrade)."""
    close_grace: Duration = secs(1)
    """How long a graceful close may take at shutdown (the reference's close is best-effort)."""
    queue_limit: int = 32
    """A push finding more than this many queued frames empties the queue first (Firezone: 32)."""
    max_in_flight: int = 256
    """Sent pushes remembered for matching replies; older ones are forgotten (bounded memory)."""
    backoff: BackoffConfig = field(default_factory=lambda: BackoffConfig(first_immediate=True))
    """Firezone's reconnect policy: ``backoff`` crate defaults, first retry immediate, 15 min window."""


# --------------------------------------------------------------------------------------------------
# Inputs (facts reported by the driver)


@dataclass(frozen=True, slots=True)
class PortalConnected(Input):
    """The WebSocket handshake of connection ``conn`` succeeded."""

    conn: int


@dataclass(frozen=True, slots=True)
class PortalConnectFailed(Input):
    """Connection ``conn`` could not be opened. ``status``: HTTP status of a refused upgrade;
    ``certificate_invalid``: the TLS peer certificate was refused (fatal, as Firezone)."""

    conn: int
    error: str
    status: int | None = None
    certificate_invalid: bool = False


@dataclass(frozen=True, slots=True)
class PortalDisconnected(Input):
    """Connection ``conn`` ended (close frame, end of stream or error)."""

    conn: int
    error: str


@dataclass(frozen=True, slots=True)
class PortalFrameReceived(Input):
    """A text frame (or a binary one, treated as UTF-8 text as Firezone does) on connection ``conn``."""

    conn: int
    data: str | bytes


@dataclass(frozen=True, slots=True)
class PortalSendFailed(Input):
    """Writing ``text`` on connection ``conn`` failed; the frame goes back to the head of the queue."""

    conn: int
    text: str
    error: str


PortalInput = (
    PortalConnected | PortalConnectFailed | PortalDisconnected | PortalFrameReceived | PortalSendFailed
)
"""Every report of the driver about the portal connection."""


# --------------------------------------------------------------------------------------------------
# Commands (orders to the driver)


@dataclass(frozen=True, slots=True)
class ConnectPortal(Command):
    """Open WebSocket ``conn`` to ``url`` with this User-Agent (close any older connection first)."""

    conn: int
    url: LoginUrl
    user_agent: str


@dataclass(frozen=True, slots=True)
class SendPortalFrame(Command):
    conn: int
    text: str


@dataclass(frozen=True, slots=True)
class ClosePortal(Command):
    """Close connection ``conn``: a WebSocket close handshake if ``graceful``, else drop it."""

    conn: int
    graceful: bool


PortalCommand = ConnectPortal | SendPortalFrame | ClosePortal
"""Every order of the channel to its driver."""


# --------------------------------------------------------------------------------------------------
# Events (for the gateway)


@dataclass(frozen=True, slots=True)
class PortalJoined:
    """The channel joined the gateway topic (again): the portal sends ``init`` next."""


@dataclass(frozen=True, slots=True)
class PortalMessageReceived:
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class PortalReplyError:
    """The portal answered one of our pushes (``event``, ``None`` if unknown) with an error."""

    ref: int
    event: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class PortalHiccup:
    """A transient failure; the next attempt is in ``delay`` ns."""

    delay: Duration
    error: str


class FatalKind(StrEnum):
    CLIENT_ERROR = "client_error"  # 4xx on the upgrade
    FATAL_IO = "fatal_io"  # invalid peer certificate
    LOGIN_FAILED = "login_failed"  # error reply to the join
    TOKEN_EXPIRED = "token_expired"  # disconnect/token_expired
    MAX_RETRIES = "max_retries_reached"  # backoff exhausted


@dataclass(frozen=True, slots=True)
class PortalFailed:
    """A fatal error: the channel gave up; the daemon exits with status 1."""

    kind: FatalKind
    error: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class PortalStopped:
    """The channel is closed after a shutdown."""


PortalEvent = (
    PortalJoined | PortalMessageReceived | PortalReplyError | PortalHiccup | PortalFailed | PortalStopped
)
"""Everything the channel tells its owner (:meth:`PortalChannel.poll_event`)."""
