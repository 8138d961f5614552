"""Configure the TUN interface with netlink (pyroute2), as Firezone's TUN device manager does
(``rust/bin-shared/src/tun_device_manager/linux.rs``).

:func:`apply_interface_config` makes the interface match a :class:`gateway_core.interface.InterfaceConfig`
and reports the outcome as a core input (R7), never raising for netlink errors:

1. look up the interface index by name (failure: :class:`InterfaceConfigFailed`);
2. remove every address that is not wanted (old tunnel addresses after a changed ``init``) except the
   IPv6 link-local one the kernel adds; Firezone deletes *all* addresses and re-adds them, which on a
   re-apply with the same addresses would take the last IPv4 address away for a moment and with it every
   IPv4 route through the device, so we only remove what is not wanted;
3. set the MTU (1280) and the link up (failure of either: failed);
4. add ``<ipv4>/32`` and ``<ipv6>/128`` ("exists" is success); one family may fail (IPv6 disabled),
   both failing is a failure. The IPv6 address is added with ``IFA_F_NODAD`` (Firezone adds it plainly):
   otherwise it is *tentative* until the kernel's DAD work item has run, and a DNS server bound right
   after the configuration is reported fails with "Cannot assign requested address" (about 1 in 100
   immediate binds in a namespace; ``tests/system/test_dns_bind_after_configure.py``);
5. for each family whose address is on the interface, add the three "not fwmark 0xfd002021 lookup T"
   rules (priorities 100/200/300, protocol kernel; "exists" is fine, other failures are warnings);
6. make table ``0x2021fd00`` hold exactly the wanted routes through the device (proto static, scope
   universe): add the missing ones, delete the others; EEXIST/EOPNOTSUPP on add and ENOENT/ESRCH on
   delete are ignored, other failures are warnings.

Applying the same configuration twice changes nothing. :func:`flush_firezone_tables` empties the three
Firezone tables (done once at start-up).

:func:`sync_link_scope_routes` copies the main table's link-scope routes of interfaces that are up into
table ``0x2021fd01`` so directly connected networks never go into the tunnel (``linux.rs:241-278``,
``522-594``); :func:`run_link_scope_mirror` repeats it. Two differences: Firezone reacts to netlink
notifications (debounced 500 ms), we re-check every :data:`MIRROR_INTERVAL` (a route dump is cheap and a
poll cannot miss a notification); and stale copies are removed, where Firezone only ever adds.

Everything here is synchronous netlink; :func:`configure_interface` and :func:`run_link_scope_mirror`
run it in a worker thread so the event loop never blocks. Never call the synchronous functions from the
event loop's own thread: pyroute2's synchronous API runs an asyncio loop of its own and fails there.
``netns`` (a name under ``/run/netns``) lets tests configure a namespace; the daemon passes ``None`` (its
own namespace).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gateway_core.interface import (
    FIREZONE_MARK,
    FIREZONE_TABLES,
    RULES,
    TABLE_LINK_SCOPE,
    TABLE_USER_ROUTES,
    ConfigureInterface,
    InterfaceConfig,
    InterfaceConfigFailed,
    InterfaceConfigured,
)
from gateway_io.tun import DEFAULT_NAME

log = logging.getLogger(__name__)

FIB_RULE_INVERT = 0x2
"""``fib_rule_hdr.flags`` bit for "not" (``linux/fib_rules.h``): the rule matches unmarked packets."""

RTPROT_KERNEL = 2
"""Protocol of the policy rules (Firezone installs them as "kernel", ``linux.rs:295``)."""

RTPROT_STATIC = 4
"""Protocol of the tunnel routes ("static", ``linux.rs:200-238``)."""

RT_SCOPE_UNIVERSE = 0
"""Scope of the tunnel routes: global."""

RT_SCOPE_LINK = 253
"""Scope of the routes to directly connected networks (``linux/rtnetlink.h``)."""

RT_TABLE_MAIN = 254
"""The main routing table."""

IFA_F_NODAD = 0x02
"""``ifa_flags`` bit (``linux/if_addr.h``): no duplicate address detection, so the IPv6 address is usable
(bindable) as soon as it is added. DAD protects a shared link; the TUN is point-to-point with no neighbour
that could hold the address (the kernel skips DAD on a NOARP device anyway, but only once its work item has
run, leaving the address tentative for a moment). Firezone adds the address without it (``linux.rs:155``).
"""

MIRROR_INTERVAL = 2.0
"""Seconds between two link-scope mirror checks (Firezone: 500 ms after the last netlink notification)."""

_ADD_IGNORED = (errno.EEXIST, errno.EOPNOTSUPP)
_DEL_IGNORED = (errno.ENOENT, errno.ESRCH)


def _family(net: IPv4Network | IPv6Network) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _open(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns is not None else IPRoute()


def _sync_addresses(
    ipr: IPRoute, index: int, config: InterfaceConfig, warnings: list[str]
) -> dict[int, bool]:
    """Remove unwanted addresses, add the wanted ones; which families (4, 6) have their address now."""
    wanted = {ip for ip in (config.ipv4, config.ipv6) if ip is not None}
    present: set[Any] = set()
    for msg in ipr.get_addr(index=index):
        ip = ip_address(msg.get_attr("IFA_ADDRESS"))
        if ip.is_link_local:
            continue  # the kernel's IPv6 link-local address: kept, so a re-apply changes nothing
        if ip in wanted and msg["prefixlen"] == ip.max_prefixlen:
            present.add(ip)
            continue
        try:
            ipr.addr("del", index=index, address=str(ip), prefixlen=msg["prefixlen"])
        except NetlinkError as e:
            if e.code not in _DEL_IGNORED:
                raise
    ok = {4: False, 6: False}
    for ip in sorted(wanted, key=lambda a: a.version):
        if ip in present:
            ok[ip.version] = True
            continue
        try:
            flags = IFA_F_NODAD if ip.version == 6 else 0
            ipr.addr("add", index=index, address=str(ip), prefixlen=ip.max_prefixlen, flags=flags)
            ok[ip.version] = True
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                ok[ip.version] = True
            else:
                warnings.append(f"cannot add {ip}/{ip.max_prefixlen}: {e}")
    return ok


def _ensure_rules(ipr: IPRoute, family: int, warnings: list[str]) -> None:
    for priority, table in RULES:
        try:
            ipr.rule(
                "add",
                family=family,
                table=table,
                priority=priority,
                fwmark=FIREZONE_MARK,
                flags=FIB_RULE_INVERT,
                protocol=RTPROT_KERNEL,
            )
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                warnings.append(f"cannot add rule {priority} (family {family}): {e}")


def _sync_routes(ipr: IPRoute, index: int, config: InterfaceConfig, warnings: list[str]) -> None:
    wanted = set(config.routes)
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=TABLE_USER_ROUTES):
            if msg.get_attr("RTA_OIF") != index:
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            net = ip_network(f"{dst}/{msg['dst_len']}")
            if net in wanted:
                continue
            try:
                ipr.route("del", family=family, dst=str(net), oif=index, table=TABLE_USER_ROUTES)
            except NetlinkError as e:
                if e.code not in _DEL_IGNORED:
                    warnings.append(f"cannot delete route {net}: {e}")
    for net in sorted(wanted, key=lambda n: (n.version, str(n))):
        try:
            ipr.route(
                "add",
                family=_family(net),
                dst=str(net),
                oif=index,
                table=TABLE_USER_ROUTES,
                proto=RTPROT_STATIC,
                scope=RT_SCOPE_UNIVERSE,
            )
        except NetlinkError as e:
            if e.code not in _ADD_IGNORED:
                warnings.append(f"cannot add route {net}: {e}")


def apply_interface_config(
    config: InterfaceConfig, *, ifname: str = DEFAULT_NAME, netns: str | None = None
) -> InterfaceConfigured | InterfaceConfigFailed:
    """Make interface ``ifname`` match ``config`` (see the module docstring); never raises for netlink."""
    warnings: list[str] = []
    try:
        with _open(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return InterfaceConfigFailed(config, f"no interface named {ifname}")
            index = found[0]
            ok = _sync_addresses(ipr, index, config, warnings)
            ipr.link("set", index=index, mtu=config.mtu, state="up")
            if not any(ok.values()):
                detail = "; ".join(warnings) or "no address in the configuration"
                return InterfaceConfigFailed(config, f"no address could be added to {ifname}: {detail}")
            for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
                if ok[version]:
                    _ensure_rules(ipr, family, warnings)
            _sync_routes(ipr, index, config, warnings)
    except (NetlinkError, OSError) as e:
        return InterfaceConfigFailed(config, f"netlink: {e}")
    for w in warnings:
        log.warning("%s: %s", ifname, w)
    return InterfaceConfigured(config, ipv4=ok[4], ipv6=ok[6], warnings=tuple(warnings))


def flush_firezone_tables(*, netns: str | None = None) -> list[str]:
    """Delete every route in the three Firezone tables (start-up, ``linux.rs:479-500``); the errors."""
    errors: list[str] = []
    with _open(netns) as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for table in FIREZONE_TABLES:
                for msg in ipr.get_routes(family=family, table=table):
                    try:
                        ipr.route("del", **_route_key(msg, family, table))
                    except NetlinkError as e:
                        if e.code not in _DEL_IGNORED:
                            errors.append(f"table {table:#x}: {e}")
    return errors


def _route_key(msg: Any, family: int, table: int) -> dict[str, Any]:
    key: dict[str, Any] = {"family": family, "table": table, "dst_len": msg["dst_len"], "type": msg["type"]}
    dst = msg.get_attr("RTA_DST")
    if dst is not None:
        key["dst"] = dst
    oif = msg.get_attr("RTA_OIF")
    if oif is not None:
        key["oif"] = oif
    return key


def _route_table(msg: Any) -> int:
    table = msg.get_attr("RTA_TABLE")
    return int(table if table is not None else msg["table"])


def _link_scope_routes(ipr: IPRoute, table: int) -> dict[tuple[int, str, int], Any]:
    """Link-scope routes of ``table`` keyed by ``(family, destination/len, interface index)``."""
    found: dict[tuple[int, str, int], Any] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=table):
            if msg["scope"] != RT_SCOPE_LINK or _route_table(msg) != table:
                continue
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            found[(family, f"{dst}/{msg['dst_len']}", msg.get_attr("RTA_OIF") or 0)] = msg
    return found


def sync_link_scope_routes(*, netns: str | None = None) -> list[str]:
    """Make table ``0x2021fd01`` hold exactly the main table's link-scope routes of interfaces that are
    operationally up; returns the errors (a failed route is skipped, the next sync tries again)."""
    errors: list[str] = []
    with _open(netns) as ipr:
        up = {link["index"] for link in ipr.get_links() if link.get_attr("IFLA_OPERSTATE") == "UP"}
        wanted = {k: m for k, m in _link_scope_routes(ipr, RT_TABLE_MAIN).items() if k[2] in up}
        present = _link_scope_routes(ipr, TABLE_LINK_SCOPE)
        for key in sorted(present.keys() - wanted.keys()):
            family, dst, oif = key
            try:
                ipr.route("del", family=family, dst=dst, oif=oif, table=TABLE_LINK_SCOPE, scope=RT_SCOPE_LINK)
            except NetlinkError as e:
                if e.code not in _DEL_IGNORED:
                    errors.append(f"cannot delete link-scope copy {dst}: {e}")
        for key in sorted(wanted.keys() - present.keys()):
            family, dst, oif = key
            msg = wanted[key]
            extra = {"prefsrc": msg.get_attr("RTA_PREFSRC")} if msg.get_attr("RTA_PREFSRC") else {}
            try:
                ipr.route(
                    "add",
                    family=family,
                    dst=dst,
                    oif=oif,
                    table=TABLE_LINK_SCOPE,
                    scope=RT_SCOPE_LINK,
                    proto=msg["proto"],
                    **extra,
                )
            except NetlinkError as e:
                if e.code not in _ADD_IGNORED:
                    errors.append(f"cannot copy link-scope route {dst}: {e}")
    return errors


async def run_link_scope_mirror(
    interval: float = MIRROR_INTERVAL,
    *,
    netns: str | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run :func:`sync_link_scope_routes` now and every ``interval`` seconds (errors logged at debug)."""
    started = False
    while True:
        try:
            errors = await anyio.to_thread.run_sync(lambda: sync_link_scope_routes(netns=netns))
        except (NetlinkError, OSError) as e:
            errors = [f"netlink: {e}"]
        for error in errors:
            log.debug("link-scope mirror: %s", error)
        if not started:
            task_status.started()
            started = True
        await anyio.sleep(interval)


async def configure_interface(
    command: ConfigureInterface,
    *,
    ifname: str = DEFAULT_NAME,
    netns: str | None = None,
    apply: Callable[..., InterfaceConfigured | InterfaceConfigFailed] = apply_interface_config,
) -> InterfaceConfigured | InterfaceConfigFailed:
    """Execute :class:`ConfigureInterface` in a worker thread; the result is the input for the core."""
    return await anyio.to_thread.run_sync(lambda: apply(command.config, ifname=ifname, netns=netns))
