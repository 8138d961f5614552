"""The prepared gateway the ``gateway`` target starts every input from, and what the target draws on.

Built once per process with the unit tests' harness (``tests/unit/gateway_harness.py``): a gateway that
joined the (hand-played) portal and received ``init`` with one relay; one client authorised for a CIDR
resource with filters (``172.20.0.0/16``: UDP 53-60, TCP 80, ICMP), a DNS resource (``**.example.com``,
its NAT set up for ``app.example.com`` -> 10.0.0.7 through the p2p control protocol) and the Internet
resource; ICE and WireGuard connected. Recorded on the way: every datagram the gateway received (STUN
binding requests with valid integrity, TURN responses, WireGuard handshake and data), for the target to
replay with changes; and the client's sending session, so the target can put any inner packet into the
tunnel correctly encrypted.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.commands import Transmit
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import DomainResolved, ResolveDomain
from gateway_core.policy.p2p_control import build_assigned_ips
from gateway_core.wireguard.peer import WireGuardPeer
from gateway_core.wireguard.session import Session
from tests.unit.gateway_harness import (
    CIDR_ID,
    CL,
    CL_TUN4,
    CL_TUN6,
    CLIENT_ID,
    DNS_ID,
    GW,
    GW_TUN4,
    GW_TUN6,
    INTERNET_ID,
    RELAY,
    RELAY_ID,
    Harness,
    cidr_resource,
    dns_resource,
    internet_resource,
    relay_json,
)

FILTERS: list[dict[str, Any]] = [
    {"protocol": "udp", "port_range_start": 53, "port_range_end": 60},
    {"protocol": "tcp", "port_range_start": 80, "port_range_end": 80},
    {"protocol": "icmp"},
]
PROXY4 = tuple(IPv4Address(f"100.96.0.{i}") for i in range(1, 5))
PROXY6 = tuple(IPv6Address(f"fd00:2021:1111:8000::{i}") for i in range(1, 5))
REAL4 = IPv4Address("10.0.0.7")
REAL6 = IPv6Address("2001:db8:7::7")
CIDR_HOST = IPv4Address("172.20.0.5")
INTERNET_HOST = IPv4Address("198.18.0.10")
OTHER_CLIENT = IPv4Address("100.64.0.77")

INNER_DESTINATIONS: tuple[IPAddress, ...] = (
    CIDR_HOST,
    IPv4Address("172.21.0.1"),  # outside the CIDR resource: Internet resource
    INTERNET_HOST,
    *PROXY4[:2],
    *PROXY6[:2],
    GW_TUN4,
    GW_TUN6,
    OTHER_CLIENT,
    IPv6Address("2001:db8::99"),
    IPv4Address("127.0.0.1"),
)
"""Where the client's inner packets go: each resource, proxy IPs (with and without NAT), the gateway's
own tunnel addresses, another client, loopback."""
INNER_SOURCES: tuple[IPAddress, ...] = (CL_TUN4, CL_TUN6, CL_TUN4, CL_TUN6, IPv4Address("100.64.0.3"))
"""Mostly the client's own tunnel addresses; one spoof."""
TUN_SOURCES: tuple[IPAddress, ...] = (CIDR_HOST, REAL4, REAL6, INTERNET_HOST, IPv4Address("8.8.8.8"))
TUN_DESTINATIONS: tuple[IPAddress, ...] = (CL_TUN4, CL_TUN6, GW_TUN4, OTHER_CLIENT, IPv4Address("100.64.0.3"))
PORTS = (53, 80, 443, 5401, 54321, 0, 60, 61)
DATAGRAM_SOURCES: tuple[SocketAddr, ...] = (
    CL,
    RELAY,
    SocketAddr(RELAY.ip, 50000),
    SocketAddr(ip_address("198.18.0.1"), 4000),
    SocketAddr(ip_address("2001:db8::1"), 3478),
)
IDS = (str(CLIENT_ID), str(CIDR_ID), str(DNS_ID), str(INTERNET_ID), str(RELAY_ID), str(uuid.UUID(int=7)))
_HDR = struct.Struct("<IIQ")
_NONCE = struct.Struct("<IQ")


