"""Typed portal messages: every spec fixture decoded, re-encoded and compared; malformed payloads; fuzz."""

from __future__ import annotations

import copy
import json
import uuid
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError
from gateway_core.portal import phoenix
from gateway_core.portal.messages import (
    INBOUND_EVENTS,
    OUTBOUND_EVENTS,
    AccessAuthorizationExpiryUpdated,
    AllowAccess,
    AuthorizeFlow,
    BroadcastIceCandidates,
    ConnectionReady,
    FlowAuthorized,
    IceCandidates,
    Init,
    InvalidateIceCandidates,
    RejectAccess,
    RelaysPresence,
    RequestConnection,
    ResourceUpdated,
    UnknownEvent,
    decode_inbound,
    decode_outbound,
)
from gateway_core.portal.model import (
    CidrResource,
    DnsResource,
    Filter,
    FilterProtocol,
    IceCredentials,
    InternetResource,
    TurnRelay,
    decode_resource,
)
from tests.unit.portal import spec_fixtures as fx


def _patched(payload: Any, drop: tuple[str, ...] = (), put: dict[str, Any] | None = None) -> Any:
    """The fixture payload with ignored fields dropped and defaulted fields set (dotted paths)."""
    out = copy.deepcopy(payload)
    for path in drop:
        *parents, last = path.split(".")
        node = out
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[last]
    for path, value in (put or {}).items():
        *parents, last = path.split(".")
        node = out
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return out


GOLDEN: list[tuple[str, str, type, tuple[str, ...], dict[str, Any]]] = [
    ("init-minimal", fx.INIT_MINIMAL, Init, (), {"authorizations": [], "account_slug": None, "relays": []}),
    ("init-full", fx.INIT_FULL, Init, (), {}),
    ("authorize_flow", fx.AUTHORIZE_FLOW, AuthorizeFlow, ("actor", "flow_id"), {"subject": {}}),
    ("request_connection", fx.REQUEST_CONNECTION, RequestConnection, ("actor", "flow_id", "relays"), {}),
    ("allow_access", fx.ALLOW_ACCESS, AllowAccess, (), {}),
    ("reject_access", fx.REJECT_ACCESS, RejectAccess, (), {}),
    (
        "resource_updated",
        fx.RESOURCE_UPDATED,
        ResourceUpdated,
        (),
        {"filters.1": {"protocol": "tcp", "port_range_start": 0, "port_range_end": 65535}},
    ),
    ("expiry_updated", fx.EXPIRY_UPDATED, AccessAuthorizationExpiryUpdated, (), {}),
    ("relays_presence", fx.RELAYS_PRESENCE, RelaysPresence, (), {}),
    ("invalidate_ice_candidates", fx.INVALIDATE_ICE_CANDIDATES, InvalidateIceCandidates, (), {}),
]


