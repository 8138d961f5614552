"""A whole gateway world: portal, relays, one gateway, clients, resources and an upstream DNS server.

Theory of operation: :func:`build_gateway_world` puts into one :class:`~sim.world.World`

- the stub portal (:mod:`sim.portal`) running :class:`devportal.DevPortal` on a configuration generated
  here (the resources below, one policy per client and resource, the relays with their secret, client
  keys drawn from the seed), its wall clock aligned with the world's;
- ``relays`` Firezone-like TURN relays (:class:`~sim.hosts.connectivity.RelayHost`);
- the gateway (:class:`~gateway_core.gateway.Gateway` in :class:`~sim.hosts.gateway.GatewayHost`), whose
  system resolver is the upstream zone's A/AAAA table and whose DNS forwarding goes to the upstream;
- ``clients`` simulated clients (:class:`~devpeers.client.DevClient`) wired to the portal by
  :class:`~sim.client_portal.ClientSignalling`; with ``relay_only`` every client is partitioned from the
  gateway from the start, so only relayed paths work;
- the resources: ``web`` (CIDR resource ``172.20.0.0/16`` with filters), ``app`` (the real address behind
  the DNS resource ``**.corp.test``), ``inet`` (a host reached through the Internet resource), and
  ``dns`` (the upstream DNS server with A/AAAA/SRV/TXT records); with ``extended`` (the stateful test's
  world) also ``web``'s IPv6 address and ``webdns``, a DNS server inside the CIDR resource.

Nothing is granted at build time: scenarios call :meth:`GatewayWorld.grant` and run the world. The
gateway connects to the portal at once; :meth:`GatewayWorld.start` runs until it has joined.

Address plan (documentation and Firezone ranges): portal 198.51.100.10, clients 198.51.100.50+i, gateway
203.0.113.50 and 2001:db8:1::50 (an IPv6 address, so the IPv6 tunnel range routes to it), relays
192.0.2.31+i, upstream DNS 192.0.2.53, resources 172.20.0.10 and 10.20.0.5 / 2001:db8:20::5; tunnel
addresses are handed out by the portal from 100.64.0.0/11 and fd00:2021:1111::/107.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from devpeers.client import DevClient
from devpeers.relay import DevRelay
from devportal import DevPortal, load_config
from gateway_core.addr import IPAddress, SocketAddr
from gateway_core.clock import Duration, Instant, millis, secs
from gateway_core.gateway import Gateway
from gateway_core.gateway_types import GatewayConfig
from gateway_core.wireguard.crypto import public_key
from sim.client_portal import ClientHost, ClientSignalling
from sim.host import Host
from sim.hosts.connectivity import RelayComponent, RelayHost
from sim.hosts.dns_upstream import DNS_PORT, DnsZone, UpstreamDnsServer
from sim.hosts.gateway import GatewayHost, SimResolver
from sim.hosts.resources import ResourceServer
from sim.nat import DEFAULT_TIMEOUT, Nat
from sim.net import LinkProfile
from sim.portal import PORTAL_PORT, StubPortal, StubPortalHost
from sim.world import World

PORTAL_V4 = IPv4Address("198.51.100.10")
GATEWAY_V4 = IPv4Address("203.0.113.50")
GATEWAY_V6 = IPv6Address("2001:db8:1::50")
CLIENT_V4_BASE = IPv4Address("198.51.100.50")
RELAY_V4_BASE = IPv4Address("192.0.2.31")
RELAY_V6_BASE = IPv6Address("2001:db8:2::31")
CLIENT_V6_BASE = IPv6Address("2001:db8:50::50")
SYMMETRIC_NAT_TIMEOUT: Duration = secs(120)
"""A symmetric NAT (an enterprise firewall here) keeps a mapping 2 minutes without outbound traffic (RFC
4787's minimum); a cone NAT (a home router) 30 s (``sim.nat.DEFAULT_TIMEOUT``). With 30 s on per-destination
mappings, a direct path the client stops refreshing dies while the gateway keeps it nominated (see the
report in docs/testing.md, "Also seen")."""
NAT_PUBLIC_BASE = IPv4Address("198.51.100.150")
"""The public address of client ``i``'s NAT is this plus ``i``."""
UPSTREAM_V4 = IPv4Address("192.0.2.53")
WEB_V4 = IPv4Address("172.20.0.10")
WEB_V6 = IPv6Address("2001:db8:30::10")
WEBDNS_V4 = IPv4Address("172.20.0.53")
WEBDNS_V6 = IPv6Address("2001:db8:30::53")
"""A DNS server inside the CIDR resource (a client whose DNS server is inside a resource sends its
queries through the tunnel, as an ordinary packet to that resource)."""
APP_V4 = IPv4Address("10.20.0.5")
APP_V6 = IPv6Address("2001:db8:20::5")
INET_V4 = IPv4Address("198.18.0.10")
"""A host "on the Internet" (RFC 2544 benchmarking range), reached through the Internet resource."""
TURN_PORT = 3478
RELAY_SECRET = "sim-relay-secret"
PORTAL_TOKEN = "sim-gateway-token"

CIDR_RESOURCE = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")
DNS_RESOURCE = uuid.UUID("619fbe83-bc95-4635-9a08-68da9a944c88")
INTERNET_RESOURCE = uuid.UUID("1d2f3a4b-5c6d-4e7f-8091-a2b3c4d5e6f7")
CIDR_ADDRESS = "172.20.0.0/16"
CIDR_FILTERS = ("tcp/80", "udp/7", "udp/5000-5010", "icmp")
"""Allowed: TCP 80 (the web service), UDP 7 (echo), UDP 5000-5010 (closed on the host: port unreachable
comes back through the gateway), ICMP. Anything else gets ICMP prohibited from the gateway."""
DNS_PATTERN = "**.corp.test"
"""``**`` matches any number of labels, so SRV names like ``_sip._tcp.corp.test`` are inside too."""
ZONE: dict[str, dict[str, list[str]]] = {
    "app.corp.test": {"A": [str(APP_V4)], "AAAA": [str(APP_V6)]},
    "_sip._tcp.corp.test": {"SRV": ["10 5 5060 app.corp.test."]},
    "info.corp.test": {"TXT": ['"hello from the upstream"', '"second string"']},
    "outside.example": {"A": ["192.0.2.99"], "TXT": ['"not a resource"']},
}
"""The upstream's records: the DNS resource's names, and one name outside every resource."""
ZONE_EXTENDED: dict[str, dict[str, list[str]]] = {
    **ZONE,
    "v4only.corp.test": {"A": [str(APP_V4)]},
    "v6only.corp.test": {"AAAA": [str(APP_V6)]},
}
"""The stateful test's zone: also names of the DNS resource with addresses of one family only (a proxy IP
of the other family has nothing to map to; the gateway answers "unreachable", it does no NAT64)."""
LINK = LinkProfile(latency=millis(10), jitter=millis(2))
"""Every access link: 10 ms one way with a little jitter (Firezone's minimum simulated latency)."""
START_BUDGET: Duration = secs(5)
"""Joining the portal takes a few round trips (~0.1 s here); 5 s leaves room for a retried connect."""
CONNECT_BUDGET: Duration = secs(10)
"""ICE with relays converges within a few seconds of virtual time; 10 s flags a stuck connection."""


@dataclass(slots=True)
class GatewayWorld:
    """Handles on everything :func:`build_gateway_world` created."""

    world: World
    stub: StubPortal
    signalling: ClientSignalling
    gateway: Gateway
    gateway_host: GatewayHost
    clients: list[DevClient]
    client_ids: list[uuid.UUID]
    client_hosts: list[ClientHost]
    web: ResourceServer
    app: ResourceServer
    inet: ResourceServer
    upstream: UpstreamDnsServer
    relay_names: list[str]
    zone: DnsZone
    webdns: ResourceServer | None = None
    """The DNS server inside the CIDR resource (``extended`` worlds only)."""
    restarts: int = 0
    """How many times :meth:`restart_gateway` ran."""
    gateway_created: Instant = Instant(0)
    """When the current gateway was created: its constructor's first timeout starts its 1 s expiry sweep
    grid there (``docs/design/policy.md``), which the stateful test's ``expiry_edge`` step predicts."""

    @property
    def portal(self) -> DevPortal:
        return self.stub.portal

    def start(self, budget: Duration = START_BUDGET) -> bool:
        """Run until the gateway has joined the portal and received ``init`` (False if not in ``budget``)."""
        end = Instant(self.world.now + budget)
        while self.world.now < end:
            if self.portal.joined_sockets() and self.gateway.peers.gateway_ips is not None:
                return True
            self.world.run_for(millis(10))
        return bool(self.portal.joined_sockets())

    def restart_gateway(self, config: GatewayConfig | None = None) -> Gateway:
        """The gateway crashes and starts again on its host: same configuration (or ``config``), a new
        private key (drawn from the world's seed, one per restart), empty state. The new gateway (also
        :attr:`gateway` from now on) connects to the portal at once; :meth:`start` runs until it has
        joined."""
        self.restarts += 1
        world = self.world
        key = world.entropy.fork(f"restart-key-{self.restarts}").random_bytes(32)
        new = Gateway(
            config=self.gateway.config if config is None else config,
            private_key=key,
            entropy=world.entropy_for(f"gateway-{self.restarts}"),
            now=world.now,
            utc_ns=world.clock.unix_ns(),
        )
        world.replace_component(self.gateway_host, new)
        self.gateway = new
        self.gateway_created = world.now
        return new

    def grant(self, client: int, resource: uuid.UUID) -> dict[str, object]:
        return self.signalling.grant(self.client_ids[client], resource)

    def revoke(self, client: int, resource: uuid.UUID) -> dict[str, object]:
        return self.signalling.revoke(self.client_ids[client], resource)

    def gateway_id(self) -> str:
        rec = self.signalling.gateway_record()
        assert rec is not None
        return str(rec.id)

    def run_until_connected(self, client: int, budget: Duration = CONNECT_BUDGET) -> bool:
        """Run until ``client`` has an established connection to the gateway (False if not in budget)."""
        end = Instant(self.world.now + budget)
        gid = self.gateway_id()
        while not self.clients[client].is_connected(gid):
            if self.world.now >= end:
                return False
            self.world.run_for(millis(10))
        return True

    def drive(self, client: int, call: object) -> None:
        """Run an application call on client ``client`` now: ``lambda c, now: c.send_icmp(now, ip, 1)``."""
        c = self.clients[client]
        assert callable(call)
        self.world.drive(self.client_hosts[client], lambda now: call(c, now))


def _config_text(
    clients: list[tuple[uuid.UUID, bytes, int]],
    expires_in: int | None,
    relays: int,
    relay_v6: bool = False,
    relay_kind: str = "firezone",
) -> str:
    import base64

    lines = [
        f'token = "{PORTAL_TOKEN}"',
        'secret = "sim-portal-secret"',
        'account_slug = "sim"',
        "",
        "[[resources]]",
        f'id = "{CIDR_RESOURCE}"',
        'type = "cidr"',
        f'address = "{CIDR_ADDRESS}"',
        'name = "web"',
        "filters = [" + ", ".join(f'"{f}"' for f in CIDR_FILTERS) + "]",
        "",
        "[[resources]]",
        f'id = "{DNS_RESOURCE}"',
        'type = "dns"',
        f'address = "{DNS_PATTERN}"',
        'name = "corp"',
        "",
        "[[resources]]",
        f'id = "{INTERNET_RESOURCE}"',
        'type = "internet"',
        "",
    ]
    for cid, key, i in clients:
        lines += [
            "[[clients]]",
            f'id = "{cid}"',
            f'public_key = "{base64.b64encode(key).decode()}"',
            f'ipv4 = "{IPv4Address("100.64.1.0") + 10 + i}"',
            f'ipv6 = "{IPv6Address("fd00:2021:1111::1:0") + 10 + i}"',
            "",
        ]
        for rid in (CIDR_RESOURCE, DNS_RESOURCE, INTERNET_RESOURCE):
            lines += ["[[policies]]", f'client = "{cid}"', f'resource = "{rid}"']
            if expires_in is not None:
                lines.append(f"expires_in = {expires_in}")
            lines.append("")
    for i in range(relays):
        rid = uuid.UUID(int=0x0A133356_7A9E_4B9A_B413_0D95A5720F00 + i)
        lines += [
            "[[relays]]",
            f'id = "{rid}"',
            f'addrs = ["{RELAY_V4_BASE + i}:{TURN_PORT}"'
            + (f', "[{RELAY_V6_BASE + i}]:{TURN_PORT}"]' if relay_v6 else "]"),
            f'secret = "{RELAY_SECRET}"',
            *([f'kind = "{relay_kind}"'] if relay_kind != "firezone" else []),
            "",
        ]
    return "\n".join(lines)


def build_gateway_world(
    seed: int | bytes,
    *,
    clients: int = 1,
    relays: int = 2,
    relay_only: bool = False,
    expires_in: int | None = None,
    world: World | None = None,
    link: LinkProfile = LINK,
    client_link: LinkProfile | None = None,
    client_stack: str = "v4",
    relay_v6: bool = False,
    extended: bool = False,
    nat: str = "none",
    relay_kind: str = "firezone",
) -> GatewayWorld:
    """Build the world (see the module docstring); ``expires_in`` (seconds) limits every policy.

    ``client_link`` is the clients' access link (default ``link``); ``client_stack`` their underlay
    families (``v4``, ``v6`` or ``dual``: addresses from ``CLIENT_V4_BASE`` / ``CLIENT_V6_BASE``);
    ``relay_v6`` gives the relays IPv6 addresses too (needed by IPv6-only clients); ``extended`` adds
    an IPv6 address to ``web`` and the DNS server ``webdns`` inside the CIDR resource (the stateful
    test's world); ``nat`` (``cone`` or ``symmetric``, :mod:`sim.nat`) puts every client with IPv4 behind
    a NAT of its own (private address ``10.0.<i>.2``, public ``NAT_PUBLIC_BASE + i``); ``relay_kind``
    ``coturn`` makes the relays the dev relay's coturn flavour (the portal hands out TURN REST
    credentials for them). The defaults keep the world of the scenarios."""
    w = world if world is not None else World(seed)
    keys = w.entropy.fork("gateway-world-keys")
    client_keys = []
    for i in range(clients):
        cid = uuid.UUID(bytes=keys.random_bytes(16), version=4)
        client_keys.append((cid, keys.random_bytes(32), i))
    gw_priv = keys.random_bytes(32)
    keyed = [(c, public_key(k), i) for c, k, i in client_keys]
    text = _config_text(keyed, expires_in, relays, relay_v6, relay_kind)
    epoch = w.clock.unix_ns() // 1_000_000_000
    stub = StubPortal(DevPortal(load_config(text)), epoch_unix=epoch - w.now // 1_000_000_000)
    portal_host = StubPortalHost("portal", stub, ipv4=PORTAL_V4, link=link)
    w.add_host(portal_host)

    relay_names = []
    for i in range(relays):
        name = f"relay-{i}"
        w.add_host(relay_host(w, name, i, RELAY_SECRET, epoch, link, relay_v6, relay_kind))
        relay_names.append(name)

    zone = DnsZone(ZONE_EXTENDED if extended else ZONE)
    upstream = UpstreamDnsServer(zone)
    w.add_host(Host("dns", upstream, ipv4=UPSTREAM_V4, udp_ports=(DNS_PORT,), link=link))
    web = ResourceServer([WEB_V4, WEB_V6] if extended else [WEB_V4], udp_ports=(7,), tcp_ports=(80,))
    w.add_host(Host("web", web, ipv4=WEB_V4, ipv6=WEB_V6 if extended else None, link=link))
    webdns = None
    if extended:
        webdns = ResourceServer([WEBDNS_V4, WEBDNS_V6], udp_ports=(), tcp_ports=(), dns=zone)
        w.add_host(Host("webdns", webdns, ipv4=WEBDNS_V4, ipv6=WEBDNS_V6, link=link))
    app = ResourceServer([APP_V4, APP_V6], udp_ports=(7,), tcp_ports=(80, 443))
    w.add_host(Host("app", app, ipv4=APP_V4, ipv6=APP_V6, link=link))
    inet = ResourceServer([INET_V4], udp_ports=(7,), tcp_ports=(80, 443))
    w.add_host(Host("inet", inet, ipv4=INET_V4, link=link))

    table: dict[str, tuple[IPAddress, ...]] = {}
    for name in zone.names():
        found = zone.resolve(name)
        if found:
            table[name] = found
    gateway_created = w.now
    gateway = Gateway(
        config=GatewayConfig(
            api_url="wss://portal.sim", token=PORTAL_TOKEN, firezone_id="gw-sim-1", name="gateway"
        ),
        private_key=gw_priv,
        entropy=w.entropy_for("gateway"),
        now=w.now,
        utc_ns=w.clock.unix_ns(),
    )
    gw_host = GatewayHost(
        "gateway",
        gateway,
        SocketAddr(PORTAL_V4, PORTAL_PORT),
        ipv4=GATEWAY_V4,
        ipv6=GATEWAY_V6,
        link=link,
        resolver=SimResolver(table),
        upstream_dns=SocketAddr(UPSTREAM_V4, DNS_PORT),
    )
    w.add_host(gw_host)

    signalling = ClientSignalling(w, portal_host)
    sim_clients, hosts, ids = [], [], []
    for cid, priv, i in client_keys:
        cfg = stub.portal.config.client(cid)
        assert cfg is not None
        name = f"client-{i}"
        client = DevClient(
            name,
            priv,
            cfg.ipv4,
            cfg.ipv6,
            w.entropy_for(name),
            w.now,
            w.clock.unix_ns(),
            echo_ident=0xC000 + i,
        )
        v4: IPv4Address | None = CLIENT_V4_BASE + i if client_stack in ("v4", "dual") else None
        if v4 is not None and nat != "none":
            v4 = IPv4Address(f"10.0.{i}.2")
        v6 = CLIENT_V6_BASE + i if client_stack in ("v6", "dual") else None
        host = signalling.host_for(cid, name, client, ipv4=v4, ipv6=v6, link=client_link or link)
        w.add_host(host)
        if v4 is not None and nat != "none":
            w.add_nat(
                Nat(
                    name,
                    NAT_PUBLIC_BASE + i,
                    nat,
                    SYMMETRIC_NAT_TIMEOUT if nat == "symmetric" else DEFAULT_TIMEOUT,
                )
            )
        sim_clients.append(client)
        hosts.append(host)
        ids.append(cid)
        signalling.client_init(cid)
    if relay_only:
        w.partition([h.name for h in hosts], ["gateway"])
    return GatewayWorld(
        w,
        stub,
        signalling,
        gateway,
        gw_host,
        sim_clients,
        ids,
        hosts,
        web,
        app,
        inet,
        upstream,
        relay_names,
        zone,
        webdns,
        gateway_created=gateway_created,
    )


def relay_host(
    world: World,
    name: str,
    n: int,
    secret: str,
    epoch: int,
    link: LinkProfile,
    v6: bool,
    flavour: str = "firezone",
) -> RelayHost:
    """The ``n``-th relay (addresses ``RELAY_V4_BASE + n`` and, with ``v6``, ``RELAY_V6_BASE + n``), a
    :class:`DevRelay` of ``flavour``."""
    ip = RELAY_V4_BASE + n
    ip6 = RELAY_V6_BASE + n if v6 else None
    listen = [SocketAddr(ip, TURN_PORT)] + ([SocketAddr(ip6, TURN_PORT)] if ip6 is not None else [])
    relayed = [SocketAddr(ip, 0)] + ([SocketAddr(ip6, 0)] if ip6 is not None else [])
    server = DevRelay(
        listen, relayed, secret, world.entropy_for(name), wall_clock_secs=epoch, flavour=flavour
    )
    return RelayHost(name, RelayComponent(server), ipv4=ip, ipv6=ip6, udp_ports=(TURN_PORT,), link=link)
