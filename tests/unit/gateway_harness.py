"""A client built from the core's parts, talking to a :class:`Gateway` over an in-memory network.

The client is a controlling :class:`Node` with a WireGuard initiator tunnel; a Firezone-like TURN relay
(``devpeers.relay``) sits beside them; the portal is played by hand: frames are pushed into the gateway's
channel and its pushes are recorded (candidates are carried to the client node). Time only moves with
:meth:`Harness.run_until` / :meth:`Harness.advance` (jumping to deadlines, checking R4/R5).
"""

from __future__ import annotations

import base64
import uuid
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from devpeers.relay import DevRelay
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import NANOS_PER_SEC, Instant, secs
from gateway_core.commands import Command, Exit, Transmit
from gateway_core.entropy import SeededEntropy
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import GatewayConfig
from gateway_core.node.events import InvalidateIceCandidate, NewIceCandidate
from gateway_core.node.node import Node, RelayConfig
from gateway_core.policy.nat import MAX_NAT_SESSIONS
from gateway_core.portal import phoenix
from gateway_core.portal.channel import (
    ClosePortal,
    ConnectPortal,
    PortalConnected,
    PortalFrameReceived,
    SendPortalFrame,
)
from gateway_core.turn.allocation import RelaySocket
from gateway_core.turn.credentials import firezone_password, firezone_username
from gateway_core.wireguard import WireGuardPeer, crypto
from gateway_core.wireguard.noise import InitiatorIdentifier
from gateway_core.wireguard.ratelimit import RateLimiter

GW = SocketAddr(IPv4Address("192.0.2.1"), 52625)
CL = SocketAddr(IPv4Address("198.51.100.7"), 52626)
RELAY = SocketAddr(IPv4Address("203.0.113.1"), 3478)
RELAY_ID = uuid.UUID("0a133356-7a9e-4b9a-b413-0d95a5720fd8")
SECRET = "relay-secret"
EPOCH = 1_700_000_000
"""Wall clock (Unix seconds) at ``now == 0``."""
GW_TUN4 = IPv4Address("100.64.0.1")
GW_TUN6 = IPv6Address("fd00:2021:1111::1")
CLIENT_ID = uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24")
CL_TUN4 = IPv4Address("100.64.0.2")
CL_TUN6 = IPv6Address("fd00:2021:1111::2")
GW_PRIV = bytes(range(1, 33))
CL_PRIV = bytes(range(2, 34))
PSK = bytes(range(3, 35))
GW_CREDS = ("gwuf", "gateway-password-22chr")
CL_CREDS = ("cluf", "client-password-22chrs")
CIDR_ID = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")
DNS_ID = uuid.UUID("619fbe83-bc95-4635-9a08-68da9a944c88")
INTERNET_ID = uuid.UUID("1106047c-cd5d-4151-b679-96b93da7383b")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def cidr_resource(
    address: str = "172.20.0.0/16", filters: list[dict[str, Any]] | None = None, rid: uuid.UUID = CIDR_ID
) -> dict[str, Any]:
    return {"id": str(rid), "type": "cidr", "address": address, "name": address, "filters": filters or []}


def dns_resource(
    address: str = "*.example.com", filters: list[dict[str, Any]] | None = None, rid: uuid.UUID = DNS_ID
) -> dict[str, Any]:
    return {"id": str(rid), "type": "dns", "address": address, "name": address, "filters": filters or []}


def internet_resource(rid: uuid.UUID = INTERNET_ID) -> dict[str, Any]:
    return {"id": str(rid), "type": "internet"}


def relay_json(addr: SocketAddr = RELAY, rid: uuid.UUID = RELAY_ID) -> dict[str, Any]:
    expiry = EPOCH + 90 * 86400
    return {
        "id": str(rid),
        "type": "turn",
        "addr": str(addr),
        "username": firezone_username(expiry, "salt"),
        "password": firezone_password(expiry, SECRET, "salt"),
        "expires_at": expiry,
    }


def make_client_node(priv: bytes = CL_PRIV) -> Node:
    ent = SeededEntropy(2)
    rl = RateLimiter(crypto.public_key(priv), ent.fork("rl"), Instant(0))

    def tunnel(cid: str, remote: bytes, psk: bytes | None, index: int, now: Instant) -> WireGuardPeer:
        return WireGuardPeer(
            static_private=priv,
            peer_public=remote,
            psk=psk,
            global_index=index,
            entropy=ent.fork(f"wg-{cid}"),
            now=now,
            wall_unix_ns=EPOCH * NANOS_PER_SEC + now,
            rate_limiter=rl,
        )

    return Node(ent, Instant(0), tunnel, InitiatorIdentifier(priv), controlling=True, rate_limiter=rl)


