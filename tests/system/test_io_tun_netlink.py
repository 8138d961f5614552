"""System tests: the real TUN device and its netlink configuration, inside network namespaces the tests
create (root required; CI runs as root, never skipped).

- ``ping`` from inside the namespace towards a tunnel address: the echo request comes out of the TUN
  descriptor; we write the echo reply into it and ``ping`` succeeds (IPv4 and IPv6).
- :func:`apply_interface_config` applied, re-applied unchanged (nothing changes) and re-applied with
  other addresses (old ones gone, new ones there, no duplicate rules), checked with ``ip addr``/``ip rule``/
  ``ip route`` in that namespace; IPv6 disabled: only IPv4 is configured; no interface: a failure value.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import anyio
import pytest

from gateway_core.interface import (
    ConfigureInterface,
    InterfaceConfig,
    InterfaceConfigFailed,
    InterfaceConfigured,
)
from gateway_io.netlink import (
    apply_interface_config,
    configure_interface,
    flush_firezone_tables,
    run_link_scope_mirror,
    sync_link_scope_routes,
)
from gateway_io.tun import DEFAULT_NAME, TunClosed, TunDevice
from tests.system.io_netns import inside, netns, sh

pytestmark = [pytest.mark.system]

V4_A, V6_A = IPv4Address("100.64.0.1"), IPv6Address("fd00:2021:1111::1")
V4_B, V6_B = IPv4Address("100.64.0.7"), IPv6Address("fd00:2021:1111::7")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ns() -> Iterator[str]:
    with netns("fztun") as name:
        yield name


@pytest.fixture
def tun(ns: str) -> Iterator[TunDevice]:
    with inside(ns):
        dev = TunDevice.open()
    try:
        yield dev
    finally:
        dev.close()


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(request: bytes) -> bytes:
    """The echo reply to an ICMPv4 or ICMPv6 echo request (addresses swapped, checksums recomputed)."""
    if request[0] >> 4 == 4:
        ihl = (request[0] & 0x0F) * 4
        header = bytearray(request[:ihl])
        header[12:16], header[16:20] = request[16:20], request[12:16]
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", checksum(bytes(header)))
        icmp = bytearray(request[ihl:])
        assert icmp[0] == 8, "not an echo request"
        icmp[0], icmp[2:4] = 0, b"\0\0"
        icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
        return bytes(header) + bytes(icmp)
    assert request[6] == 58, "not ICMPv6 without extension headers"
    header = bytearray(request[:40])
    header[8:24], header[24:40] = request[24:40], request[8:24]
    icmp = bytearray(request[40:])
    assert icmp[0] == 128, "not an echo request"
    icmp[0], icmp[2:4] = 129, b"\0\0"
    pseudo = bytes(header[8:40]) + struct.pack("!I3xB", len(icmp), 58)
    icmp[2:4] = struct.pack("!H", checksum(pseudo + bytes(icmp)))
    return bytes(header) + bytes(icmp)


@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["100.64.0.2", "fd00:2021:1111::2"])
async def test_ping_through_the_tun(ns: str, tun: TunDevice, peer: str) -> None:
    result = await configure_interface(ConfigureInterface(InterfaceConfig(V4_A, V6_A)), netns=ns)
    assert isinstance(result, InterfaceConfigured) and result.ipv4 and result.ipv6
    argv = ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "10", "-n", peer]
    async with await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as ping:
        try:
            with anyio.fail_after(15):
                while True:  # skip anything else the kernel sends (IPv6 router solicitations...)
                    packets = await tun.read_batch()
                    requests = [
                        p
                        for p in packets
                        if (p[0] >> 4 == 4 and p[9] == 1 and p[20] == 8)
                        or (p[0] >> 4 == 6 and p[6] == 58 and p[40] == 128)
                    ]
                    if requests:
                        break
            request = requests[0]
            src = request[12:16] if request[0] >> 4 == 4 else request[8:24]
            dst = request[16:20] if request[0] >> 4 == 4 else request[24:40]
            assert ip_address(dst) == ip_address(peer)
            assert ip_address(src) in (V4_A, V6_A)
            assert tun.write(echo_reply(request)) is None
            with anyio.fail_after(15):
                code = await ping.wait()
        finally:
            if ping.returncode is None:
                ping.kill()
        assert code == 0, (await ping.stdout.receive()) if ping.stdout else code


def addr_show(ns: str) -> str:
    return sh("ip", "-n", ns, "addr", "show", "dev", DEFAULT_NAME)


def rules(ns: str, family: str) -> list[str]:
    out = sh("ip", "-n", ns, family, "-d", "rule", "show")
    return sorted(line.strip() for line in out.splitlines() if "fwmark 0xfd002021" in line)


def routes(ns: str, family: str) -> str:
    return sh("ip", "-n", ns, family, "route", "show", "table", "0x2021fd00")


def snapshot(ns: str) -> tuple[str, list[str], list[str], str, str]:
    return addr_show(ns), rules(ns, "-4"), rules(ns, "-6"), routes(ns, "-4"), routes(ns, "-6")


def test_configure_reapply_and_change(ns: str, tun: TunDevice) -> None:
    first = apply_interface_config(InterfaceConfig(V4_A, V6_A), netns=ns)
    assert isinstance(first, InterfaceConfigured), first
    assert (first.ipv4, first.ipv6, first.warnings) == (True, True, ())
    addrs = addr_show(ns)
    assert "mtu 1280" in addrs and ",UP" in addrs
    assert "inet 100.64.0.1/32" in addrs and "inet6 fd00:2021:1111::1/128" in addrs
    for family in ("-4", "-6"):
        found = rules(ns, family)
        assert len(found) == 3, found
        for prio, table in ((100, "0x2021fd00"), (200, "0x2021fd01"), (300, "0x2021fd02")):
            expected = f"{prio}:\tnot from all fwmark 0xfd002021 lookup {int(table, 16)} proto kernel"
            assert expected in found, found
    assert "100.64.0.0/11 dev tun-firezone proto static" in routes(ns, "-4")
    assert "fd00:2021:1111::/107 dev tun-firezone proto static" in routes(ns, "-6")

    before = snapshot(ns)
    again = apply_interface_config(InterfaceConfig(V4_A, V6_A), netns=ns)
    assert isinstance(again, InterfaceConfigured) and again.warnings == ()
    assert snapshot(ns) == before  # idempotent: nothing changed

    changed = apply_interface_config(InterfaceConfig(V4_B, V6_B), netns=ns)
    assert isinstance(changed, InterfaceConfigured) and changed.ipv4 and changed.ipv6
    addrs = addr_show(ns)
    assert "100.64.0.7/32" in addrs and "fd00:2021:1111::7/128" in addrs
    assert "100.64.0.1/" not in addrs and "fd00:2021:1111::1/" not in addrs
    assert len(rules(ns, "-4")) == 3 and len(rules(ns, "-6")) == 3
    assert before[3:] == snapshot(ns)[3:]  # the routes survived the address change

    assert flush_firezone_tables(netns=ns) == []
    assert routes(ns, "-4").strip() == "" and routes(ns, "-6").strip() == ""


def test_routes_not_wanted_are_removed(ns: str, tun: TunDevice) -> None:
    from ipaddress import ip_network

    extra = InterfaceConfig(V4_A, V6_A, routes=(ip_network("100.64.0.0/11"), ip_network("10.9.0.0/16")))
    assert isinstance(apply_interface_config(extra, netns=ns), InterfaceConfigured)
    assert "10.9.0.0/16 dev tun-firezone" in routes(ns, "-4")
    assert isinstance(apply_interface_config(InterfaceConfig(V4_A, V6_A), netns=ns), InterfaceConfigured)
    assert "10.9.0.0/16" not in routes(ns, "-4")
    assert "100.64.0.0/11 dev tun-firezone" in routes(ns, "-4")


def test_ipv6_disabled_configures_ipv4_only(ns: str, tun: TunDevice) -> None:
    sh("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", ns=ns)
    sh("sysctl", "-q", "-w", f"net.ipv6.conf.{DEFAULT_NAME}.disable_ipv6=1", ns=ns)
    result = apply_interface_config(InterfaceConfig(V4_A, V6_A), netns=ns)
    assert isinstance(result, InterfaceConfigured), result
    assert result.ipv4 and not result.ipv6
    assert any("fd00:2021:1111::1" in w for w in result.warnings)
    assert "inet 100.64.0.1/32" in addr_show(ns)
    assert len(rules(ns, "-4")) == 3 and rules(ns, "-6") == []


def test_missing_interface_is_a_failure_value(ns: str) -> None:
    result = apply_interface_config(InterfaceConfig(V4_A, V6_A), ifname="tun-nope", netns=ns)
    assert isinstance(result, InterfaceConfigFailed)
    assert "tun-nope" in result.error


def test_tun_name_is_configurable_and_closing_deletes_it(ns: str) -> None:
    with inside(ns):
        dev = TunDevice.open("tun-other")
    assert dev.name == "tun-other"
    assert "tun-other" in sh("ip", "-n", ns, "link", "show")
    assert "qlen 10000" in sh("ip", "-n", ns, "link", "show", "dev", "tun-other")
    assert dev.try_read() is None  # non-blocking: nothing queued
    dev.close()
    dev.close()  # idempotent
    assert "tun-other" not in sh("ip", "-n", ns, "link", "show")
    assert dev.write(b"\x45") is not None  # a closed device reports, never raises


def mirror(ns: str) -> str:
    return sh("ip", "-n", ns, "-4", "route", "show", "table", "0x2021fd01")


@pytest.mark.anyio
async def test_link_scope_routes_are_mirrored(ns: str) -> None:
    # pyroute2's synchronous API runs an event loop of its own: from async code, call it in a thread.
    def sync() -> list[str]:
        return sync_link_scope_routes(netns=ns)

    async def sync_link_scope(ns: str) -> list[str]:
        return await anyio.to_thread.run_sync(sync)

    sh("ip", "-n", ns, "link", "add", "fzv0", "type", "veth", "peer", "name", "fzv1")
    sh("ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "fzv0")
    sh("ip", "-n", ns, "link", "set", "fzv1", "up")
    sh("ip", "-n", ns, "link", "set", "fzv0", "up")
    assert await sync_link_scope(ns) == []
    assert "10.77.0.0/24 dev fzv0 proto kernel scope link src 10.77.0.1" in mirror(ns)
    before = mirror(ns)
    assert await sync_link_scope(ns) == [] and mirror(ns) == before  # nothing to do twice

    sh("ip", "-n", ns, "link", "set", "fzv0", "down")  # no longer up: its copy goes
    assert await sync_link_scope(ns) == []
    assert "10.77.0.0/24" not in mirror(ns)

    sh("ip", "-n", ns, "link", "set", "fzv0", "up")
    async with anyio.create_task_group() as tg:
        await tg.start(lambda task_status: run_link_scope_mirror(0.05, netns=ns, task_status=task_status))
        assert "10.77.0.0/24 dev fzv0" in mirror(ns)  # the first sync ran before start() returned
        sh("ip", "-n", ns, "addr", "add", "10.78.0.1/24", "dev", "fzv0")
        with anyio.fail_after(10):
            while "10.78.0.0/24 dev fzv0" not in mirror(ns):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_closing_wakes_a_waiting_reader(ns: str) -> None:
    with inside(ns):
        dev = TunDevice.open("tun-wait")
    outcome: list[BaseException] = []

    async def reader() -> None:
        try:
            await dev.read_batch()
        except TunClosed as e:
            outcome.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        await dev.aclose()
    assert len(outcome) == 1
    with pytest.raises(TunClosed):
        dev.try_read()
