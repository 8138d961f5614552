"""The DNS-resource resolver: ``getaddrinfo`` per family and the 30 s cache (``gateway_io.system_resolver``).

A fake lookup function counts the calls (the "upstream") and a fake clock moves time. The real
``getaddrinfo`` is exercised in namespaces only (``tests/system/test_e2e.py``: a name from the gateway's
``/etc/netns`` hosts file), so that no test here sends a query to the host's nameservers.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import ip_address

import anyio
import pytest

from gateway_core.addr import IPAddress
from gateway_io.resolver import ResolveError
from gateway_io.system_resolver import CACHE_TTL, SystemResolver

pytestmark = pytest.mark.anyio

V4 = ip_address("192.0.2.7")
V6 = ip_address("2001:db8::7")


class Upstream:
    def __init__(self, answers: dict[tuple[str, int], Sequence[IPAddress] | OSError]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []
        self.gate: anyio.Event | None = None

    async def __call__(self, name: str, family: int) -> Sequence[IPAddress]:
        self.calls.append((name, family))
        if self.gate is not None:
            await self.gate.wait()
        got = self.answers.get(
            (name, family), socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        )
        if isinstance(got, OSError):
            raise got
        return got


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _resolver(up: Upstream, clock: Clock, **kw: int) -> SystemResolver:
    return SystemResolver(lookup=up, clock=clock, **kw)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_both_families_sorted_ipv4_first() -> None:
    up = Upstream({("a.test", socket.AF_INET): [V4], ("a.test", socket.AF_INET6): [V6]})
    r = _resolver(up, Clock())
    assert await r.resolve_domain("A.test.") == (V4, V6)
    assert sorted(f for _, f in up.calls) == sorted([socket.AF_INET, socket.AF_INET6])


async def test_one_family_failing_contributes_nothing_both_failing_is_an_error() -> None:
    up = Upstream({("a.test", socket.AF_INET6): [V6]})
    r = _resolver(up, Clock())
    assert await r.resolve_domain("a.test") == (V6,)
    err = await r.resolve_domain("nowhere.test")
    assert isinstance(err, ResolveError)
    assert "nowhere.test" in str(err)


async def test_a_second_request_within_the_ttl_asks_nothing_upstream_and_one_after_it_does() -> None:
    up = Upstream({("a.test", socket.AF_INET): [V4]})
    clock = Clock()
    r = _resolver(up, clock)
    assert await r.resolve_domain("a.test") == (V4,)
    asked = len(up.calls)
    clock.t += CACHE_TTL - 0.001
    assert await r.resolve_domain("a.test.") == (V4,)
    assert len(up.calls) == asked
    assert r.stats.counters["hits"] == 1
    clock.t += 0.002
    assert await r.resolve_domain("a.test") == (V4,)
    assert len(up.calls) == 2 * asked


async def test_failures_are_not_cached() -> None:
    up = Upstream({})
    r = _resolver(up, Clock())
    assert isinstance(await r.resolve_domain("x.test"), ResolveError)
    up.answers[("x.test", socket.AF_INET)] = [V4]
    assert await r.resolve_domain("x.test") == (V4,)
    assert r.stats.counters["failures"] == 1


async def test_concurrent_requests_share_one_lookup() -> None:
    up = Upstream({("a.test", socket.AF_INET): [V4]})
    up.gate = anyio.Event()
    r = _resolver(up, Clock())
    results: list[object] = []

    async def ask() -> None:
        results.append(await r.resolve_domain("a.test"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        up.gate.set()
    assert results == [(V4,)] * 5
    assert len(up.calls) == 2  # one lookup per family
    assert r.stats.counters["coalesced"] == 4


async def test_the_cache_is_bounded_oldest_out_and_expired_entries_go_first() -> None:
    names = [f"n{i}.test" for i in range(5)]
    up = Upstream({(n, socket.AF_INET): [V4] for n in names})
    clock = Clock()
    r = _resolver(up, clock, max_entries=3)
    for n in names[:3]:
        await r.resolve_domain(n)
        clock.t += 1
    assert len(r) == 3
    await r.resolve_domain(names[3])  # full: the oldest (n0) goes
    assert len(r) == 3
    assert r.cached("n0.test") is None and r.cached("n1.test") == (V4,)
    assert r.stats.counters["evicted"] == 1
    clock.t += CACHE_TTL  # everything expired: inserting drops all of it
    await r.resolve_domain(names[4])
    assert len(r) == 1


async def test_a_slow_lookup_is_bounded_by_the_timeout() -> None:
    up = Upstream({("a.test", socket.AF_INET): [V4]})
    up.gate = anyio.Event()  # never set
    r = SystemResolver(lookup=up, timeout=0.05)
    with anyio.fail_after(5):
        got = await r.resolve_domain("a.test")
    assert isinstance(got, ResolveError)
    assert "timeout" in str(got)


async def test_a_name_idna_cannot_encode_is_a_failure_never_an_exception() -> None:
    """(The real ``getaddrinfo`` path; IDNA refuses the name before anything is sent.)"""
    r = SystemResolver()
    got = await r.resolve_domain("\u00e4" * 300)
    assert isinstance(got, ResolveError)
    assert r.stats.counters["failures"] == 1 and len(r) == 0


@pytest.mark.parametrize("error", [UnicodeError("bad label"), ValueError("embedded null"), OSError(5, "I/O")])
async def test_lookup_errors_are_failures_never_exceptions(error: Exception) -> None:
    async def lookup(name: str, family: int) -> Sequence[IPAddress]:
        raise error

    r = SystemResolver(lookup=lookup)
    got = await r.resolve_domain("a.test")
    assert isinstance(got, ResolveError)
    assert r.stats.counters["failures"] == 1