@pytest.mark.parametrize(("name", "text", "cls", "drop", "put"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_inbound(name: str, text: str, cls: type, drop: tuple[str, ...], put: dict[str, Any]) -> None:
    frame = phoenix.decode_frame(text)
    assert frame.topic == "gateway" and frame.ref is None
    msg = decode_inbound(frame.event, frame.payload)
    assert type(msg) is cls
    encoded = msg.encode()
    assert encoded == _patched(frame.payload, drop, put)
    # Re-encoding is stable: decode(encode(m)) == m, and the frame text round-trips too.
    assert decode_inbound(frame.event, json.loads(json.dumps(encoded))) == msg
    again = phoenix.decode_frame(phoenix.encode_frame("gateway", frame.event, encoded, None))
    assert decode_inbound(again.event, again.payload) == msg


def test_init_full_fields() -> None:
    f = phoenix.decode_frame(fx.INIT_FULL)
    m = decode_inbound(f.event, f.payload)
    assert isinstance(m, Init)
    assert m.interface.ipv4 == IPv4Address("100.115.164.78")
    assert m.interface.ipv6 == IPv6Address("fd00:2021:1111::2c:f6ab")
    assert m.account_slug == "mycorp"
    assert [a.expires_at for a in m.authorizations] == [1729813989]
    assert len(m.relays) == 2
    r0, r1 = m.relays
    assert isinstance(r0, TurnRelay) and isinstance(r1, TurnRelay)
    assert r0.addr == SocketAddr(IPv4Address("172.28.0.101"), 3478)
    assert str(r1.addr) == "[2001:db8::101]:3478"
    assert r0.id == r1.id == uuid.UUID("0a133356-7a9e-4b9a-b413-0d95a5720fd8")


def test_authorize_flow_fields() -> None:
    f = phoenix.decode_frame(fx.AUTHORIZE_FLOW)
    m = decode_inbound(f.event, f.payload)
    assert isinstance(m, AuthorizeFlow)
    assert m.ref.startswith("SFMyNTY.")
    assert m.resource == CidrResource(
        uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b"), IPv4Network("172.20.0.0/16"), "MyCorp Network", ()
    )
    assert len(m.client.public_key) == 32 and len(m.client.preshared_key) == 32
    assert m.client.ipv4 == IPv4Address("100.93.74.51")
    assert m.gateway_ice_credentials == IceCredentials("ejqt", "zfjrrjdkbci42t2axyd45a")
    assert m.expires_at == 1729813989


def test_request_connection_fields() -> None:
    f = phoenix.decode_frame(fx.REQUEST_CONNECTION)
    m = decode_inbound(f.event, f.payload)
    assert isinstance(m, RequestConnection)
    assert isinstance(m.resource, DnsResource) and m.resource.address == "?.httpbin"
    assert m.resource.filters[-1] == Filter(FilterProtocol.ICMP)
    assert m.resource.filters[0] == Filter(FilterProtocol.TCP, 80, 80)
    assert m.client.domain is not None and m.client.domain.name == "download.httpbin"
    assert len(m.client.domain.proxy_ips) == 8
    assert m.client.peer.persistent_keepalive == 25
    assert m.client.ice_parameters.username == "aYaH"


def test_resources_fixture() -> None:
    items = json.loads(fx.RESOURCES)
    res = [decode_resource(r) for r in items]
    assert isinstance(res[0], CidrResource) and isinstance(res[1], DnsResource)
    assert res[2] == InternetResource(uuid.UUID("1106047c-cd5d-4151-b679-96b93da7383b"))
    assert [r.encode() for r in res] == _patched(items, ("2.not", "2.some_other"))


def test_gateway_frames_exact_text() -> None:
    assert phoenix.encode_frame("gateway", "phx_join", None, 0) == fx.JOIN
    assert phoenix.encode_frame("phoenix", "heartbeat", {}, 17) == fx.HEARTBEAT
    fa = FlowAuthorized("SFMyNTY.g2gDbQ")
    assert phoenix.encode_frame("gateway", fa.EVENT, fa.encode(), 5) == fx.FLOW_AUTHORIZED_ASCII
    b = BroadcastIceCandidates(
        (uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24"),),
        (
            "candidate:fffeff6435be70ddbf995982 1 udp 2130706431 10.0.0.5 52625 typ host ufrag ejqt",
            "candidate:7854631899965427361 1 udp 1694498559 172.28.0.100 47717 typ srflx raddr 0.0.0.0 rport 0",  # noqa: E501
        ),
    )
    assert phoenix.encode_frame("gateway", b.EVENT, b.encode(), 14) == fx.BROADCAST_ICE


@pytest.mark.parametrize("text", [fx.FLOW_AUTHORIZED, fx.CONNECTION_READY, fx.BROADCAST_ICE])
def test_golden_outbound(text: str) -> None:
    frame = phoenix.decode_frame(text)
    msg = decode_outbound(frame.event, frame.payload)
    assert msg.encode() == frame.payload
    assert json.loads(phoenix.encode_frame("gateway", msg.EVENT, msg.encode(), frame.ref)) == json.loads(text)
    if isinstance(msg, ConnectionReady):
        assert msg.ice_parameters == IceCredentials("Xy7q", "…")


def test_unknown_fields_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    payload = json.loads(fx.REJECT_ACCESS)["payload"] | {"surprise": 1}
    with caplog.at_level("DEBUG", logger="gateway_core.portal.model"):
        m = decode_inbound("reject_access", payload)
    assert isinstance(m, RejectAccess)
    assert any("surprise" in r.getMessage() for r in caplog.records)


def test_unknown_event() -> None:
    with pytest.raises(UnknownEvent):
        decode_inbound("no_relays", {})
    with pytest.raises(UnknownEvent):
        decode_outbound("init", {})
    assert "init" in INBOUND_EVENTS and "flow_authorized" in OUTBOUND_EVENTS


def _inbound_payload(text: str) -> tuple[str, Any]:
    f = phoenix.decode_frame(text)
    return f.event, f.payload


BAD_CASES: list[tuple[str, str, Any]] = [
    # (fixture, dotted path, replacement value; None deletes the field)
    (fx.INIT_MINIMAL, "interface.ipv4", "100.115.164"),
    (fx.INIT_MINIMAL, "interface.ipv6", "100.115.164.78"),
    (fx.INIT_MINIMAL, "interface.ipv4", "100.115.164.078"),
    (fx.INIT_MINIMAL, "interface.ipv6", "fe80::1%eth0"),
    (fx.INIT_MINIMAL, "config", None),
    (fx.INIT_MINIMAL, "config.ipv4_masquerade_enabled", 1),
    (fx.INIT_MINIMAL, "interface.upstream_dns", [{"protocol": "ip_port", "address": "nonsense"}]),
    (fx.INIT_MINIMAL, "interface.search_domain", "a..b"),
    (fx.INIT_FULL, "relays.1.addr", "2001:db8::101:3478"),
    (fx.INIT_FULL, "relays.0.type", "quic"),
    (fx.INIT_FULL, "relays.0.expires_at", "1719367575"),
    (fx.INIT_FULL, "relays", None),  # absent is fine -> handled below as a valid case
    (fx.INIT_FULL, "authorizations.0.expires_at", 1.5),
    (fx.INIT_FULL, "authorizations.0.client_id", "not-a-uuid"),
    (fx.AUTHORIZE_FLOW, "client.public_key", "fiAjSBWDgQfD1CFJkTwOf4zg+1QhH0eTT+oLaVIMpH8"),
    (fx.AUTHORIZE_FLOW, "client.public_key", "AAAA"),
    (fx.AUTHORIZE_FLOW, "client.preshared_key", "BzPiNE9qszKczZcZzGsyieLYeJ2EQfkfdibls_l3beM="),
    (fx.AUTHORIZE_FLOW, "expires_at", None),
    (fx.AUTHORIZE_FLOW, "expires_at", "soon"),
    (fx.AUTHORIZE_FLOW, "expires_at", True),
    (fx.AUTHORIZE_FLOW, "resource.address", "172.20.0.1/16"),
    (fx.AUTHORIZE_FLOW, "resource.address", "172.20.0.0"),
    (fx.AUTHORIZE_FLOW, "resource.type", "ip"),
    (fx.AUTHORIZE_FLOW, "resource.filters", [{"protocol": "sctp"}]),
    (fx.AUTHORIZE_FLOW, "resource.filters", [{"protocol": "tcp", "port_range_start": 70000}]),
    (fx.AUTHORIZE_FLOW, "gateway_ice_credentials", None),
    (fx.AUTHORIZE_FLOW, "ref", 12),
    (fx.AUTHORIZE_FLOW, "subject", "nobody"),
    (fx.AUTHORIZE_FLOW, "client.version", 14),
    (fx.REQUEST_CONNECTION, "client.payload.ice_parameters", None),
    (fx.REQUEST_CONNECTION, "client.peer.ipv4", "fd00::1"),
    (fx.REQUEST_CONNECTION, "client.payload.domain.proxy_ips", ["1.2.3"]),
    (fx.ALLOW_ACCESS, "client_ipv6", None),
    (fx.ALLOW_ACCESS, "expires_at", None),
    (fx.RELAYS_PRESENCE, "connected", None),
    (fx.RELAYS_PRESENCE, "disconnected_ids", ["x"]),
    (fx.EXPIRY_UPDATED, "expires_at", None),
    (fx.INVALIDATE_ICE_CANDIDATES, "candidates", "candidate:1"),
]


def _mutate(payload: Any, path: str, value: Any) -> Any:
    out = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is None and not path.endswith("expires_at"):
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("text", "path", "value"), BAD_CASES, ids=[f"{c[1]}={c[2]!r}" for c in BAD_CASES])
def test_malformed_payloads_are_decode_errors(text: str, path: str, value: Any) -> None:
    event, payload = _inbound_payload(text)
    bad = _mutate(payload, path, value)
    if (event, path) == ("init", "relays"):
        # relays defaults to [] when absent: still a valid init
        assert isinstance(decode_inbound(event, bad), Init)
        return
    if path == "expires_at" and value is None and event == "authorize_flow":
        # present and null is allowed (never expires); absent is not
        m = decode_inbound(event, bad)
        assert isinstance(m, AuthorizeFlow) and m.expires_at is None
        del bad["expires_at"]
    elif path == "expires_at" and value is None and event == "allow_access":
        assert isinstance(decode_inbound(event, bad), AllowAccess)
        del bad["expires_at"]
    elif path == "expires_at" and value is None:
        pass  # access_authorization_expiry_updated: expires_at is a required integer, null fails
    with pytest.raises(DecodeError):
        decode_inbound(event, bad)


def test_ice_candidates_skip_non_strings_individually() -> None:
    m = decode_inbound(
        "ice_candidates",
        {
            "client_id": "2b1524e6-239e-4570-bc73-70a188e12101",
            "candidates": ["candidate:a", 5, None, "candidate:b"],
        },
    )
    assert isinstance(m, IceCandidates) and m.candidates == ("candidate:a", "candidate:b")


def test_uuid_forms_accepted() -> None:
    base = json.loads(fx.REJECT_ACCESS)["payload"]
    for form in (
        "3A25FF38-F8D7-47DE-9B30-C7C40C206083",
        "3a25ff38f8d747de9b30c7c40c206083",
        "{3a25ff38-f8d7-47de-9b30-c7c40c206083}",
        "urn:uuid:3a25ff38-f8d7-47de-9b30-c7c40c206083",
    ):
        m = decode_inbound("reject_access", base | {"client_id": form})
        assert isinstance(m, RejectAccess)
        assert str(m.client_id) == "3a25ff38-f8d7-47de-9b30-c7c40c206083"
    for bad in ("3a25ff38-f8d7-47de-9b30-c7c40c20608", "3a25-ff38f8d747de9b30c7c40c206083", ""):
        with pytest.raises(DecodeError):
            decode_inbound("reject_access", base | {"client_id": bad})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)

ALL_EVENTS = sorted(INBOUND_EVENTS | OUTBOUND_EVENTS)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_EVENTS), json_values)
def test_random_json_never_raises_other_than_decode_error(event: str, payload: Any) -> None:
    dec = decode_inbound if event in INBOUND_EVENTS else decode_outbound
    try:
        m = dec(event, payload)
    except DecodeError:
        return
    assert dec(event, json.loads(json.dumps(m.encode()))) == m