@dataclass(frozen=True, slots=True)
class Template:
    gateway: Gateway
    now: Instant
    conn: int
    """The portal connection handle."""
    session: Session
    """The client's sending session (its keys; the counter is the target's)."""
    first_counter: int
    received: tuple[tuple[SocketAddr, bytes], ...]
    """Every datagram the gateway received while it was set up, with its source."""
    portal_payloads: tuple[tuple[str, Any], ...]
    """Valid payloads of every portal event the gateway handles (for structured frames)."""

    def seal(self, counter: int, packet: bytes) -> bytes:
        """A transport message carrying ``packet`` from the client on its session."""
        s = self.session
        return _HDR.pack(4, s.peer_index, counter) + s.encrypt(_NONCE.pack(0, counter), packet, None)


def _portal_payloads(h: Harness) -> tuple[tuple[str, Any], ...]:
    auth = {"client_id": str(CLIENT_ID), "resource_id": str(CIDR_ID), "expires_at": 1_900_000_000}
    client = h.client_json()
    ice = {"username": "cluf", "password": "client-password-22chrs"}
    gw_ice = {"username": "gwuf", "password": "gateway-password-22chr"}
    return (
        (
            "init",
            {
                "interface": {"ipv4": str(GW_TUN4), "ipv6": str(GW_TUN6)},
                "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
                "relays": [relay_json()],
                "authorizations": [auth],
            },
        ),
        (
            "authorize_flow",
            {
                "ref": "ref-9",
                "resource": dns_resource("*.corp.test", FILTERS, uuid.UUID(int=7)),
                "client": client,
                "client_ice_credentials": ice,
                "gateway_ice_credentials": gw_ice,
                "expires_at": 1_900_000_000,
                "subject": {"actor_email": "a@example.com"},
            },
        ),
        (
            "allow_access",
            {
                "ref": "ref-10",
                "client_id": str(CLIENT_ID),
                "resource": cidr_resource("10.1.0.0/16", rid=uuid.UUID(int=8)),
                "expires_at": None,
                "payload": None,
                "client_ipv4": str(CL_TUN4),
                "client_ipv6": str(CL_TUN6),
            },
        ),
        ("reject_access", {"client_id": str(CLIENT_ID), "resource_id": str(CIDR_ID)}),
        ("reject_access", {"client_id": str(CLIENT_ID), "resource_id": str(DNS_ID)}),
        ("resource_updated", cidr_resource(filters=[{"protocol": "tcp"}])),
        ("access_authorization_expiry_updated", auth),
        ("relays_presence", {"disconnected_ids": [str(RELAY_ID)], "connected": []}),
        ("relays_presence", {"disconnected_ids": [], "connected": [relay_json()]}),
        (
            "ice_candidates",
            {"client_id": str(CLIENT_ID), "candidates": ["candidate:1 1 UDP 1 1.2.3.4 5 typ host"]},
        ),
        (
            "invalidate_ice_candidates",
            {"client_id": str(CLIENT_ID), "candidates": ["candidate:1 1 UDP 1 1.2.3.4 5 typ host"]},
        ),
    )


def build_template() -> Template:
    h = Harness()
    received: list[tuple[SocketAddr, bytes]] = []
    deliver = h.deliver

    def recording_deliver(src: SocketAddr, t: Transmit) -> None:
        if t.dst == GW:
            received.append((src, t.payload))
        deliver(src, t)

    h.deliver = recording_deliver  # type: ignore[method-assign]
    h.init()
    h.authorize(cidr_resource(filters=FILTERS))
    h.authorize(dns_resource("**.example.com"), ref="ref-2")
    h.authorize(internet_resource(), ref="ref-3")
    h.connect_client()
    h.send(build_assigned_ips(DNS_ID, "app.example.com", PROXY4))
    h.send(build_assigned_ips(DNS_ID, "app.example.com", PROXY6))
    for c in h.commands:
        if isinstance(c, ResolveDomain):
            h.gw.handle_input(h.now, DomainResolved(c.request_id, (REAL4, REAL6)))
    h.pump()
    h.advance(secs(1))
    tunnel = h.client.connections["gateway"].tunnel
    assert isinstance(tunnel, WireGuardPeer)
    session = tunnel.current_session
    assert session is not None and h.conn is not None, "the template client did not connect"
    return Template(
        gateway=h.gw,
        now=h.now,
        conn=h.conn,
        session=session,
        first_counter=session.send_counter + 1000,
        received=tuple(received),
        portal_payloads=_portal_payloads(h),
    )
