"""The dev portal's pure logic: configuration, upgrade checks, Phoenix server framing, application pushes."""

from __future__ import annotations

import base64
import ipaddress
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from devportal import ConfigError, DevPortal, GatewayRecord, PhoenixSocket, Refusal, load_config
from devportal.phoenix_server import Reply
from devportal.portal import ice_credentials, preshared_key, turn_credentials
from gateway_core.portal import phoenix
from gateway_core.portal.messages import (
    AccessAuthorizationExpiryUpdated,
    AllowAccess,
    AuthorizeFlow,
    IceCandidates,
    Init,
    InvalidateIceCandidates,
    RejectAccess,
    RelaysPresence,
    RequestConnection,
    ResourceUpdated,
    decode_inbound,
)
from gateway_core.portal.model import CidrResource, Filter, FilterProtocol, TurnRelay
from tests.test_architecture import CORE_FORBIDDEN, _scan

CONFIG = (Path(__file__).parent.parent.parent / "io" / "devportal_test.toml").read_text()
CLIENT = uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24")
RESOURCE = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")
DNS_RESOURCE = uuid.UUID("619fbe83-bc95-4635-9a08-68da9a944c88")
PK = base64.b64encode(bytes(range(32))).decode()
UA = "Debian/12 gateway/1.4.18 (x86_64)"


def test_devportal_is_pure() -> None:
    """devportal is shared by sim and devio: it may import neither, nor anything doing IO."""
    assert _scan("devportal", CORE_FORBIDDEN - {"devportal"}) == []


def query(**kw: str) -> dict[str, str]:
    q = {"token": "dev-token", "external_id": "gw-1", "name": "gw", "public_key": PK}
    q.update(kw)
    return {k: v for k, v in q.items() if v != "-"}


def portal() -> DevPortal:
    return DevPortal(load_config(CONFIG), 1_700_000_000)


def joined(p: DevPortal, ext: str = "gw-1", pk: str = PK) -> tuple[int, PhoenixSocket, list[Any]]:
    rec = p.authenticate("/gateway/websocket", query(external_id=ext, public_key=pk), UA)
    assert isinstance(rec, GatewayRecord)
    conn, sock = p.connect(rec)
    sock.handle_text(phoenix.encode_frame("gateway", "phx_join", None, 0))
    return conn, sock, drain(sock)


def drain(sock: PhoenixSocket) -> list[Any]:
    out = []
    while (f := sock.poll_frame()) is not None:
        out.append(json.loads(f))
    return out


@pytest.mark.parametrize(
    ("path", "q", "ua", "status"),
    [
        ("/nope", query(), UA, 404),
        ("/gateway/websocket", query(token="-"), UA, 401),
        ("/gateway/websocket", query(token="bad"), UA, 401),
        ("/gateway/websocket", query(public_key="abc"), UA, 422),
        ("/gateway/websocket", query(public_key=PK[:-1] + "!"), UA, 422),
        ("/gateway/websocket", query(), "curl/8.0", 422),
        ("/gateway/websocket", query(external_id="-"), UA, 422),
        ("/gateway/websocket", query(name="x" * 300), UA, 422),
    ],
)
def test_upgrade_refusals(path: str, q: dict[str, str], ua: str, status: int) -> None:
    r = portal().authenticate(path, q, ua)
    assert isinstance(r, Refusal) and r.status == status


def test_upgrade_accepts_and_upserts() -> None:
    p = portal()
    a = p.authenticate("/prefix/gateway/websocket", query(), UA)
    assert isinstance(a, GatewayRecord) and a.version == "1.4.18" and a.name == "gw"
    b = p.authenticate("/gateway/websocket", query(name="  renamed  "), None)
    assert isinstance(b, GatewayRecord) and b is a and b.name == "renamed" and b.ipv4 == a.ipv4
    assert a.ipv4 in ipaddress.ip_network("100.64.0.0/11")
    other = p.authenticate("/gateway/websocket", query(external_id="gw-2"), UA)
    assert isinstance(other, Refusal) and other.status == 422  # public key taken
    p.refuse = Refusal(503, "down")
    assert p.authenticate("/gateway/websocket", query(), UA) == Refusal(503, "down")


def test_join_pushes_init_with_relay_credentials() -> None:
    p = portal()
    _, _sock, frames = joined(p)
    assert frames[0] == {
        "topic": "gateway",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": 0,
    }
    assert frames[1]["event"] == "init" and frames[1]["ref"] is None
    init = decode_inbound("init", frames[1]["payload"])
    assert isinstance(init, Init) and init.account_slug == "dev"
    relays = [r for r in init.relays if isinstance(r, TurnRelay)]
    assert [str(r.addr) for r in relays] == ["127.0.0.1:3478", "[::1]:3478"]
    exp = 1_700_000_000 + 90 * 24 * 3600
    assert relays[0].username == turn_credentials("relay-secret", PK, exp)[0] and relays[0].expires_at == exp
    assert relays[0].username.startswith(f"{exp}:")


