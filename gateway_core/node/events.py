"""Events the node reports to the gateway (snownet's ``Event`` in ``rust/connlib/snownet/src/node.rs``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NewIceCandidate:
    """Signal this local candidate (SDP ``candidate:`` string) to the client."""

    cid: str
    candidate: str


@dataclass(frozen=True, slots=True)
class InvalidateIceCandidate:
    """Tell the client to drop this candidate."""

    cid: str
    candidate: str


@dataclass(frozen=True, slots=True)
class ConnectionEstablished:
    """The first WireGuard handshake message of this connection was accepted."""

    cid: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The connection failed and was removed."""

    cid: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """``close_connection`` on a connection that had a path."""

    cid: str


NodeEvent = (
    NewIceCandidate | InvalidateIceCandidate | ConnectionEstablished | ConnectionFailed | ConnectionClosed
)
