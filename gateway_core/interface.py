"""The tunnel interface as the core sees it: the desired configuration, the command and its results.

When ``init`` arrives the core knows the gateway's tunnel addresses and orders
:class:`ConfigureInterface` (declarative: the whole desired configuration; applying it twice is harmless,
and applying a changed one replaces the old addresses). The IO layer applies it with netlink (as Firezone's
``rust/bin-shared/src/tun_device_manager/linux.rs``) and reports :class:`InterfaceConfigured` (which
families got their address) or :class:`InterfaceConfigFailed` (R7: IO failures are inputs). The routing
constants live here so that core and IO agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from gateway_core.commands import Command
from gateway_core.inputs import Input

TUN_MTU = 1280
"""MTU of the TUN device (Firezone ``MAX_IP_SIZE``, ``ip-packet/src/lib.rs:35``): the IPv6 minimum, so a
tunnelled packet plus WireGuard and TURN overhead fits any path."""

IPV4_TUNNEL = IPv4Network("100.64.0.0/11")
"""Route to the TUN for client tunnel addresses (Firezone ``IPV4_TUNNEL``, ``tunnel/src/lib.rs:57``)."""

IPV6_TUNNEL = IPv6Network("fd00:2021:1111::/107")
"""The same for IPv6 (Firezone ``IPV6_TUNNEL``, ``tunnel/src/lib.rs:61``)."""

FIREZONE_MARK = 0xFD002021
"""``SO_MARK`` of the gateway's own sockets; the policy rules skip marked traffic so it never loops into
the TUN (Firezone ``FIREZONE_MARK``, ``bin-shared/src/lib.rs:54``)."""

TABLE_USER_ROUTES = 0x2021FD00
"""Routing table of the tunnel routes, rule priority 100 (``tun_device_manager/linux.rs:52``)."""
TABLE_LINK_SCOPE = 0x2021FD01
"""Copies of the main table's link-scope routes, rule priority 200 (``linux.rs:53``)."""
TABLE_DEFAULT_ROUTES = 0x2021FD02
"""Default routes (Internet resource), rule priority 300 (``linux.rs:54``)."""

RULES = ((100, TABLE_USER_ROUTES), (200, TABLE_LINK_SCOPE), (300, TABLE_DEFAULT_ROUTES))
"""``(priority, table)`` of the three "not fwmark FIREZONE_MARK lookup table" rules, per family."""

FIREZONE_TABLES = (TABLE_USER_ROUTES, TABLE_LINK_SCOPE, TABLE_DEFAULT_ROUTES)
"""The tables flushed at start-up (``linux.rs:479-500``)."""


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """What the TUN interface should look like: one address per family (``None``: none), the MTU, routes,
    and whether the portal's ``init`` says the host masquerades each family
    (``config.ipv4_masquerade_enabled`` / ``ipv6_...``; Firezone reads and ignores them). With masquerading
    nothing but replies may enter the tunnel from another interface, so the IO layer installs its underlay
    guard for that family (decision 0110); without it the operator routes the tunnel ranges to the gateway
    on purpose and filters them."""

    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    mtu: int = TUN_MTU
    routes: tuple[IPv4Network | IPv6Network, ...] = field(default=(IPV4_TUNNEL, IPV6_TUNNEL))
    masquerade_v4: bool = True
    masquerade_v6: bool = True


@dataclass(frozen=True, slots=True)
class ConfigureInterface(Command):
    """Make the TUN interface match ``config`` (addresses, MTU, link up, policy rules, routes)."""

    config: InterfaceConfig


@dataclass(frozen=True, slots=True)
class InterfaceConfigured(Input):
    """``config`` was applied; ``ipv4``/``ipv6`` say which families got their address (one may fail)."""

    config: InterfaceConfig
    ipv4: bool
    ipv6: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InterfaceConfigFailed(Input):
    """Applying ``config`` failed (no interface, MTU or link-up refused, or no address at all)."""

    config: InterfaceConfig
    error: str
