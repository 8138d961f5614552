"""Typed application messages of the gateway channel, current and legacy: one import for both directions.

Inbound (portal -> gateway, :mod:`gateway_core.portal.inbound`) and outbound (gateway -> portal,
:mod:`gateway_core.portal.outbound`) messages are frozen slotted dataclasses; this module re-exports them
all. Each class knows its ``EVENT`` name, decodes itself from a payload (``decode``) and encodes itself
back to the exact JSON shape (``encode``). :func:`decode_inbound` / :func:`decode_outbound` dispatch on the
event name and raise :class:`DecodeError` only: an unknown event, a missing field or a wrong type makes the
whole message undecodable; unknown fields are ignored (logged at debug level). The only list decoded
element by element is an ICE candidate list: a non-string candidate is skipped on its own.

Both directions are decoded and encoded here because the stub and dev portals speak the other side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gateway_core.errors import DecodeError
from gateway_core.portal.inbound import (
    AccessAuthorizationExpiryUpdated,
    AllowAccess,
    Authorization,
    AuthorizeFlow,
    DnsServer,
    IceCandidates,
    InboundMessage,
    Init,
    Interface,
    InvalidateIceCandidates,
    LegacyClient,
    LegacyPeer,
    RejectAccess,
    RelaysPresence,
    RequestConnection,
    ResourceUpdated,
)
from gateway_core.portal.model import Json
from gateway_core.portal.outbound import (
    BroadcastIceCandidates,
    BroadcastInvalidatedIceCandidates,
    ConnectionReady,
    FlowAuthorized,
    OutboundMessage,
)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Dispatch

_INBOUND: dict[str, Callable[[Json], InboundMessage]] = {
    c.EVENT: c.decode
    for c in (
        Init,
        AuthorizeFlow,
        RequestConnection,
        AllowAccess,
        RejectAccess,
        ResourceUpdated,
        AccessAuthorizationExpiryUpdated,
        RelaysPresence,
        IceCandidates,
        InvalidateIceCandidates,
    )
}

_OUTBOUND: dict[str, Callable[[Json], OutboundMessage]] = {
    c.EVENT: c.decode
    for c in (FlowAuthorized, ConnectionReady, BroadcastIceCandidates, BroadcastInvalidatedIceCandidates)
}

INBOUND_EVENTS = frozenset(_INBOUND)
OUTBOUND_EVENTS = frozenset(_OUTBOUND)


class UnknownEvent(DecodeError):
    """The event name is not one this side understands (counted apart from bad payloads)."""


def decode_inbound(event: str, payload: Json) -> InboundMessage:
    """A portal -> gateway message; :class:`DecodeError` (or :class:`UnknownEvent`) if it is not one."""
    dec = _INBOUND.get(event)
    if dec is None:
        raise UnknownEvent(f"unknown event {event!r}")
    return _guard(dec, payload)


def decode_outbound(event: str, payload: Json) -> OutboundMessage:
    """A gateway -> portal message (for the stub and dev portals)."""
    dec = _OUTBOUND.get(event)
    if dec is None:
        raise UnknownEvent(f"unknown event {event!r}")
    return _guard(dec, payload)


def _guard(dec: Callable[[Json], T], payload: Json) -> T:
    try:
        return dec(payload)
    except DecodeError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
        # Belt and braces: a decoder bug must still surface as a drop, never escape the core (R6).
        raise DecodeError(f"malformed payload: {type(e).__name__}") from None


__all__ = [
    "INBOUND_EVENTS",
    "OUTBOUND_EVENTS",
    "AccessAuthorizationExpiryUpdated",
    "AllowAccess",
    "Authorization",
    "AuthorizeFlow",
    "BroadcastIceCandidates",
    "BroadcastInvalidatedIceCandidates",
    "ConnectionReady",
    "DnsServer",
    "FlowAuthorized",
    "IceCandidates",
    "InboundMessage",
    "Init",
    "Interface",
    "InvalidateIceCandidates",
    "LegacyClient",
    "LegacyPeer",
    "OutboundMessage",
    "RejectAccess",
    "RelaysPresence",
    "RequestConnection",
    "ResourceUpdated",
    "UnknownEvent",
    "decode_inbound",
    "decode_outbound",
]