def test_phoenix_framework_events() -> None:
    p = portal()
    _, sock, _ = joined(p)
    sock.handle_text('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":7}')
    sock.handle_text('{"topic":"other","event":"x","payload":{},"ref":8}')
    sock.handle_text('{"topic":"gateway","event":"bogus","payload":{},"ref":"9"}')
    sock.handle_text("not json")
    sock.handle_text('{"topic":"gateway","event":"x","payload":{}}')  # V1 needs all four keys
    sock.handle_text('{"topic":"gateway","event":"phx_leave","payload":{},"ref":10}')
    sock.handle_text('{"topic":"gateway","event":"flow_authorized","payload":{"ref":"x"},"ref":11}')
    assert drain(sock) == [
        {"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": 7},
        {
            "topic": "other",
            "event": "phx_reply",
            "payload": {"status": "error", "response": {"reason": "unmatched topic"}},
            "ref": 8,
        },
        {
            "topic": "gateway",
            "event": "phx_reply",
            "payload": {"status": "error", "response": {"reason": "unknown_message"}},
            "ref": "9",
        },
        {"topic": "gateway", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": 10},
        {"topic": "gateway", "event": "phx_close", "payload": {}, "ref": 0},
        {
            "topic": "gateway",
            "event": "phx_reply",
            "payload": {"status": "error", "response": {"reason": "unmatched topic"}},
            "ref": 11,
        },
    ]
    assert sock.stats.counters["frames_dropped"] == 2


def test_v2_array_frames() -> None:
    p = portal()
    rec = p.authenticate("/gateway/websocket", query(), UA)
    assert isinstance(rec, GatewayRecord)
    _, sock = p.connect(rec, "2.0.0")
    sock.handle_text('["3","3","gateway","phx_join",{}]')
    sock.handle_text('[null,"4","phoenix","heartbeat",{}]')
    frames = drain(sock)
    assert frames[0] == ["3", "3", "gateway", "phx_reply", {"status": "ok", "response": {}}]
    assert frames[1][:4] == ["3", None, "gateway", "init"]
    assert frames[2] == [None, "4", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    sock.handle_text('{"topic":"x"}')
    assert sock.stats.counters["frames_dropped"] == 1


def test_authorize_flow_and_replies() -> None:
    p = portal()
    conn, sock, _ = joined(p)
    assert p.authorize(CLIENT, DNS_RESOURCE)["ok"] is False  # no policy
    res = p.authorize(CLIENT, RESOURCE)
    assert res["ok"] is True and res["expires_at"] == 1_700_000_000 + 3600
    (push,) = drain(sock)
    msg = decode_inbound(push["event"], push["payload"])
    assert isinstance(msg, AuthorizeFlow) and msg.ref == res["ref"]
    rec = p.gateways["gw-1"]
    cice, gice = ice_credentials(CLIENT, "fiAjSBWDgQfD1CFJkTwOf4zg+1QhH0eTT+oLaVIMpH8=", rec.id, PK)
    assert (msg.client_ice_credentials, msg.gateway_ice_credentials) == (cice, gice)
    assert len(cice.username) == 4 and len(cice.password) == 22 and len(gice.username) == 4
    assert len(msg.client.preshared_key) == 32
    sock.handle_text(phoenix.encode_frame("gateway", "flow_authorized", {"ref": msg.ref}, 5))
    sock.handle_text(phoenix.encode_frame("gateway", "flow_authorized", {"ref": msg.ref + "x"}, 6))
    sock.handle_text(
        phoenix.encode_frame(
            "gateway", "broadcast_ice_candidates", {"client_ids": [str(CLIENT)], "candidates": ["c"]}, 7
        )
    )
    sock.handle_text(phoenix.encode_frame("gateway", "broadcast_ice_candidates", {"candidates": ["c"]}, 8))
    replies = [(f["ref"], f["payload"]["status"], f["payload"]["response"]) for f in drain(sock)]
    assert replies == [
        (5, "ok", {}),
        (6, "error", {"reason": "invalid_ref"}),
        (8, "error", {"reason": "unknown_message"}),
    ]
    # A second gateway cannot use the first one's ref.
    _, sock2, _ = joined(p, "gw-2", base64.b64encode(bytes(32)).decode())
    sock2.handle_text(phoenix.encode_frame("gateway", "flow_authorized", {"ref": msg.ref}, 9))
    assert drain(sock2)[0]["payload"] == {"status": "error", "response": {"reason": "invalid_ref"}}
    assert conn == 1


def test_other_pushes_decode_as_typed_messages() -> None:
    p = portal()
    _, sock, _ = joined(p)
    p.authorize(CLIENT, RESOURCE)
    p.update_expiry(CLIENT, RESOURCE, 1_800_000_000)
    p.update_resource(
        CidrResource(
            RESOURCE, ipaddress.ip_network("172.20.0.0/16"), "n", (Filter(FilterProtocol.UDP, 53, 53),)
        )
    )
    p.ice_candidates(CLIENT, ["candidate:1 1 udp 1 1.2.3.4 5 typ host"])
    p.ice_candidates(CLIENT, ["candidate:1 1 udp 1 1.2.3.4 5 typ host"], invalidate=True)
    p.relays_presence([uuid.UUID("0a133356-7a9e-4b9a-b413-0d95a5720fd8")])
    p.request_connection(CLIENT, RESOURCE)
    p.allow_access(CLIENT, DNS_RESOURCE)
    p.revoke(CLIENT, RESOURCE)
    msgs = [decode_inbound(f["event"], f["payload"]) for f in drain(sock)]
    assert [type(m) for m in msgs] == [
        AuthorizeFlow,
        AccessAuthorizationExpiryUpdated,
        ResourceUpdated,
        IceCandidates,
        InvalidateIceCandidates,
        RelaysPresence,
        RequestConnection,
        AllowAccess,
        RejectAccess,
    ]
    rp = msgs[5]
    assert isinstance(rp, RelaysPresence) and rp.connected == ()
    # A reconnecting gateway's init lists its authorisations (latest expiry).
    _, _sock2, frames = joined(p)
    init = decode_inbound("init", frames[1]["payload"])
    assert isinstance(init, Init)
    assert {(a.client_id, a.resource_id) for a in init.authorizations} == {(CLIENT, DNS_RESOURCE)}


def test_kick_and_revoke_token() -> None:
    p = portal()
    conn, _, _ = joined(p)
    assert not p.kicked(conn)
    assert p.revoke_token() == 1 and p.kicked(conn)
    r = p.authenticate("/gateway/websocket", query(), UA)
    assert isinstance(r, Refusal) and r.status == 401


def test_derivations_are_deterministic() -> None:
    a = preshared_key("c", "g", CLIENT, RESOURCE, "ck", "gk")
    assert a == preshared_key("c", "g", CLIENT, RESOURCE, "ck", "gk") and len(a) == 32
    assert a != preshared_key("c", "g", CLIENT, RESOURCE, "ck", "gk2")
    u, pw = turn_credentials("s", PK, 123)
    assert u.startswith("123:") and "=" not in pw and len(base64.b64decode(pw + "=")) == 32


_HEAD = 'token = "t"\nsecret = "s"\n'
_RID = 'id = "c7793628-8579-465b-83e3-1a5d4af4db3b"\n'
CONFIG_ERRORS = [
    'token = "t"',  # no secret
    _HEAD + '[[resources]]\nid = "x"\ntype = "cidr"\naddress = "10.0.0.0/8"',
    _HEAD + "[[resources]]\n" + _RID + 'type = "cidr"\naddress = "10.0.0.1/8"',
    _HEAD + "[[resources]]\n" + _RID + 'type = "ip"',
    _HEAD + "[[resources]]\n" + _RID + 'type = "dns"\naddress = "a"\nfilters = ["sctp"]',
    _HEAD
    + '[[policies]]\nclient = "c7793628-8579-465b-83e3-1a5d4af4db3b"\nresource = "'
    + str(RESOURCE)
    + '"',
    "not toml [",
]


@pytest.mark.parametrize("text", CONFIG_ERRORS)
def test_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        load_config(text)


def test_config_example_loads() -> None:
    cfg = load_config(CONFIG)
    assert len(cfg.resources) == 2 and len(cfg.clients) == 1 and cfg.policy(CLIENT, RESOURCE) is not None
    r = cfg.resource(RESOURCE)
    assert isinstance(r, CidrResource) and r.filters == (
        Filter(FilterProtocol.TCP, 80, 443),
        Filter(FilterProtocol.ICMP),
    )


def test_reply_helpers() -> None:
    assert Reply.success().payload() == {"status": "ok", "response": {}}
    assert Reply.error("x").payload() == {"status": "error", "response": {"reason": "x"}}


def test_example_config_matches_the_test_file() -> None:
    from devportal.config import EXAMPLE_CONFIG

    assert load_config(EXAMPLE_CONFIG) == load_config(CONFIG)