def _fixture_mutations() -> st.SearchStrategy[tuple[str, Any]]:
    texts = [g[1] for g in GOLDEN]

    def mutate(args: tuple[str, list[str], Any]) -> tuple[str, Any]:
        text, keys, value = args
        event, payload = _inbound_payload(text)
        node = payload
        for k in keys[:-1]:
            if isinstance(node, dict) and node:
                node = node[sorted(node)[sum(map(ord, k)) % len(node)]]
        if isinstance(node, dict) and node and keys:
            node[sorted(node)[len(keys[-1]) % len(node)]] = value
        return event, payload

    return st.tuples(st.sampled_from(texts), st.lists(st.text(max_size=3), max_size=4), json_values).map(
        mutate
    )


@settings(max_examples=400, deadline=None)
@given(_fixture_mutations())
def test_mutated_fixtures_never_raise_other_than_decode_error(case: tuple[str, Any]) -> None:
    event, payload = case
    try:
        decode_inbound(event, payload)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_out_of_frame_decoder(data: bytes) -> None:
    try:
        f = phoenix.decode_frame(data.decode("utf-8", errors="replace"))
    except DecodeError:
        return
    try:
        decode_inbound(f.event, f.payload)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_frames(value: Any) -> None:
    try:
        f = phoenix.decode_frame(json.dumps(value))
    except DecodeError:
        return
    assert isinstance(f.topic, str) and isinstance(f.event, str)


