"""The dev portal's client feed (``devportal.clients``): what a real client process gets, pure."""

from __future__ import annotations

import base64
import uuid

import pytest

from devportal import ConfigError, DevPortal, load_config
from devportal.clients import MAX_EVENTS, ClientFeed
from devportal.portal import ice_credentials, preshared_key, relay_credentials, turn_credentials
from gateway_core.portal import phoenix
from gateway_core.portal.model import encode_key
from gateway_core.turn.credentials import coturn_rest_password
from tests.unit.portal.test_devportal import CLIENT, CONFIG, DNS_RESOURCE, PK, RESOURCE, joined, portal

RELAY = uuid.UUID("0a133356-7a9e-4b9a-b413-0d95a5720fd8")


def setup() -> tuple[DevPortal, ClientFeed]:
    p = portal()
    feed = ClientFeed(p, "epoch-1")
    joined(p)
    return p, feed


def test_a_grant_carries_what_the_portal_derives_for_the_pair() -> None:
    p, feed = setup()
    result = p.authorize(CLIENT, RESOURCE)
    feed.granted(CLIENT, RESOURCE, result)
    got = feed.poll(CLIENT, 0)
    assert got["next"] == 1 and got["epoch"] == "epoch-1" and not got["resync"]
    (ev,) = got["events"]
    gw = next(iter(p.gateways.values()))
    cfg = p.config.client(CLIENT)
    assert cfg is not None
    ckey = encode_key(cfg.public_key)
    cice, gice = ice_credentials(CLIENT, ckey, gw.id, PK)
    psk = preshared_key(cfg.psk_base, f"gw-{gw.external_id}", CLIENT, gw.id, ckey, PK)
    assert ev["type"] == "grant" and ev["gateway"] == str(gw.id) and ev["public_key"] == PK
    assert base64.b64decode(ev["psk"]) == psk
    assert ev["client_ice"] == [cice.username, cice.password]
    assert ev["gateway_ice"] == [gice.username, gice.password]
    assert (ev["tunnel_v4"], ev["tunnel_v6"]) == (str(gw.ipv4), str(gw.ipv6))
    assert ev["resource"] == {"id": str(RESOURCE), "kind": "cidr", "address": "172.20.0.0/16"}
    (relay,) = ev["relays"]
    user, pwd = turn_credentials("relay-secret", ckey, p.unix_now + 90 * 24 * 3600)
    assert relay == {
        "id": str(RELAY),
        "v4": "127.0.0.1:3478",
        "v6": "[::1]:3478",
        "username": user,
        "password": pwd,
    }


def test_refused_grants_queue_nothing_and_cursors_page_through_events() -> None:
    p, feed = setup()
    feed.granted(CLIENT, DNS_RESOURCE, p.authorize(CLIENT, DNS_RESOURCE))  # no policy: refused
    assert feed.poll(CLIENT, 0)["events"] == []
    for _ in range(3):
        feed.granted(CLIENT, RESOURCE, p.authorize(CLIENT, RESOURCE))
    assert len(feed.poll(CLIENT, 0)["events"]) == 3
    assert len(feed.poll(CLIENT, 2)["events"]) == 1
    assert feed.poll(CLIENT, 3) == {"ok": True, "events": [], "next": 3, "resync": False, "epoch": "epoch-1"}
    assert feed.poll(uuid.uuid4(), 0)["events"] == []


def test_the_oldest_events_are_dropped_beyond_the_limit_and_a_late_client_is_told_to_resync() -> None:
    _, feed = setup()
    for i in range(MAX_EVENTS + 5):
        feed._push(CLIENT, {"type": "x", "n": i})
    got = feed.poll(CLIENT, 0)
    assert got["resync"] and got["next"] == MAX_EVENTS + 5 and got["events"][0]["n"] == 5
    assert not feed.poll(CLIENT, 5)["resync"]


def test_gateway_candidates_reach_the_clients_they_name_and_relay_changes_reach_every_client() -> None:
    p, feed = setup()
    _, sock, _ = joined(p)
    feed.granted(CLIENT, RESOURCE, p.authorize(CLIENT, RESOURCE))
    payload = {"client_ids": [str(CLIENT)], "candidates": ["candidate:1 1 UDP 1 10.0.0.1 52625 typ host"]}
    sock.handle_text(phoenix.encode_frame("gateway", "broadcast_invalidated_ice_candidates", payload, 5))
    sock.handle_text(phoenix.encode_frame("gateway", "broadcast_ice_candidates", {"bad": 1}, 6))
    p.relays_presence([RELAY])
    feed.relays_changed()
    events = feed.poll(CLIENT, 1)["events"]
    assert events[0] == {
        "type": "candidates",
        "gateway": str(next(iter(p.gateways.values())).id),
        "candidates": payload["candidates"],
        "invalidate": True,
    }
    assert events[1] == {"type": "relays", "relays": []}
    assert len(events) == 2  # the malformed push is not relayed


def test_coturn_relays_get_turn_rest_passwords_over_firezones_username() -> None:
    cfg = load_config(CONFIG.replace('secret = "relay-secret"', 'secret = "relay-secret"\nkind = "coturn"'))
    (relay,) = cfg.relays
    assert relay.kind == "coturn"
    user, pwd = relay_credentials(relay, PK, 1_800_000_000)
    assert user == turn_credentials("relay-secret", PK, 1_800_000_000)[0]
    assert pwd == coturn_rest_password("relay-secret", user)
    fz = load_config(CONFIG).relays[0]
    assert fz.kind == "firezone" and relay_credentials(fz, PK, 1) == turn_credentials("relay-secret", PK, 1)
    with pytest.raises(ConfigError, match=r"relays\[0\].kind"):
        load_config(CONFIG.replace('secret = "relay-secret"', 'secret = "relay-secret"\nkind = "pion"'))
