"""The dev portal's configuration: resources, clients, policies, relays, secrets (a small TOML file).

Example::

    token = "dev-gateway-token"        # the token gateways must present (any other gets HTTP 401)
    secret = "dev-secret"              # signs flow refs; derives PSKs and ICE credentials
    account_slug = "dev"
    admin_token = "dev-admin"          # optional: required as ?admin_token=... by the admin API

    [[resources]]
    id = "c7793628-8579-465b-83e3-1a5d4af4db3b"
    type = "cidr"                      # cidr | dns | internet
    address = "10.0.0.0/24"
    name = "lan"
    filters = ["tcp/80-443", "udp/53", "icmp"]

    [[clients]]
    id = "3abd725a-733b-4801-ac16-72f26cd98a24"
    public_key = "fiAjSBWDgQfD1CFJkTwOf4zg+1QhH0eTT+oLaVIMpH8="
    ipv4 = "100.93.74.51"
    ipv6 = "fd00:2021:1111::f:853b"

    [[policies]]
    client = "3abd725a-733b-4801-ac16-72f26cd98a24"
    resource = "c7793628-8579-465b-83e3-1a5d4af4db3b"
    expires_in = 3600                  # optional, seconds; absent = the flow never expires

    [[relays]]
    id = "0a133356-7a9e-4b9a-b413-0d95a5720fd8"
    addrs = ["127.0.0.1:3478", "[::1]:3478"]
    secret = "relay-stamp-secret"      # the relay's stamp secret: TURN credentials derive from it
    kind = "firezone"                  # optional: "coturn" hands out TURN REST credentials instead

Pure: it parses text handed to it (``tomllib``), never opens files.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from gateway_core.addr import SocketAddr
from gateway_core.errors import DecodeError
from gateway_core.portal.model import (
    CidrResource,
    DnsResource,
    Filter,
    FilterProtocol,
    InternetResource,
    Resource,
    parse_cidr,
    parse_ipv4,
    parse_ipv6,
    parse_key,
    parse_socket_addr,
    parse_uuid,
)

EXAMPLE_CONFIG = """\
token = "dev-token"
secret = "dev-secret"
account_slug = "dev"

[[resources]]
id = "c7793628-8579-465b-83e3-1a5d4af4db3b"
type = "cidr"
address = "172.20.0.0/16"
name = "MyCorp Network"
filters = ["tcp/80-443", "icmp"]

[[resources]]
id = "619fbe83-bc95-4635-9a08-68da9a944c88"
type = "dns"
address = "*.httpbin"
name = "httpbin"

[[clients]]
id = "3abd725a-733b-4801-ac16-72f26cd98a24"
public_key = "fiAjSBWDgQfD1CFJkTwOf4zg+1QhH0eTT+oLaVIMpH8="
ipv4 = "100.93.74.51"
ipv6 = "fd00:2021:1111::f:853b"

[[policies]]
client = "3abd725a-733b-4801-ac16-72f26cd98a24"
resource = "c7793628-8579-465b-83e3-1a5d4af4db3b"
expires_in = 3600

[[relays]]
id = "0a133356-7a9e-4b9a-b413-0d95a5720fd8"
addrs = ["127.0.0.1:3478", "[::1]:3478"]
secret = "relay-secret"
"""
"""A small working configuration (one CIDR and one DNS resource, one client allowed to the first, one
relay); the simulator's portal scenario and the tests use it."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    id: uuid.UUID
    public_key: bytes
    ipv4: IPv4Address
    ipv6: IPv6Address
    psk_base: str


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    client: uuid.UUID
    resource: uuid.UUID
    expires_in: int | None


@dataclass(frozen=True, slots=True)
class RelayConfig:
    id: uuid.UUID
    addrs: tuple[SocketAddr, ...]
    secret: str
    kind: str = "firezone"
    """``firezone`` (credentials as Firezone's relays check them) or ``coturn`` (TURN REST credentials,
    for a coturn relay run with ``use-auth-secret``/``static-auth-secret``)."""


@dataclass(frozen=True, slots=True)
class PortalConfig:
    token: str
    secret: str
    account_slug: str = "dev"
    admin_token: str | None = None
    resources: tuple[Resource, ...] = ()
    clients: tuple[ClientConfig, ...] = ()
    policies: tuple[PolicyConfig, ...] = ()
    relays: tuple[RelayConfig, ...] = ()
    _clients_by_id: dict[uuid.UUID, ClientConfig] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    """Index of :attr:`clients` (the first of each id, as a scan would find): with a thousand simulated
    clients the linear scans of every grant made the set-up quadratic."""
    _policies_by_pair: dict[tuple[uuid.UUID, uuid.UUID], PolicyConfig] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        for c in self.clients:
            self._clients_by_id.setdefault(c.id, c)
        for p in self.policies:
            self._policies_by_pair.setdefault((p.client, p.resource), p)

    def resource(self, rid: uuid.UUID) -> Resource | None:
        return next((r for r in self.resources if r.id == rid), None)

    def client(self, cid: uuid.UUID) -> ClientConfig | None:
        return self._clients_by_id.get(cid)

    def policy(self, cid: uuid.UUID, rid: uuid.UUID) -> PolicyConfig | None:
        return self._policies_by_pair.get((cid, rid))


