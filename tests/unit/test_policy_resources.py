"""Resource decoding (``rust/connlib/tunnel/src/messages/gateway.rs``) and per-client authorisations."""

from __future__ import annotations

import logging
import uuid
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_core.clock import Instant, secs
from gateway_core.errors import DecodeError
from gateway_core.policy.authorizations import (
    Authorization,
    ClientAuthorizations,
    ExpiryTimer,
)
from gateway_core.policy.filters import L4_TCP, L4_UDP, Filter, FilterProtocol, build_filter_table
from gateway_core.policy.resources import (
    CidrResource,
    DnsResource,
    InternetResource,
    decode_resource,
    decode_uuid,
    encode_resource,
)

RID = "73037362-715d-4a83-a749-f18eadd970e6"
NS = 1_000_000_000

FIXTURE: list[dict[str, Any]] = [
    {"id": RID, "type": "cidr", "address": "172.172.0.0/16", "name": "172.172.0.0/16", "filters": []},
    {
        "id": "03000143-e25e-45c7-aafb-144990e57dcd",
        "type": "dns",
        "name": "gitlab.mycorp.com",
        "address": "gitlab.mycorp.com",
        "filters": [],
    },
    {
        "id": "1106047c-cd5d-4151-b679-96b93da7383b",
        "type": "internet",
        "not": "relevant",
        "some_other": ["field"],
    },
]


