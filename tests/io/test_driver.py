"""The driver loop with a fake core and fake transports (no root): ordering, draining (R3), fairness (R9),
the timer (R4/R5) with a fake clock, IO failures as inputs (R7) and the shutdown flush (R10)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from gateway_core.commands import Command, Exit, Transmit, WriteTun
from gateway_core.contract import Deadline
from gateway_core.dns.forwarding import (
    DnsQueryReceived,
    DnsUpstreamFailed,
    DnsUpstreamResponse,
    ForwardDnsQuery,
    SendDnsResponse,
)
from gateway_core.dns.servers import BindDnsServers, DnsServerBound, DnsTransport
from gateway_core.gateway_types import DomainResolved, DomainResolveFailed, ResolveDomain, WallClockAnchor
from gateway_core.inputs import Input, SendFailed, ShutdownRequested
from gateway_core.interface import (
    ConfigureInterface,
    InterfaceConfig,
    InterfaceConfigFailed,
    InterfaceConfigured,
)
from gateway_core.portal.channel import (
    PortalConnected,
    PortalDisconnected,
    PortalFrameReceived,
    SendPortalFrame,
)
from gateway_io.dns_server import DnsQuery
from gateway_io.driver import SHUTDOWN_GRACE, YIELD_AFTER, YIELD_TURNS, Driver, Transports
from gateway_io.io_counters import V4, IoCounters
from tests.io.driver_fakes import (
    CLIENT,
    LOCAL4,
    LOCAL6,
    BatchOnlyTun,
    BatchOnlyUdp,
    FakeBatchDns,
    FakeCore,
    FakeDns,
    FakeInterface,
    FakePortal,
    FakeResolver,
    FakeSubmittingResolver,
    FakeTun,
    FakeUdp,
    Log,
    goodbye_script,
    sa,
)

pytestmark = pytest.mark.anyio

LIMIT = 10
"""Seconds any awaited condition may take before the test fails (never reached when things work)."""

SEC = 1_000_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, t: int = SEC) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


async def until(cond: Callable[[], bool]) -> None:
    with anyio.fail_after(LIMIT):
        while not cond():
            await anyio.lowlevel.checkpoint()


class Rig:
    """A driver with every fake transport, run in a task group."""

    def __init__(self, core: FakeCore, clock: Callable[[], int] = time.monotonic_ns, **kw: Any) -> None:
        self.core = core
        self.log = Log()
        self.tun = FakeTun(self.log)
        self.tun_transport: Any = self.tun
        self.udp4 = FakeUdp(self.log, LOCAL4)
        self.udp6 = FakeUdp(self.log, LOCAL6)
        self.dns = FakeDns(self.log)
        self.resolver = FakeResolver()
        self.interface = FakeInterface(self.log)
        self.portal: FakePortal | None = None
        self.close_reports = kw.pop("close_reports", True)
        self.udp = kw.pop("udp", [self.udp4, self.udp6])
        self.driver = Driver(core, clock=clock, **kw)
        self.code: int | None = None

    def _portal(self, tg: anyio.abc.TaskGroup, report: Any) -> FakePortal:
        self.portal = FakePortal(self.log, tg, report, close_reports=self.close_reports)
        return self.portal

    def transports(self) -> Transports:
        return Transports(
            tun=self.tun_transport,
            udp=self.udp,
            portal=self._portal,
            dns=self.dns,
            resolver=self.resolver,
            interface=self.interface,
        )

    async def run(self) -> None:
        self.code = await self.driver.run(self.transports())

    def kinds(self) -> list[str]:
        return [k for k, _ in self.log.entries]


@pytest.mark.parametrize("shape", ["polled", "batch_only"])
async def test_datagram_to_tun_and_tun_to_udp_in_order(shape: str) -> None:
    """Both ways a device can be read: the loop reading it (``read_nowait`` while it has data, a watcher
    task once it is empty: the real devices) and a task per device (``read_batch`` only)."""
    core = FakeCore()
    core.on_datagram = lambda p: b"ip:" + p
    core.on_tun = lambda p: Transmit(None, CLIENT, b"wg:" + p)
    rig = Rig(core)
    if shape == "batch_only":
        rig.tun_transport = BatchOnlyTun(rig.tun)
        rig.udp = [BatchOnlyUdp(rig.udp4), BatchOnlyUdp(rig.udp6)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        for i in range(3):
            rig.udp4.inject.send_nowait((LOCAL4, CLIENT, b"d%d" % i, 0))
        await until(lambda: len(rig.log.entries) == 3)
        rig.tun.inject.send_nowait(b"p0")
        await until(lambda: len(rig.log.entries) == 4)
        tg.cancel_scope.cancel()
    assert rig.log.entries[:3] == [("tun", b"ip:d0"), ("tun", b"ip:d1"), ("tun", b"ip:d2")]
    assert rig.log.entries[3] == ("udp", Transmit(None, CLIENT, b"wg:p0"))
    assert [c[2][1] for c in core.calls if c[0] == "udp"] == [CLIENT] * 3


async def test_commands_execute_in_order_and_queue_is_drained_after_every_input() -> None:
    core = FakeCore()
    script: list[Command] = [
        SendPortalFrame(1, "hello"),
        Transmit(None, CLIENT, b"a"),
        WriteTun(b"b"),
        Transmit(None, sa("[2001:db8::1]:3478"), b"c"),
    ]
    core.on_input = lambda inp: list(script) if isinstance(inp, PortalFrameReceived) else []
    core.on_datagram = lambda p: None
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        for i in range(5):
            rig.portal.report(PortalFrameReceived(1, f"frame {i}"))
        await until(lambda: len(rig.log.entries) == 20)
        tg.cancel_scope.cancel()
    assert rig.kinds() == ["portal", "udp", "tun", "udp"] * 5
    assert rig.log.entries[3][1].dst.ip.version == 6
    assert core.undrained == 0
    frames = [inp.data for inp in core.inputs(PortalFrameReceived)]  # type: ignore[attr-defined]
    assert frames == [f"frame {i}" for i in range(5)]


async def test_commands_queued_at_construction_are_executed_first() -> None:
    core = FakeCore()
    core.queue.append(SendPortalFrame(1, "connect"))
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: bool(rig.log.entries))
        tg.cancel_scope.cancel()
    assert rig.log.entries[0] == ("portal", SendPortalFrame(1, "connect"))


async def test_a_flood_on_the_tun_does_not_starve_udp_portal_or_timer() -> None:
    clock = FakeClock(10 * SEC)
    core = FakeCore()
    core.deadlines.append(Deadline(10 * SEC, "due now"))
    rig = Rig(core, clock=clock, utc_clock=None)
    flood = 2000
    for i in range(flood):
        rig.tun.inject.send_nowait(b"t%d" % i)
    rig.udp4.inject.send_nowait((LOCAL4, CLIENT, b"lonely", 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalFrameReceived(1, "ping"))
        await until(lambda: len([k for k in core.kinds() if k == "tun"]) == flood)
        tg.cancel_scope.cancel()
    kinds = core.kinds()
    # The TUN batch is 100 packets: the other sources and the timer are served within the first few
    # batches, long before the 2000 packets of the flood are through.
    assert kinds.index("udp") <= 200
    assert kinds.index("input") <= 300
    assert kinds.index("timeout") <= 200
    assert rig.driver.stats.turns >= flood // 100
    assert core.undrained == 0


async def test_a_flood_on_one_udp_socket_does_not_starve_the_other() -> None:
    core = FakeCore()
    rig = Rig(core)
    for i in range(1000):
        rig.udp4.inject.send_nowait((LOCAL4, CLIENT, b"v4-%d" % i, 0))
    rig.udp6.inject.send_nowait((LOCAL6, sa("[2001:db8::2]:1"), b"v6", 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: len(core.calls) == 1001)
        tg.cancel_scope.cancel()
    payloads = [c[2][2] for c in core.calls]
    assert payloads.index(b"v6") <= 128  # within the first two 64-datagram batches of the flood


async def test_timer_fires_exactly_at_the_deadline_with_a_fake_clock() -> None:
    clock = FakeClock(1 * SEC)
    core = FakeCore()
    core.deadlines.append(Deadline(5 * SEC, "wg keepalive"))
    core.on_timeout = lambda now: [Transmit(None, CLIENT, b"keepalive@%d" % now)]
    rig = Rig(core, clock=clock, utc_clock=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.driver.stats.turns >= 1)
        for t in (2 * SEC, 5 * SEC - 1):
            clock.t = t
            turns = rig.driver.stats.turns
            rig.driver.nudge()
            await until(lambda turns=turns: rig.driver.stats.turns > turns)  # type: ignore[misc]
            assert "timeout" not in core.kinds()
        clock.t = 5 * SEC
        rig.driver.nudge()
        await until(lambda: "timeout" in core.kinds())
        turns = rig.driver.stats.turns
        clock.t = 9 * SEC
        rig.driver.nudge()
        await until(lambda: rig.driver.stats.turns > turns)
        tg.cancel_scope.cancel()
    timeouts = [c for c in core.calls if c[0] == "timeout"]
    assert timeouts == [("timeout", 5 * SEC, None)]  # once, with now == the deadline
    assert rig.log.entries == [("udp", Transmit(None, CLIENT, b"keepalive@%d" % (5 * SEC)))]


async def test_timer_fires_on_the_real_clock_without_any_input() -> None:
    core = FakeCore()
    start = time.monotonic_ns()
    core.deadlines.append(Deadline(start + 20_000_000, "soon"))
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: "timeout" in core.kinds())
        tg.cancel_scope.cancel()
    (when,) = [c[1] for c in core.calls if c[0] == "timeout"]
    assert when >= start + 20_000_000  # never early


async def test_now_never_goes_backwards_even_if_the_clock_does() -> None:
    clock = FakeClock(5 * SEC)
    core = FakeCore()
    rig = Rig(core, clock=clock, utc_clock=None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        rig.udp4.inject.send_nowait((LOCAL4, CLIENT, b"a", 0))
        await until(lambda: len(core.calls) == 1)
        clock.t = 4 * SEC
        rig.udp4.inject.send_nowait((LOCAL4, CLIENT, b"b", 0))
        await until(lambda: len(core.calls) == 2)
        tg.cancel_scope.cancel()
    assert [c[1] for c in core.calls] == [5 * SEC, 5 * SEC]


async def test_send_failures_and_missing_sockets_come_back_as_inputs() -> None:
    core = FakeCore()
    core.on_input = lambda inp: (
        [Transmit(None, CLIENT, b"x"), Transmit(None, sa("[2001:db8::9]:1"), b"y")]
        if isinstance(inp, PortalFrameReceived)
        else []
    )
    rig = Rig(core, udp=[])
    rig.udp = [rig.udp4]
    rig.udp4.fail_sends = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalFrameReceived(1, "go"))
        await until(lambda: len(core.inputs(SendFailed)) == 2)
        tg.cancel_scope.cancel()
    failed = core.inputs(SendFailed)
    assert failed[0] == SendFailed(CLIENT, "EHOSTUNREACH")
    assert failed[1] == SendFailed(sa("[2001:db8::9]:1"), "no IPv6 socket")


async def test_resolver_and_interface_outcomes_and_failures_are_inputs() -> None:
    core = FakeCore()
    cfg = InterfaceConfig(ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv6Address("fd00:2021:1111::1"))
    core.on_input = lambda inp: (
        [
            ForwardDnsQuery(7, DnsTransport.UDP, b"q7"),
            ResolveDomain(1, "ok.example"),
            ResolveDomain(2, "missing.example"),
            ConfigureInterface(cfg),
        ]
        if isinstance(inp, PortalFrameReceived)
        else []
    )
    rig = Rig(core)
    rig.resolver.domains["ok.example"] = (ipaddress.IPv4Address("192.0.2.1"),)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalFrameReceived(1, "init"))
        await until(lambda: len(core.inputs()) == 5)
        rig.resolver.raise_on_forward = True
        rig.interface.fail = True
        rig.portal.report(PortalFrameReceived(1, "again"))
        await until(lambda: len(core.inputs()) == 10)
        tg.cancel_scope.cancel()
    first = core.inputs()[1:5]
    assert DnsUpstreamResponse(7, b"answer:q7") in first
    assert DomainResolved(1, (ipaddress.IPv4Address("192.0.2.1"),)) in first
    assert DomainResolveFailed(2, "NXDOMAIN") in first
    assert InterfaceConfigured(cfg, ipv4=True, ipv6=True) in first
    second = core.inputs()[6:]
    assert DnsUpstreamFailed(7, "RuntimeError: resolver bug") in second
    assert InterfaceConfigFailed(cfg, "OSError: netlink exploded") in second


async def test_dns_queries_reach_the_core_and_answers_and_binds_reach_the_servers() -> None:
    core = FakeCore()
    local = sa("100.64.0.1:53535")

    def script(inp: Input) -> list[Command]:
        if isinstance(inp, DnsQueryReceived):
            return [SendDnsResponse(inp.local, inp.remote, inp.transport, b"resp")]
        if isinstance(inp, PortalFrameReceived):
            return [BindDnsServers((local,))]
        return []

    core.on_input = script
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalFrameReceived(1, "init"))
        await until(lambda: ("dns", BindDnsServers((local,))) in rig.log.entries)
        rig.driver.report_dns(DnsServerBound(local, 53535))
        rig.dns.inject.send_nowait(
            DnsQuery(("100.64.0.1", 53535), ("100.66.0.9", 4444), b"q", DnsTransport.TCP)
        )
        await until(lambda: any(k == "dns-response" for k in rig.kinds()))
        tg.cancel_scope.cancel()
    assert DnsServerBound(local, 53535) in core.inputs()
    (query,) = core.inputs(DnsQueryReceived)
    assert query == DnsQueryReceived(local, sa("100.66.0.9:4444"), DnsTransport.TCP, b"q")
    assert (
        "dns-response",
        (DnsTransport.TCP, ("100.64.0.1", 53535), ("100.66.0.9", 4444), b"resp"),
    ) in rig.log.entries


async def test_commands_without_a_transport_fail_as_inputs() -> None:
    core = FakeCore()
    cfg = InterfaceConfig(ipaddress.IPv4Address("100.64.0.1"), None)
    core.queue.extend(
        [ConfigureInterface(cfg), ResolveDomain(3, "x.example"), ForwardDnsQuery(4, DnsTransport.UDP, b"q")]
    )
    driver = Driver(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(driver.run, Transports())
        await until(lambda: len(core.inputs()) == 3)
        tg.cancel_scope.cancel()
    got = core.inputs()
    assert InterfaceConfigFailed(cfg, "no interface transport") in got
    assert DomainResolveFailed(3, "no resolver") in got
    assert DnsUpstreamFailed(4, "no resolver") in got


async def test_wall_clock_step_is_reported_as_an_anchor() -> None:
    clock = FakeClock(1 * SEC)
    utc = FakeClock(1_700_000_000 * SEC)
    core = FakeCore()
    rig = Rig(core, clock=clock, utc_clock=utc)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.driver.stats.turns >= 1)
        clock.t += 2 * SEC
        utc.t += 2 * SEC  # in step: nothing to report
        turns = rig.driver.stats.turns
        rig.driver.nudge()
        await until(lambda: rig.driver.stats.turns > turns)
        clock.t += 2 * SEC
        utc.t += 3600 * SEC  # a jump of an hour
        rig.driver.nudge()
        await until(lambda: bool(core.inputs(WallClockAnchor)))
        tg.cancel_scope.cancel()
    assert core.inputs(WallClockAnchor) == [WallClockAnchor(utc.t)]


async def test_shutdown_flushes_goodbyes_and_the_portal_close_then_exits_0() -> None:
    core = FakeCore()
    core.on_input = goodbye_script
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalConnected(1))
        rig.driver.request_shutdown()
        await until(lambda: rig.code is not None)
    assert rig.code == 0
    assert rig.kinds() == ["udp", "portal"]
    assert rig.log.entries[0][1].payload == b"goodbye"
    assert rig.driver.exit == Exit("shutdown requested", 0)
    assert core.inputs()[-1] == PortalDisconnected(1, "closed (1000)")  # the close was awaited


async def test_shutdown_exits_1_when_the_portal_close_does_not_finish_within_the_grace_period() -> None:
    clock = FakeClock(1 * SEC)
    core = FakeCore()
    core.on_input = goodbye_script
    rig = Rig(core, clock=clock, utc_clock=None, close_reports=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalConnected(1))
        rig.driver.request_shutdown()
        await until(lambda: rig.driver.exit is not None)
        clock.t += SHUTDOWN_GRACE - 1
        turns = rig.driver.stats.turns
        rig.driver.nudge()
        await until(lambda: rig.driver.stats.turns > turns)
        assert rig.code is None  # still waiting for the portal
        clock.t += 1
        rig.driver.nudge()
        await until(lambda: rig.code is not None)
    assert rig.code == 1


async def test_exit_with_a_code_from_the_core_is_the_exit_code() -> None:
    core = FakeCore()
    core.on_input = lambda inp: (
        [Exit("portal: unauthorized", 1)] if isinstance(inp, PortalFrameReceived) else []
    )
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.portal is not None)
        assert rig.portal is not None
        rig.portal.report(PortalFrameReceived(1, "phx_error"))
        await until(lambda: rig.code is not None)
    assert rig.code == 1


async def test_a_second_shutdown_request_stops_at_once() -> None:
    core = FakeCore()  # never exits by itself
    rig = Rig(core)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.driver.stats.turns >= 1)
        rig.driver.request_shutdown()
        await until(lambda: bool(core.inputs(ShutdownRequested)))
        rig.driver.request_shutdown()
        await until(lambda: rig.code is not None)
    assert rig.code == 1
    assert len(core.inputs(ShutdownRequested)) == 1


async def test_a_tun_write_failure_is_counted_not_raised() -> None:
    core = FakeCore()
    core.on_datagram = lambda p: p
    rig = Rig(core)
    rig.tun.fail_writes = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        rig.udp4.inject.send_nowait((LOCAL4, CLIENT, b"x", 0))
        await until(lambda: rig.driver.stats.counters.counters.get("driver.tun_write_failed", 0) == 1)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("where", ["wait_readable", "read_nowait", "read_batch"])
async def test_a_failing_device_is_fatal_goodbyes_are_still_sent_and_the_code_is_1(where: str) -> None:
    """The device fails while the watcher waits for it, when the loop reads it, or (a device with
    ``read_batch`` only) in its reader task: the same shutdown each time, and the device is not read
    again."""
    core = FakeCore()
    core.on_input = goodbye_script
    rig = Rig(core)

    async def broken_wait() -> None:
        await anyio.lowlevel.checkpoint()
        raise OSError("EBADFD: TUN device gone")

    def broken_read() -> list[bytes]:
        raise OSError("EBADFD: TUN device gone")

    async def broken_batch() -> list[bytes]:
        await broken_wait()
        return []

    if where == "wait_readable":
        rig.tun.wait_readable = broken_wait  # type: ignore[method-assign]
    elif where == "read_nowait":
        rig.tun.read_nowait = broken_read  # type: ignore[method-assign]
        rig.tun.inject.send_nowait(b"p0")  # the watcher sees data; the loop's read fails
    else:
        tun = BatchOnlyTun(rig.tun)
        tun.read_batch = broken_batch  # type: ignore[method-assign]
        rig.tun_transport = tun
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: rig.code is not None)
    assert rig.code == 1
    assert core.inputs(ShutdownRequested) == [ShutdownRequested()]
    assert ("udp", Transmit(None, CLIENT, b"goodbye")) in rig.log.entries
    assert rig.driver.stats.counters.counters["driver.read_failed"] == 1


async def test_an_empty_device_is_watched_not_read_in_a_loop() -> None:
    """Once a read finds the device empty the loop stops reading it (the watcher waits for data) and
    sleeps; new data wakes it, and a burst larger than a batch is read one batch a turn."""
    core = FakeCore()
    core.on_tun = lambda p: Transmit(None, CLIENT, p)
    rig = Rig(core)
    rig.tun.batch = 4
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        rig.tun.inject.send_nowait(b"a")
        await until(lambda: len(rig.log.entries) == 1)
        await until(lambda: rig.tun.reads == 2)  # the packet, then the read that found nothing
        turns = rig.driver.stats.turns
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert rig.tun.reads == 2  # idle: nobody reads the empty device
        assert rig.driver.stats.turns == turns  # and the loop sleeps
        for i in range(10):
            rig.tun.inject.send_nowait(b"b%d" % i)
        await until(lambda: len(rig.log.entries) == 11)
        await until(lambda: rig.tun.reads == 2 + 4)  # 4 + 4 + 2, then the read that found nothing
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert [t.payload for _, t in rig.log.entries] == [b"a"] + [b"b%d" % i for i in range(10)]
    assert rig.tun.reads == 2 + 4


async def test_batched_dns_queries_answers_at_once_and_submitted_forwards() -> None:
    """With a batching server set and a submitting resolver: one batch of queries reaches the core in one
    turn, answers go out without the worker task, forwards are submitted (no task each), and a resolver
    that raises still gives the core its failure (R7)."""
    core = FakeCore()
    local = sa("100.64.0.1:53535")

    def script(inp: Input) -> list[Command]:
        if isinstance(inp, DnsQueryReceived):
            if inp.message == b"fwd":
                return [ForwardDnsQuery(inp.remote.port, DnsTransport.UDP, b"q")]
            return [SendDnsResponse(inp.local, inp.remote, inp.transport, inp.message + b"-resp")]
        return []

    core.on_input = script
    rig = Rig(core)
    rig.dns = FakeBatchDns(rig.log)
    resolver = FakeSubmittingResolver()
    rig.resolver = resolver  # type: ignore[assignment]
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: resolver.started)
        rig.dns.inject_batch.send_nowait(
            [
                DnsQuery(("100.64.0.1", 53535), ("100.66.0.9", 4444), b"a", DnsTransport.UDP),
                DnsQuery(("100.64.0.1", 53535), ("fd00:2021:1111::9", 4445), b"unsendable", DnsTransport.UDP),
                DnsQuery(("100.64.0.1", 53535), ("100.66.0.9", 7), b"fwd", DnsTransport.UDP),
            ]
        )
        await until(lambda: DnsUpstreamResponse(7, b"answer:q") in core.inputs())
        resolver.raise_on_submit = True
        rig.dns.inject_batch.send_nowait(
            [DnsQuery(("100.64.0.1", 53535), ("100.66.0.9", 8), b"fwd", DnsTransport.UDP)]
        )
        await until(lambda: DnsUpstreamFailed(8, "RuntimeError: resolver bug") in core.inputs())
        tg.cancel_scope.cancel()
    queries = core.inputs(DnsQueryReceived)
    assert [q.remote for q in queries] == [
        sa("100.66.0.9:4444"),
        sa("[fd00:2021:1111::9]:4445"),
        sa("100.66.0.9:7"),
        sa("100.66.0.9:8"),
    ]
    assert all(q.local == local for q in queries)
    sent = [v for k, v in rig.log.entries if k == "dns-response-nowait"]
    assert sent == [
        (DnsTransport.UDP, ("100.64.0.1", 53535), ("100.66.0.9", 4444), b"a-resp"),
        (DnsTransport.UDP, ("100.64.0.1", 53535), ("fd00:2021:1111::9", 4445), b"unsendable-resp"),
    ]
    assert "dns-response" not in rig.kinds()  # nothing went through the worker
    assert rig.driver.stats.counters.counters["driver.dns_response_failed"] == 1  # the kernel refused one
    assert [c.query_id for c in resolver.submitted] == [7]


class EndlessTun:
    """A TUN device that never runs dry: one packet on every read."""

    def __init__(self) -> None:
        self.reads = 0

    def read_nowait(self) -> list[bytes]:
        self.reads += 1
        return [b"\x45" + bytes(19)]

    async def wait_readable(self) -> None:
        return

    async def read_batch(self) -> list[bytes]:
        return self.read_nowait()

    def write(self, packet: bytes) -> OSError | None:
        return None


class SteppingClock:
    """A clock that moves ``step`` ns each time it is read."""

    def __init__(self, step: int) -> None:
        self.t = SEC
        self.step = step

    def __call__(self) -> int:
        self.t += self.step
        return self.t


@pytest.mark.parametrize("moving", [False, True])
async def test_a_device_that_never_runs_dry_lets_the_event_loop_run_every_few_turns(moving: bool) -> None:
    """The loop reads such a device turn after turn and lets the event loop run (the other tasks: portal,
    DNS, watchers) only every ``YIELD_TURNS`` busy turns with a clock that does not move, or once
    ``YIELD_AFTER`` ns have passed: often enough that every other task still runs, seldom enough that a
    saturated data path does not pay an event-loop pass per batch."""
    clock: Callable[[], int] = SteppingClock(YIELD_AFTER // 4) if moving else FakeClock()
    rig = Rig(FakeCore(), clock=clock, utc_clock=None)
    tun = rig.tun_transport = EndlessTun()
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        await until(lambda: tun.reads > 0)
        tg.start_soon(other_task)
        with anyio.fail_after(LIMIT):
            while tun.reads < 40 * YIELD_TURNS:
                await anyio.lowlevel.checkpoint()
        reads, seen = tun.reads, ticks
        tg.cancel_scope.cancel()
    # Each time the loop lets the event loop run, this task (which never waits) runs once.
    if moving:  # the clock is read a few times a turn: YIELD_AFTER passes every one or two turns
        assert reads // 2 - 2 <= seen <= reads + 2
    else:
        assert reads // YIELD_TURNS - 2 <= seen <= reads // YIELD_TURNS + 2


class CountingTun(FakeTun):
    """``FakeTun`` that counts its own traffic, as the real device does once handed counters."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.io: IoCounters | None = None

    def count_into(self, io: IoCounters) -> None:
        self.io = io

    def read_nowait(self) -> list[bytes]:
        out = super().read_nowait()
        assert self.io is not None
        self.io.tun_rx_packets[V4] += len(out)
        return out

    def write(self, packet: bytes) -> OSError | None:
        assert self.io is not None
        self.io.tun_tx_packets[V4] += 1
        return super().write(packet)


async def test_a_device_that_counts_its_own_traffic_is_not_counted_again() -> None:
    core = FakeCore()
    core.on_tun = lambda p: Transmit(None, CLIENT, p)
    core.on_datagram = lambda p: b"\x45" + p
    rig = Rig(core)
    tun = rig.tun_transport = CountingTun(rig.log)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rig.run)
        for i in range(3):
            tun.inject.send_nowait(b"\x45" + bytes(i))
        rig.udp4.inject.send_nowait((LOCAL4, CLIENT, bytes(10), 0))
        await until(lambda: len(rig.log.entries) == 4)
        tg.cancel_scope.cancel()
    io = rig.driver.stats.io
    assert tun.io is io  # the driver's own counters
    assert (io.tun_rx_packets, io.tun_tx_packets) == ([3, 0], [1, 0])  # once, by the device
    assert io.tun_rx_bytes == io.tun_tx_bytes == [0, 0]  # (this fake counts packets only)
    assert (io.udp_rx_packets[V4], io.udp_tx_packets[V4]) == (1, 3)  # the fake socket: by the driver
    assert "driver.tun_write_failed" not in rig.driver.stats.counters.counters  # a good write is no failure