class Harness:
    def __init__(
        self,
        *,
        flow_logs: bool = False,
        join: bool = True,
        max_nat_sessions: int = MAX_NAT_SESSIONS,
        validate_checksums: bool = False,
    ) -> None:
        self.now = Instant(0)
        cfg = GatewayConfig(
            api_url="wss://portal.test",
            token="tok",
            firezone_id="gw-1",
            flow_logs=flow_logs,
            max_nat_sessions=max_nat_sessions,
            validate_checksums=validate_checksums,
        )
        self.gw = Gateway(
            config=cfg,
            private_key=GW_PRIV,
            entropy=SeededEntropy(1),
            now=self.now,
            utc_ns=EPOCH * NANOS_PER_SEC,
        )
        self.client = make_client_node()
        self.relay = DevRelay([RELAY], [SocketAddr(RELAY.ip, 0)], SECRET, SeededEntropy(10))
        user = firezone_username(EPOCH + 90 * 86400, "salt")
        pw = firezone_password(EPOCH + 90 * 86400, SECRET, "salt")
        self.client.update_relays([], [RelayConfig("r", RelaySocket(RELAY), user, pw)], self.now)
        self.conn: int | None = None
        self.pushes: list[tuple[str, Any]] = []
        self.tun: list[bytes] = []
        """IP packets the gateway wrote to its TUN (returned by handle_datagram)."""
        self.client_rx: list[bytes] = []
        """IP packets the client decrypted."""
        self.commands: list[Command] = []
        """Every other command of the gateway (resolutions, DNS, interface, Exit...)."""
        self.block_direct = False
        self.hold_to_relay: list[Transmit] | None = None
        """When a list: the gateway's datagrams to the relay are kept here instead of delivered."""
        self.portal_closed = False
        if join:
            self.pump()

    # --- the network ----------------------------------------------------------------------------

    def deliver(self, src: SocketAddr, t: Transmit) -> None:
        if self.hold_to_relay is not None and src == GW and t.dst == RELAY:
            self.hold_to_relay.append(t)
            return
        if t.dst == RELAY or t.dst in self.relay._by_relayed:
            for out in self.relay.handle(self.now, t.dst, src, t.payload):
                assert out.src is not None
                self.deliver(out.src, Transmit(out.src, out.dst, out.payload))
            return
        if self.block_direct and src in (GW, CL):
            return
        if t.dst == GW:
            got = self.gw.handle_datagram(self.now, GW, src, t.payload)
            if got is not None:
                self.tun.append(got)
        elif t.dst == CL:
            out = self.client.handle_datagram(self.now, CL, src, t.payload)
            if out is not None:
                self.client_rx.append(out[1])

    def _portal_frame(self, text: str) -> None:
        f = phoenix.decode_frame(text)
        assert self.conn is not None
        if f.event in (phoenix.PHX_JOIN, phoenix.HEARTBEAT, "flow_authorized", "connection_ready"):
            if f.event not in (phoenix.PHX_JOIN, phoenix.HEARTBEAT):
                self.pushes.append((f.event, f.payload))
            reply = phoenix.encode_frame(f.topic, phoenix.PHX_REPLY, {"status": "ok", "response": {}}, f.ref)
            self.gw.handle_input(self.now, PortalFrameReceived(self.conn, reply))
            return
        self.pushes.append((f.event, f.payload))
        if f.event == "broadcast_ice_candidates":
            for c in f.payload["candidates"]:
                self.client.add_remote_candidate("gateway", c, self.now)
        elif f.event == "broadcast_invalidated_ice_candidates":
            for c in f.payload["candidates"]:
                self.client.remove_remote_candidate("gateway", c, self.now)

    def pump(self) -> None:
        for _ in range(10_000):
            moved = False
            while (c := self.gw.poll_command()) is not None:
                moved = True
                if isinstance(c, Transmit):
                    self.deliver(GW, c)
                elif isinstance(c, ConnectPortal):
                    self.conn = c.conn
                    self.gw.handle_input(self.now, PortalConnected(c.conn))
                elif isinstance(c, SendPortalFrame):
                    self._portal_frame(c.text)
                elif isinstance(c, ClosePortal):
                    self.portal_closed = True
                else:
                    self.commands.append(c)
            while (t := self.client.poll_command()) is not None:
                moved = True
                assert isinstance(t, Transmit)
                self.deliver(CL, t)
            while (e := self.client.poll_event()) is not None:
                moved = True
                if isinstance(e, NewIceCandidate):
                    self.push("ice_candidates", {"client_id": str(CLIENT_ID), "candidates": [e.candidate]})
                elif isinstance(e, InvalidateIceCandidate):
                    self.push(
                        "invalidate_ice_candidates",
                        {"client_id": str(CLIENT_ID), "candidates": [e.candidate]},
                    )
            if not moved:
                return
        raise AssertionError("livelock")

    def run_until(self, t: int) -> None:
        for _ in range(100_000):
            ds = [d for d in (self.gw.poll_timeout(), self.client.poll_timeout()) if d is not None]
            for d in ds:
                assert d.at >= self.now  # R4
            if not ds or min(d.at for d in ds) > t:
                break
            self.now = Instant(min(d.at for d in ds))
            self.gw.handle_timeout(self.now)
            self.client.handle_timeout(self.now)
            after = self.gw.poll_timeout()
            assert after is None or after.at > self.now, after  # R5
            self.pump()
        self.now = Instant(max(self.now, t))

    def advance(self, d: int) -> None:
        self.run_until(self.now + d)

    # --- the portal -----------------------------------------------------------------------------

    def push(self, event: str, payload: Any) -> None:
        assert self.conn is not None
        self.gw.handle_input(
            self.now, PortalFrameReceived(self.conn, phoenix.encode_frame("gateway", event, payload, None))
        )
        self.pump()

    def init(
        self, authorizations: list[dict[str, Any]] | None = None, relays: list[Any] | None = None
    ) -> None:
        self.push(
            "init",
            {
                "interface": {"ipv4": str(GW_TUN4), "ipv6": str(GW_TUN6)},
                "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
                "relays": [relay_json()] if relays is None else relays,
                "authorizations": authorizations or [],
            },
        )
        self.advance(secs(1))

    def client_json(self) -> dict[str, Any]:
        return {
            "id": str(CLIENT_ID),
            "public_key": b64(crypto.public_key(CL_PRIV)),
            "preshared_key": b64(PSK),
            "ipv4": str(CL_TUN4),
            "ipv6": str(CL_TUN6),
            "version": "1.4.5",
        }

    def authorize(self, resource: dict[str, Any], expires_at: int | None = None, ref: str = "ref-1") -> None:
        self.push(
            "authorize_flow",
            {
                "ref": ref,
                "resource": resource,
                "client": self.client_json(),
                "client_ice_credentials": {"username": CL_CREDS[0], "password": CL_CREDS[1]},
                "gateway_ice_credentials": {"username": GW_CREDS[0], "password": GW_CREDS[1]},
                "expires_at": expires_at,
                "subject": {"actor_email": "a@example.com"},
            },
        )

    def connect_client(self) -> None:
        gw_pub = crypto.public_key(GW_PRIV)
        if "gateway" not in self.client.connections:
            self.client.upsert_connection("gateway", gw_pub, PSK, CL_CREDS, GW_CREDS, self.now)
            self.pump()
        self.advance(secs(3))

    def setup(self, resource: dict[str, Any], expires_at: int | None = None) -> None:
        """init, authorize ``resource``, connect the client."""
        self.init()
        self.authorize(resource, expires_at)
        self.connect_client()

    # --- the data plane -------------------------------------------------------------------------

    def send(self, packet: bytes) -> bytes | None:
        """The client sends ``packet`` through the tunnel; what the gateway wrote to its TUN (if anything)."""
        before = len(self.tun)
        t = self.client.encapsulate("gateway", packet, self.now)
        assert t is not None, "client connection not ready"
        self.deliver(CL, t)
        self.pump()
        return self.tun[-1] if len(self.tun) > before else None

    def from_tun(self, packet: bytes) -> bytes | None:
        """``packet`` arrives on the gateway's TUN; what the client decrypted (if anything)."""
        before = len(self.client_rx)
        t = self.gw.handle_tun_packet(self.now, packet)
        if t is not None:
            self.deliver(GW, t)
        self.pump()
        return self.client_rx[-1] if len(self.client_rx) > before else None

    def last_client_rx(self, before: int) -> list[bytes]:
        return self.client_rx[before:]

    def events(self, name: str) -> list[Any]:
        return [p for e, p in self.pushes if e == name]

    def exit_command(self) -> Exit | None:
        return next((c for c in self.commands if isinstance(c, Exit)), None)

    def drops(self) -> dict[str, int]:
        return {k[5:]: v for k, v in self.gw.stats().items() if k.startswith("drop.")}


def addr(ip: str) -> IPAddress:
    from ipaddress import ip_address

    return ip_address(ip)
