"""The Gateway facade, control plane: every portal message (``rust/connlib/tunnel/src/messages/gateway.rs``)
against a client built from the core's parts (controlling node + WireGuard initiator) and a relay, the portal
played by hand."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import NANOS_PER_SEC, Instant, secs
from gateway_core.commands import Exit
from gateway_core.control import relay_configs
from gateway_core.dns.servers import BindDnsServers, DnsServerBindFailed, RetryDnsServerBind
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import UsageError
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import (
    DomainResolved,
    DomainResolveFailed,
    GatewayConfig,
    ResolveDomain,
    WallClockAnchor,
)
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import ConfigureInterface, InterfaceConfigFailed, InterfaceConfigured
from gateway_core.policy.p2p_control import GOODBYE_PACKET
from gateway_core.portal.channel import ConnectPortal, PortalConnectFailed
from gateway_core.portal.model import TurnRelay, decode_relay
from gateway_core.wire.ipbuild import build_udp_packet
from tests.unit.gateway_harness import (
    CIDR_ID,
    CL_TUN4,
    CL_TUN6,
    CLIENT_ID,
    DNS_ID,
    EPOCH,
    GW_PRIV,
    GW_TUN4,
    GW_TUN6,
    RELAY,
    RELAY_ID,
    Harness,
    cidr_resource,
    dns_resource,
    relay_json,
)

CID = str(CLIENT_ID)
RES = ip_address("172.20.0.5")


def udp_to(dst: str, dport: int = 80) -> bytes:
    return build_udp_packet(CL_TUN4, ip_address(dst), 40000, dport, b"data")


# --- init -----------------------------------------------------------------------------------------


def _configured(h: Harness) -> None:
    """Answer the latest ``ConfigureInterface`` as the IO layer does when both addresses were added."""
    cfg = [c for c in h.commands if isinstance(c, ConfigureInterface)][-1].config
    h.gw.handle_input(h.now, InterfaceConfigured(cfg, True, True))
    h.pump()


def _binds(h: Harness) -> list[BindDnsServers]:
    return [c for c in h.commands if isinstance(c, BindDnsServers)]


def test_init_configures_interface_and_binds_dns_servers_once_per_address_change() -> None:
    h = Harness()
    h.init()
    cfgs = [c for c in h.commands if isinstance(c, ConfigureInterface)]
    assert [(c.config.ipv4, c.config.ipv6) for c in cfgs] == [(GW_TUN4, GW_TUN6)]
    assert h.gw.node.allocations  # the relay of init
    _configured(h)
    assert _binds(h) == [BindDnsServers((SocketAddr(GW_TUN4, 53535), SocketAddr(GW_TUN6, 53535)))]
    h.init()  # the same addresses: the interface is re-applied, the DNS servers stay
    _configured(h)
    assert len([c for c in h.commands if isinstance(c, ConfigureInterface)]) == 2
    assert len(_binds(h)) == 1
    h.push(
        "init",
        {
            "interface": {"ipv4": "100.64.0.9", "ipv6": "fd00:2021:1111::9"},
            "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
        },
    )
    assert len(_binds(h)) == 1  # the new addresses are not on the interface yet
    _configured(h)
    assert _binds(h)[-1].addresses == (
        SocketAddr(IPv4Address("100.64.0.9"), 53535),
        SocketAddr(IPv6Address("fd00:2021:1111::9"), 53535),
    )


def test_dns_servers_are_ordered_only_after_the_interface_is_configured() -> None:
    # The IO layer runs ConfigureInterface and the DNS binds concurrently: a bind ordered together with
    # the configuration raced the addresses it needs and failed with EADDRNOTAVAIL at every start.
    h = Harness()
    h.init()
    assert any(isinstance(c, ConfigureInterface) for c in h.commands)
    assert _binds(h) == []
    h.advance(secs(5))
    assert _binds(h) == [] and not any(isinstance(c, RetryDnsServerBind) for c in h.commands)
    _configured(h)
    assert _binds(h) == [BindDnsServers((SocketAddr(GW_TUN4, 53535), SocketAddr(GW_TUN6, 53535)))]
    # A late answer to an older configuration orders nothing for the addresses it no longer has.
    old = [c for c in h.commands if isinstance(c, ConfigureInterface)][-1].config
    h.push(
        "init",
        {
            "interface": {"ipv4": "100.64.0.9", "ipv6": "fd00:2021:1111::9"},
            "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
        },
    )
    h.gw.handle_input(h.now, InterfaceConfigured(old, True, True))
    h.pump()
    assert len(_binds(h)) == 1


def test_dns_bind_failure_is_retried_not_fatal() -> None:
    h = Harness()
    h.init()
    _configured(h)
    a6 = SocketAddr(GW_TUN6, 53535)
    h.gw.handle_input(h.now, DnsServerBindFailed(a6, "EADDRNOTAVAIL"))
    h.advance(secs(1))
    assert RetryDnsServerBind(a6) in h.commands
    assert h.exit_command() is None
    assert h.gw.stats()["gateway.dns_bind_failed"] == 1


def test_init_retains_listed_authorizations_and_syncs_expiry() -> None:
    h = Harness()
    h.init()
    h.authorize(cidr_resource())
    h.authorize(dns_resource(), ref="ref-2")
    policy = h.gw.peers.clients[CLIENT_ID]
    assert sorted(policy.authorizations.ids()) == sorted([CIDR_ID, DNS_ID])
    later = EPOCH + 7200
    h.init([{"client_id": CID, "resource_id": str(CIDR_ID), "expires_at": later}])
    assert policy.authorizations.ids() == [CIDR_ID]
    auth = policy.authorizations.get(CIDR_ID)
    assert auth is not None and auth.expires_at == later
    # An init that lists nothing of the client (its last resource was revoked while the gateway was away
    # from the portal) revokes everything; the next sweep says goodbye (decision 0123).
    h.init([])
    assert policy.authorizations.ids() == []
    h.advance(secs(2))
    assert CLIENT_ID not in h.gw.peers.clients


def test_relay_list_conversion_merges_adjacent_families_and_skips_stun() -> None:
    v4 = relay_json()
    v6 = relay_json(SocketAddr(IPv6Address("2001:db8::1"), 3478))
    stun = {"id": str(uuid.uuid4()), "type": "stun", "addr": "192.0.2.9:3478"}
    relays = [decode_relay(r) for r in (v4, v6, stun)]
    cfgs = relay_configs(relays)
    assert len(cfgs) == 1 and cfgs[0].id == str(RELAY_ID)
    assert cfgs[0].socket.v4 == RELAY and cfgs[0].socket.v6 == SocketAddr(IPv6Address("2001:db8::1"), 3478)
    assert cfgs[0].realm == "firezone"
    assert isinstance(relays[0], TurnRelay)


# --- authorize_flow -------------------------------------------------------------------------------


def test_authorize_flow_replies_flow_authorized_and_signals_candidates() -> None:
    h = Harness()
    h.init()
    h.authorize(cidr_resource(), expires_at=EPOCH + 3600, ref="the-ref")
    assert h.events("flow_authorized") == [{"ref": "the-ref"}]
    cands = h.events("broadcast_ice_candidates")
    assert cands and all(c["client_ids"] == [CID] for c in cands)
    prios = [int(s.split()[3]) for s in cands[0]["candidates"]]
    assert prios == sorted(prios, reverse=True)
    policy = h.gw.peers.clients[CLIENT_ID]
    assert (policy.client_v4, policy.client_v6) == (CL_TUN4, CL_TUN6)
    assert policy.properties.actor_email == "a@example.com" and policy.properties.version == "1.4.5"
    h.connect_client()
    assert h.gw.node.connections[CID].peer_socket is not None
    assert h.send(udp_to("172.20.0.5")) is not None


def test_authorize_flow_again_updates_the_expiry_and_keeps_the_connection() -> None:
    h = Harness()
    h.setup(cidr_resource(), expires_at=EPOCH + 60)
    conn = h.gw.node.connections[CID]
    h.authorize(cidr_resource(), expires_at=EPOCH + 3600, ref="again")
    assert h.gw.node.connections[CID] is conn  # same credentials and keys: reused
    auth = h.gw.peers.clients[CLIENT_ID].authorizations.get(CIDR_ID)
    assert auth is not None and auth.expires_at == EPOCH + 3600  # decision 0041
    assert h.events("flow_authorized")[-1] == {"ref": "again"}


def test_authorize_flow_without_relays_reconnects_instead_of_replying() -> None:
    h = Harness()
    h.init(relays=[])
    first = h.conn
    h.authorize(cidr_resource())
    assert h.events("flow_authorized") == []
    assert h.gw.stats()["gateway.no_relays"] == 1
    assert h.conn != first  # a fresh WebSocket, for a fresh init


def test_ice_candidates_in_both_directions_and_invalidation() -> None:
    h = Harness()
    h.setup(cidr_resource())
    agent = h.gw.node.connections[CID].agent
    remotes = agent.remote_candidates()
    assert remotes
    victim = next(c for c in remotes if c.kind.value == "host")
    h.push(
        "invalidate_ice_candidates", {"client_id": CID, "candidates": [victim.to_sdp(), "not a candidate"]}
    )
    assert victim not in agent.remote_candidates()
    h.push(
        "ice_candidates", {"client_id": str(uuid.uuid4()), "candidates": [victim.to_sdp()]}
    )  # unknown: no-op


def test_relays_presence_invalidates_and_adds() -> None:
    h = Harness()
    h.setup(cidr_resource())
    other = uuid.UUID("e95f9517-2152-4677-a16a-fbb2687050a3")
    h.push("relays_presence", {"disconnected_ids": [str(RELAY_ID)], "connected": []})
    gone = h.events("broadcast_invalidated_ice_candidates")
    assert gone and any("typ relay" in c for c in gone[-1]["candidates"])
    assert str(RELAY_ID) not in h.gw.node.allocations
    h.push("relays_presence", {"disconnected_ids": [], "connected": [relay_json(rid=other)]})
    assert str(other) in h.gw.node.allocations


# --- revocation, updates, expiry ------------------------------------------------------------------


def test_reject_access_of_the_last_resource_says_goodbye() -> None:
    h = Harness()
    h.setup(cidr_resource())
    before = len(h.client_rx)
    h.push("reject_access", {"client_id": CID, "resource_id": str(CIDR_ID)})
    assert CLIENT_ID not in h.gw.peers.clients
    assert CID not in h.gw.node.connections
    assert GOODBYE_PACKET in h.client_rx[before:]


def test_reject_access_of_one_of_two_resources_keeps_the_client() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.authorize(cidr_resource("10.0.0.0/8", rid=DNS_ID), ref="r2")
    h.push("reject_access", {"client_id": CID, "resource_id": str(CIDR_ID)})
    assert h.gw.peers.clients[CLIENT_ID].authorizations.ids() == [DNS_ID]
    assert CID in h.gw.node.connections
    assert h.send(udp_to("172.20.0.5")) is None  # revoked: prohibited
    assert h.send(udp_to("10.1.2.3")) is not None
    h.push("reject_access", {"client_id": str(uuid.uuid4()), "resource_id": str(CIDR_ID)})  # unknown: no-op


def test_resource_updated_replaces_filters() -> None:
    h = Harness()
    h.setup(cidr_resource(filters=[{"protocol": "udp", "port_range_start": 80, "port_range_end": 80}]))
    assert h.send(udp_to("172.20.0.5", 80)) is not None
    h.push("resource_updated", cidr_resource(filters=[{"protocol": "tcp"}]))
    assert h.send(udp_to("172.20.0.5", 80)) is None
    assert h.drops()["filtered"] == 1


def test_access_authorization_expiry_updated_expires_within_a_second() -> None:
    h = Harness()
    h.setup(cidr_resource(), expires_at=EPOCH + 3600)
    expiry = EPOCH + h.now // NANOS_PER_SEC + 2
    h.push(
        "access_authorization_expiry_updated",
        {"client_id": CID, "resource_id": str(CIDR_ID), "expires_at": expiry},
    )
    assert CLIENT_ID in h.gw.peers.clients
    before = len(h.client_rx)
    h.advance(secs(3))
    assert CLIENT_ID not in h.gw.peers.clients
    assert GOODBYE_PACKET in h.client_rx[before:]


def test_expiry_from_authorize_flow_and_wall_clock_anchor() -> None:
    h = Harness()
    h.setup(cidr_resource(), expires_at=EPOCH + 3600)
    h.advance(secs(2))
    assert CLIENT_ID in h.gw.peers.clients
    # the wall clock jumps an hour ahead (NTP): re-anchor, and the next sweep expires the flow
    h.gw.handle_input(h.now, WallClockAnchor((EPOCH + 3601) * NANOS_PER_SEC))
    assert h.gw.utc_ns(h.now) == (EPOCH + 3601) * NANOS_PER_SEC
    h.advance(secs(2))
    assert CLIENT_ID not in h.gw.peers.clients


# --- legacy messages ------------------------------------------------------------------------------


def _legacy_client(domain: dict[str, object] | None = None) -> dict[str, object]:
    h = Harness(join=False)
    c = h.client_json()
    payload: dict[str, object] = {
        "ice_parameters": {"username": "cluf", "password": "client-password-22chrs"}
    }
    if domain is not None:
        payload["domain"] = domain
    peer = {k: c[k] for k in ("public_key", "preshared_key", "ipv4", "ipv6")}
    return {"id": CID, "peer": {**peer, "persistent_keepalive": 25}, "payload": payload}


def test_request_connection_without_domain_answers_connection_ready() -> None:
    h = Harness()
    h.init()
    h.push(
        "request_connection",
        {"ref": "legacy", "resource": cidr_resource(), "client": _legacy_client(), "expires_at": None},
    )
    (ready,) = h.events("connection_ready")
    assert ready["ref"] == "legacy"
    ice = ready["gateway_payload"]["ConnectionAccepted"]["ice_parameters"]
    assert len(ice["username"]) == 16 and len(ice["password"]) == 22
    assert h.gw.node.connections[CID].agent.local_ufrag == ice["username"]
    assert CIDR_ID in h.gw.peers.clients[CLIENT_ID].authorizations


def test_request_connection_with_domain_resolves_then_sets_up_nat() -> None:
    h = Harness()
    h.init()
    domain = {"name": "app.example.com", "proxy_ips": ["100.96.0.1", "fd00:2021:1111:8000::"]}
    h.push(
        "request_connection",
        {"ref": "r", "resource": dns_resource(), "client": _legacy_client(domain), "expires_at": None},
    )
    (req,) = [c for c in h.commands if isinstance(c, ResolveDomain)]
    assert req.domain == "app.example.com" and h.events("connection_ready") == []
    h.gw.handle_input(
        h.now, DomainResolved(req.request_id, (ip_address("10.0.0.7"), ip_address("2001:db8::7")))
    )
    h.pump()
    assert len(h.events("connection_ready")) == 1
    nat = h.gw.peers.clients[CLIENT_ID].nat.translations
    assert nat[ip_address("100.96.0.1")].resolved_ip == ip_address("10.0.0.7")
    assert nat[ip_address("fd00:2021:1111:8000::")].resolved_ip == ip_address("2001:db8::7")  # decision 0044


def test_request_connection_resolution_failure_sends_nothing() -> None:
    h = Harness()
    h.init()
    domain = {"name": "app.example.com", "proxy_ips": ["100.96.0.1"]}
    h.push(
        "request_connection",
        {"ref": "r", "resource": dns_resource(), "client": _legacy_client(domain), "expires_at": None},
    )
    (req,) = [c for c in h.commands if isinstance(c, ResolveDomain)]
    h.gw.handle_input(h.now, DomainResolveFailed(req.request_id, "NXDOMAIN"))
    h.pump()
    assert h.events("connection_ready") == [] and CLIENT_ID not in h.gw.peers.clients


def test_request_connection_with_mismatching_domain_drops_the_client() -> None:
    h = Harness()
    h.setup(cidr_resource())
    domain = {"name": "other.org", "proxy_ips": ["100.96.0.1"]}
    h.push(
        "request_connection",
        {"ref": "r", "resource": dns_resource(), "client": _legacy_client(domain), "expires_at": None},
    )
    (req,) = [c for c in h.commands if isinstance(c, ResolveDomain)]
    h.gw.handle_input(h.now, DomainResolved(req.request_id, (ip_address("10.0.0.7"),)))
    h.pump()
    assert h.events("connection_ready") == []
    assert CLIENT_ID not in h.gw.peers.clients  # the whole peer state goes, as in the reference


def test_allow_access_with_payload_and_failed_resolution_grants_access() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.push(
        "allow_access",
        {
            "ref": "x",
            "client_id": CID,
            "resource": dns_resource(),
            "expires_at": None,
            "payload": {"name": "app.example.com", "proxy_ips": ["100.96.0.1"]},
            "client_ipv4": str(CL_TUN4),
            "client_ipv6": str(CL_TUN6),
        },
    )
    (req,) = [c for c in h.commands if isinstance(c, ResolveDomain)]
    h.advance(secs(11))  # no answer: the 10 s resolution timeout counts as a failure
    policy = h.gw.peers.clients[CLIENT_ID]
    assert DNS_ID in policy.authorizations
    assert policy.nat.translations[ip_address("100.96.0.1")].resolved_ip is None
    assert h.gw.stats()["gateway.resolve_timeout"] == 1
    h.gw.handle_input(h.now, DomainResolved(req.request_id, ()))  # too late: unmatched
    assert h.gw.stats()["gateway.resolve_unmatched"] == 1


def test_allow_access_without_payload() -> None:
    h = Harness()
    h.setup(cidr_resource())
    h.push(
        "allow_access",
        {
            "ref": "x",
            "client_id": CID,
            "resource": cidr_resource("10.0.0.0/8", rid=DNS_ID),
            "expires_at": EPOCH + 100,
            "client_ipv4": str(CL_TUN4),
            "client_ipv6": str(CL_TUN6),
        },
    )
    assert h.send(udp_to("10.9.9.9")) is not None


# --- shutdown, failures, misc ---------------------------------------------------------------------


def test_shutdown_says_goodbye_closes_the_portal_and_exits_last() -> None:
    h = Harness()
    h.setup(cidr_resource())
    before = len(h.client_rx)
    h.gw.handle_input(h.now, ShutdownRequested())
    out = []
    while (c := h.gw.poll_command()) is not None:
        out.append(c)
    assert isinstance(out[-1], Exit) and out[-1].code == 0
    assert sum(isinstance(c, Exit) for c in out) == 1
    for c in out[:-1]:
        if hasattr(c, "dst"):
            h.deliver(SocketAddr(IPv4Address("192.0.2.1"), 52625), c)  # type: ignore[arg-type]
    assert GOODBYE_PACKET in h.client_rx[before:]
    assert not h.gw.peers.clients and not h.gw.node.connections
    # portal messages after shutdown are ignored
    h.gw.handle_input(h.now, ShutdownRequested())
    assert h.gw.poll_command() is None


def test_fatal_portal_error_exits_with_1() -> None:
    h = Harness(join=False)
    c = h.gw.poll_command()
    assert isinstance(c, ConnectPortal)
    h.gw.handle_input(h.now, PortalConnectFailed(c.conn, "401", status=401))
    h.pump()
    ex = h.exit_command()
    assert ex is not None and ex.code == 1


def test_interface_failure_is_fatal() -> None:
    h = Harness()
    h.init()
    cfg = next(c for c in h.commands if isinstance(c, ConfigureInterface)).config
    h.gw.handle_input(h.now, InterfaceConfigFailed(cfg, "no such device"))
    h.pump()
    ex = h.exit_command()
    assert ex is not None and ex.code == 1


def test_send_failed_is_counted_and_foreign_inputs_raise() -> None:
    h = Harness()
    h.gw.handle_input(h.now, SendFailed(RELAY, "ENETUNREACH"))
    assert h.gw.stats()["gateway.send_failed"] == 1
    with pytest.raises(UsageError):
        h.gw.handle_input(h.now, Input())
    with pytest.raises(UsageError):
        h.gw.handle_timeout(Instant(h.now - 1))


def test_unknown_and_malformed_portal_messages_are_dropped() -> None:
    h = Harness()
    h.push("no_such_event", {})
    h.push("reject_access", {"client_id": "not a uuid"})
    d = h.drops()
    assert d["portal_unknown_event"] == 1 and d["portal_bad_payload"] == 1


def test_first_command_is_connect_portal_and_poll_timeout_is_never_in_the_past() -> None:
    gw = Gateway(
        config=GatewayConfig(api_url="wss://portal.test", token="t", firezone_id="gw"),
        private_key=GW_PRIV,
        entropy=SeededEntropy(5),
        now=Instant(secs(100)),
        utc_ns=EPOCH * NANOS_PER_SEC,
    )
    assert isinstance(gw.poll_command(), ConnectPortal)
    d = gw.poll_timeout()
    assert d is not None and d.at >= secs(100)
    with pytest.raises(UsageError):
        Gateway(
            config=GatewayConfig(api_url="wss://p", token="t", firezone_id="g"),
            private_key=b"short",
            entropy=SeededEntropy(5),
            now=Instant(0),
            utc_ns=0,
        )


def test_dns_servers_only_on_the_families_the_interface_got() -> None:
    h = Harness()
    h.init()
    cfg = next(c for c in h.commands if isinstance(c, ConfigureInterface)).config
    h.gw.handle_input(h.now, InterfaceConfigured(cfg, True, False, ("IPv6 disabled",)))
    h.pump()
    binds = [c for c in h.commands if isinstance(c, BindDnsServers)]
    assert binds[-1] == BindDnsServers((SocketAddr(GW_TUN4, 53535),))
    h.gw.handle_input(h.now, InterfaceConfigured(cfg, True, False))  # the same result: nothing new
    h.pump()
    assert len([c for c in h.commands if isinstance(c, BindDnsServers)]) == len(binds)
