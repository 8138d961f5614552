"""Errors and drop reasons.

- :class:`UsageError`: the caller broke the driving contract (time went backwards, an unknown handle, a
  call in the wrong state). Raised; it is a bug in the caller.
- :class:`DecodeError`: raised by codecs for malformed input. Always caught at the component boundary and
  turned into a drop counted under a :class:`DropReason`; it never leaves the core.
- :class:`DropReason`: why an input was dropped; counted in :class:`gateway_core.stats.Stats`.
"""

from __future__ import annotations

from enum import StrEnum


class UsageError(Exception):
    """The caller violated the driving contract."""


class DecodeError(ValueError):
    """Malformed bytes: the input cannot be parsed."""


class DropReason(StrEnum):
    """Why an input (a packet, a datagram, a frame, a message) was dropped.

    Grouped by component. Values are stable strings: they appear in logs, statistics and traces.
    """

    # --- IP packets (TUN side and decrypted tunnel side) ---
    MALFORMED_IP = "malformed_ip"
    UNSUPPORTED_IP_VERSION = "unsupported_ip_version"
    MALFORMED_L4 = "malformed_l4"
    BAD_CHECKSUM = "bad_checksum"
    FRAGMENT = "fragment"
    IP_TOO_LARGE = "ip_too_large"

    # --- WireGuard ---
    WG_MALFORMED = "wg_malformed"
    WG_UNKNOWN_INDEX = "wg_unknown_index"
    WG_DECRYPT_FAILED = "wg_decrypt_failed"
    WG_REPLAY = "wg_replay"
    WG_HANDSHAKE_FAILED = "wg_handshake_failed"
    WG_BAD_MAC1 = "wg_bad_mac1"
    WG_COOKIE_REQUIRED = "wg_cookie_required"
    WG_RATE_LIMITED = "wg_rate_limited"
    WG_STALE_TIMESTAMP = "wg_stale_timestamp"
    WG_SESSION_EXPIRED = "wg_session_expired"
    WG_NO_SESSION = "wg_no_session"
    WG_UNEXPECTED = "wg_unexpected"

    # --- STUN / TURN / ICE ---
    STUN_BAD_INTEGRITY = "stun_bad_integrity"
    STUN_UNMATCHED = "stun_unmatched"
    TURN_MALFORMED = "turn_malformed"
    TURN_UNKNOWN_CHANNEL = "turn_unknown_channel"
    TURN_UNKNOWN_RELAY = "turn_unknown_relay"
    DATAGRAM_UNCLASSIFIED = "datagram_unclassified"

    # --- Portal ---
    PORTAL_MALFORMED_FRAME = "portal_malformed_frame"
    PORTAL_UNKNOWN_EVENT = "portal_unknown_event"
    PORTAL_BAD_PAYLOAD = "portal_bad_payload"
    PORTAL_UNMATCHED_REPLY = "portal_unmatched_reply"

    # --- Gateway policy / data path ---
    SPOOFED_SOURCE = "spoofed_source"
    NOT_AUTHORIZED = "not_authorized"
    FILTERED = "filtered"
    UNKNOWN_CLIENT = "unknown_client"
    NAT_TABLE_FULL = "nat_table_full"
    NO_CONNECTION = "no_connection"
    CONNECTION_CLOSING = "connection_closing"
    """A packet of a connection being closed: decrypted from it, or waiting in its tunnel when it closed
    (decision 0172: a closing connection delivers nothing)."""
    NAT_SESSION_EXPIRED = "nat_session_expired"
    NAT_UNSUPPORTED_PROTOCOL = "nat_unsupported_protocol"
    P2P_CONTROL_MALFORMED = "p2p_control_malformed"

    # --- DNS ---
    DNS_MALFORMED = "dns_malformed"
    DNS_REFUSED = "dns_refused"
    DNS_TOO_LARGE = "dns_too_large"
    DNS_TCP_LIMIT = "dns_tcp_limit"
    DNS_TCP_IDLE = "dns_tcp_idle"
    DNS_RATE_LIMITED = "dns_rate_limited"

    # --- IO layer (gateway_io: UDP sockets, TUN) ---
    UDP_OVERSIZED = "udp_oversized"
    UDP_RECEIVE_ERROR = "udp_receive_error"
    TUN_OFFLOAD_MALFORMED = "tun_offload_malformed"

    # --- Simulator / generic ---
    UNROUTABLE = "unroutable"
    QUEUE_FULL = "queue_full"