def u(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def test_decodes_the_reference_fixture() -> None:
    c, d, i = (decode_resource(o) for o in FIXTURE)
    assert c == CidrResource(uuid.UUID(RID), "172.172.0.0/16", ip_network("172.172.0.0/16"), ())
    assert d == DnsResource(
        uuid.UUID("03000143-e25e-45c7-aafb-144990e57dcd"), "gitlab.mycorp.com", "gitlab.mycorp.com", ()
    )
    assert i == InternetResource(uuid.UUID("1106047c-cd5d-4151-b679-96b93da7383b"))
    assert i.name == "Internet" and i.filters == ()
    assert i.address_for(ip_address("1.2.3.4")) == "0.0.0.0/0" and i.address_for(ip_address("::1")) == "::/0"
    assert c.address_for(ip_address("172.172.0.1")) == "172.172.0.0/16"
    assert d.address_for(ip_address("1.1.1.1")) == "gitlab.mycorp.com"


def test_filters_decode_with_defaults() -> None:
    o = dict(FIXTURE[0])
    o["filters"] = [
        {"protocol": "tcp", "port_range_start": 80, "port_range_end": 443},
        {"protocol": "udp"},
        {"protocol": "udp", "port_range_start": 53},
        {"protocol": "icmp", "port_range_start": "ignored"},
    ]
    r = decode_resource(o)
    assert r.filters == (
        Filter(FilterProtocol.TCP, 80, 443),
        Filter(FilterProtocol.UDP, 0, 65535),
        Filter(FilterProtocol.UDP, 53, 65535),
        Filter(FilterProtocol.ICMP),
    )


@pytest.mark.parametrize(
    "patch",
    [
        {"type": "ip"},
        {"type": None},
        {"id": "nope"},
        {"id": 5},
        {"address": "10.0.0.1"},  # no prefix
        {"address": "10.0.0.1/8"},  # host bits
        {"address": "10.0.0.0/33"},
        {"address": " 10.0.0.0/8"},
        {"name": None},
        {"filters": None},
        {"filters": [{"protocol": "sctp"}]},
        {"filters": [{"protocol": "tcp", "port_range_start": 70000}]},
        {"filters": [{"protocol": "tcp", "port_range_end": -1}]},
        {"filters": [{"protocol": "tcp", "port_range_end": True}]},
        {"filters": [{"protocol": "tcp", "port_range_end": 1.0}]},
        {"filters": [{"port_range_end": 1}]},
        {"filters": ["tcp"]},
        {"filters": {}},
    ],
)
def test_rejects_malformed(patch: dict[str, Any]) -> None:
    o = dict(FIXTURE[0]) | patch
    with pytest.raises(DecodeError):
        decode_resource(o)


@pytest.mark.parametrize("missing", ["id", "type", "name", "address", "filters"])
def test_cidr_and_dns_fields_are_required(missing: str) -> None:
    for base in FIXTURE[:2]:
        o = {k: v for k, v in base.items() if k != missing}
        with pytest.raises(DecodeError):
            decode_resource(o)
    with pytest.raises(DecodeError):
        decode_resource([])


def test_uuid_forms() -> None:
    want = uuid.UUID(RID)
    assert decode_uuid(RID.upper(), "x") == want
    assert decode_uuid(RID.replace("-", ""), "x") == want
    assert decode_uuid("{" + RID + "}", "x") == want
    assert decode_uuid("urn:uuid:" + RID, "x") == want
    for bad in ("", RID[:-1], RID + "0", RID.replace("-", "_"), "{" + RID.replace("-", "") + "}", "g" * 32):
        with pytest.raises(DecodeError):
            decode_uuid(bad, "x")


def test_range_start_after_end_is_logged_and_allows_nothing(caplog: pytest.LogCaptureFixture) -> None:
    o = dict(FIXTURE[0]) | {"filters": [{"protocol": "tcp", "port_range_start": 443, "port_range_end": 80}]}
    with caplog.at_level(logging.WARNING, logger="gateway_core.policy.resources"):
        r = decode_resource(o)
    assert "port_range_start 443 > port_range_end 80" in caplog.text and RID in caplog.text
    auths = ClientAuthorizations(u(1))
    auths.add(r, None)
    table = build_filter_table(auths.values(), [])
    addr = ip_address("172.172.0.1").packed
    assert all(table.classify(addr, L4_TCP, p) is None for p in (80, 200, 443))
    assert table.classify(addr, L4_UDP, 53) is None


filter_st = st.one_of(
    st.builds(Filter, st.just(FilterProtocol.ICMP)),
    st.builds(
        Filter,
        st.sampled_from([FilterProtocol.TCP, FilterProtocol.UDP]),
        st.integers(0, 65535),
        st.integers(0, 65535),
    ),
)
resource_st = st.one_of(
    st.builds(
        CidrResource,
        st.uuids(),
        st.text(max_size=5),
        st.sampled_from([ip_network("10.0.0.0/8"), ip_network("::/0"), ip_network("1.2.3.4/32")]),
        st.lists(filter_st, max_size=3).map(tuple),
    ),
    st.builds(
        DnsResource,
        st.uuids(),
        st.text(max_size=5),
        st.text(max_size=9),
        st.lists(filter_st, max_size=3).map(tuple),
    ),
    st.builds(InternetResource, st.uuids()),
)


@given(resource_st)
def test_encode_decode_round_trip(r: CidrResource | DnsResource | InternetResource) -> None:
    assert decode_resource(encode_resource(r)) == r


# --- authorisations ------------------------------------------------------------------------------


def cidr(n: int, net: str = "10.0.0.0/8", *filters: Filter) -> CidrResource:
    return CidrResource(u(n), f"r{n}", ip_network(net), tuple(filters))


def test_allowed_strictly_before_expiry() -> None:
    a = Authorization(cidr(1), expires_at=100)
    assert a.is_allowed(99 * NS + 999_999_999)
    assert not a.is_allowed(100 * NS)
    assert Authorization(cidr(1)).is_allowed(2**62)


def test_reauthorisation_replaces_filters_and_expiry_but_not_address() -> None:
    auths = ClientAuthorizations(u(1))
    auths.add(cidr(5, "10.0.0.0/8", Filter(FilterProtocol.TCP, 1, 1)), 100)
    auths.add(cidr(5, "192.168.0.0/16", Filter(FilterProtocol.UDP, 2, 2)), 500)
    a = auths.get(u(5))
    assert a is not None and a.expires_at == 500
    assert a.resource == cidr(5, "10.0.0.0/8", Filter(FilterProtocol.UDP, 2, 2))
    auths.add(cidr(5), None)
    assert a.expires_at is None and auths.get(u(5)) is a


def test_type_change_is_ignored() -> None:
    auths = ClientAuthorizations(u(1))
    auths.add(cidr(5), 100)
    auths.add(InternetResource(u(5)), 900)
    auths.update_resource(DnsResource(u(5), "n", "*.x", ()))
    a = auths.get(u(5))
    assert a is not None and a.is_cidr and a.expires_at == 100


def test_update_resource_changes_filters_only_for_holders() -> None:
    auths = ClientAuthorizations(u(1))
    auths.add(DnsResource(u(2), "n", "*.example.com", ()), None)
    auths.add(InternetResource(u(3)), None)
    auths.update_resource(DnsResource(u(2), "other", "*.other.com", (Filter(FilterProtocol.ICMP),)))
    auths.update_resource(InternetResource(u(3)))
    with pytest.raises(KeyError):  # the owner asks first (ClientPolicy.update_resource)
        auths.update_resource(cidr(9))
    a = auths.get(u(2))
    assert a is not None and a.resource == DnsResource(
        u(2), "n", "*.example.com", (Filter(FilterProtocol.ICMP),)
    )


def test_update_expiry_remove_retain_and_empty() -> None:
    auths = ClientAuthorizations(u(1))
    for n in (3, 1, 2):
        auths.add(cidr(n), None)
    assert auths.ids() == [u(1), u(2), u(3)] and len(auths) == 3 and u(2) in auths
    auths.update_expiry(u(2), 50)
    auths.update_expiry(u(9), 60)  # unknown: nothing happens
    assert [a.expires_at for a in auths.values()] == [None, 50, None] and u(9) not in auths
    assert auths.retain({u(2), u(9)}) == [u(1), u(3)]
    with pytest.raises(KeyError):  # the owner asks first (ClientPolicy.remove)
        auths.remove(u(1))
    assert not auths.is_empty()
    auths.remove(u(2))
    assert auths.is_empty()


def test_expiry_removes_what_is_no_longer_allowed() -> None:
    a = ClientAuthorizations(u(1))
    a.add(cidr(10), 100)
    a.add(cidr(11), None)
    a.add(cidr(12), 101)
    assert a.expire(99 * NS) == [] and a.earliest_expiry() == 100 * NS
    assert a.expire(100 * NS) == [u(10)] and a.ids() == [u(11), u(12)] and a.earliest_expiry() == 101 * NS


def test_networks_and_internet() -> None:
    auths = ClientAuthorizations(u(1))
    auths.add(InternetResource(u(7)), None)
    auths.add(InternetResource(u(4)), None)
    auths.add(DnsResource(u(2), "d", "*.x", ()), None)
    assert auths.internet_resource() == u(4)
    d = auths.get(u(2))
    assert d is not None and d.is_dns and d.networks() == ()
    d.domains["a.x"] = frozenset({ip_address("10.0.0.2"), ip_address("::2")})
    d.domains["b.x"] = frozenset({ip_address("10.0.0.2")})
    assert [str(n) for n in d.networks()] == ["10.0.0.2/32", "::2/128"]
    i = auths.get(u(4))
    assert i is not None and [str(n) for n in i.networks()] == ["0.0.0.0/0", "::/0"]


def test_expiry_timer() -> None:
    t = ExpiryTimer()
    assert t.tick_at_or_after(0) is None
    assert t.handle_timeout(Instant(5)) is None  # starts the grid: ticks at 5 + k s
    assert t.next_check == 5 + secs(1) and t.tick_at_or_after(0) == 5 + secs(1)
    assert t.handle_timeout(Instant(secs(1))) is None
    assert t.handle_timeout(Instant(5 + secs(1))) == 5 + secs(1)
    assert t.handle_timeout(Instant(5 + secs(1))) is None  # once per tick
    assert t.next_check == 5 + secs(2)
    # the first tick at or after a time; skipped ticks keep the grid
    assert t.tick_at_or_after(0) == 5 + secs(2)
    assert t.tick_at_or_after(5 + secs(2)) == 5 + secs(2)
    assert t.tick_at_or_after(6 + secs(2)) == 5 + secs(3)
    assert t.tick_at_or_after(5 + secs(3)) == 5 + secs(3)
    # a call between ticks reached the last tick before it (the sweep is that tick's)
    assert t.handle_timeout(Instant(7 + secs(9))) == 5 + secs(9) and t.next_check == 5 + secs(10)
    assert t.handle_timeout(Instant(5 + secs(10))) == 5 + secs(10) and t.next_check == 5 + secs(11)
    assert t.handle_timeout(Instant(4 + secs(12))) == 5 + secs(11) and t.next_check == 5 + secs(12)


def test_portal_typed_resources_map_onto_policy_resources() -> None:
    from gateway_core.portal.model import decode_resource as portal_decode

    filters = [{"protocol": "tcp", "port_range_start": 1, "port_range_end": 2}, {"protocol": "icmp"}]
    for o in [dict(FIXTURE[0]) | {"filters": filters}, FIXTURE[1], FIXTURE[2]]:
        typed = portal_decode(o)
        mine = decode_resource(typed.encode())
        assert mine == decode_resource(o)
        assert encode_resource(mine) == typed.encode()