def parse_filter(text: str, what: str) -> Filter:
    """``tcp``, ``tcp/80``, ``udp/1000-2000`` or ``icmp``."""
    proto, _, ports = text.partition("/")
    if proto == "icmp" and not ports:
        return Filter(FilterProtocol.ICMP)
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"{what}: unknown filter {text!r}")
    if not ports:
        return Filter(FilterProtocol(proto))
    lo, _, hi = ports.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise ConfigError(f"{what}: bad port range {ports!r}") from None
    if not 0 <= a <= b <= 65535:
        raise ConfigError(f"{what}: bad port range {ports!r}")
    return Filter(FilterProtocol(proto), a, b)


def _str(d: Mapping[str, Any], key: str, what: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{what}.{key}: expected a non-empty string")
    return v


def _resource(d: Mapping[str, Any], what: str) -> Resource:
    rid = parse_uuid(d.get("id"), f"{what}.id")
    kind = d.get("type")
    if kind == "internet":
        return InternetResource(rid)
    filters = tuple(parse_filter(f, f"{what}.filters") for f in d.get("filters", []))
    name = _str(d, "name", what, d.get("address"))
    if kind == "cidr":
        return CidrResource(rid, parse_cidr(d.get("address"), f"{what}.address"), name, filters)
    if kind == "dns":
        return DnsResource(rid, _str(d, "address", what), name, filters)
    raise ConfigError(f"{what}.type: expected cidr, dns or internet, got {kind!r}")


def load_config(text: str) -> PortalConfig:
    """Parse the TOML text of a dev-portal configuration."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}") from None
    try:
        resources = tuple(_resource(r, f"resources[{i}]") for i, r in enumerate(doc.get("resources", [])))
        clients = tuple(
            ClientConfig(
                parse_uuid(c.get("id"), f"clients[{i}].id"),
                parse_key(c.get("public_key"), f"clients[{i}].public_key"),
                parse_ipv4(c.get("ipv4"), f"clients[{i}].ipv4"),
                parse_ipv6(c.get("ipv6"), f"clients[{i}].ipv6"),
                str(c.get("psk_base", f"psk-{c.get('id')}")),
            )
            for i, c in enumerate(doc.get("clients", []))
        )
        policies = tuple(
            PolicyConfig(
                parse_uuid(p.get("client"), f"policies[{i}].client"),
                parse_uuid(p.get("resource"), f"policies[{i}].resource"),
                _expires_in(p.get("expires_in"), f"policies[{i}].expires_in"),
            )
            for i, p in enumerate(doc.get("policies", []))
        )
        relays = tuple(
            RelayConfig(
                parse_uuid(r.get("id"), f"relays[{i}].id"),
                tuple(parse_socket_addr(a, f"relays[{i}].addrs") for a in r.get("addrs", [])),
                _str(r, "secret", f"relays[{i}]"),
                _relay_kind(r.get("kind", "firezone"), f"relays[{i}].kind"),
            )
            for i, r in enumerate(doc.get("relays", []))
        )
        admin = doc.get("admin_token")
        cfg = PortalConfig(
            token=_str(doc, "token", "config"),
            secret=_str(doc, "secret", "config"),
            account_slug=_str(doc, "account_slug", "config", "dev"),
            admin_token=str(admin) if admin else None,
            resources=resources,
            clients=clients,
            policies=policies,
            relays=relays,
        )
    except DecodeError as e:
        raise ConfigError(str(e)) from None
    except (AttributeError, TypeError) as e:
        raise ConfigError(f"malformed configuration: {e}") from None
    for p in cfg.policies:
        if cfg.client(p.client) is None or cfg.resource(p.resource) is None:
            raise ConfigError(f"policy {p.client} -> {p.resource}: unknown client or resource")
    return cfg


def _relay_kind(v: object, what: str) -> str:
    if v not in ("firezone", "coturn"):
        raise ConfigError(f"{what}: expected firezone or coturn")
    return str(v)


def _expires_in(v: object, what: str) -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{what}: expected a positive number of seconds")
    return v