def test_resource_updated_payload_is_bare_resource() -> None:
    r = DnsResource(uuid.UUID(int=1), "*.corp", "corp", (Filter(FilterProtocol.UDP, 53, 53),))
    m = ResourceUpdated(r)
    assert m.encode() == r.encode()
    assert decode_inbound("resource_updated", m.encode()) == m


def test_connection_ready_shape() -> None:
    m = ConnectionReady("r", IceCredentials("u", "p"))
    assert m.encode() == {
        "ref": "r",
        "gateway_payload": {"ConnectionAccepted": {"ice_parameters": {"username": "u", "password": "p"}}},
    }
    assert decode_outbound("connection_ready", m.encode()) == m


def test_defaults_absent_versus_null() -> None:
    """``#[serde(default)]`` fields may be absent but not null when their type is not an Option."""
    event, payload = _inbound_payload(fx.AUTHORIZE_FLOW)
    assert isinstance(decode_inbound(event, payload), AuthorizeFlow)  # subject absent: default
    with pytest.raises(DecodeError):
        decode_inbound(event, payload | {"subject": None})
    event, payload = _inbound_payload(fx.INIT_MINIMAL)
    for key in ("relays", "authorizations"):
        with pytest.raises(DecodeError):
            decode_inbound(event, payload | {key: None})
    m = decode_inbound(event, payload | {"account_slug": None})  # Option<String>: null is None
    assert isinstance(m, Init) and m.account_slug is None
