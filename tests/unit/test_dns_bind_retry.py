"""DnsBindRetry: the pure per-address retry policy of the layer-4 DNS server binds."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.contract import Component
from gateway_core.dns.servers import (
    DNS_BIND_BACKOFF,
    TUN_DNS_PORT,
    BindDnsServers,
    DnsBindRetry,
    DnsServerBindFailed,
    DnsServerBound,
    RetryDnsServerBind,
)
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import UsageError

V4 = SocketAddr(ip_address("100.64.0.1"), TUN_DNS_PORT)
V6 = SocketAddr(ip_address("fd00:2021:1111::1"), TUN_DNS_PORT)
OTHER = SocketAddr(ip_address("127.0.0.2"), TUN_DNS_PORT)


def drain(c: DnsBindRetry) -> list[object]:
    out = []
    while (cmd := c.poll_command()) is not None:
        out.append(cmd)
    return out


def test_is_a_component_and_set_addresses_commands_the_sorted_set() -> None:
    c = DnsBindRetry(SeededEntropy(1))
    assert isinstance(c, Component)
    c.set_addresses(Instant(0), (V6, V4, V4))
    assert drain(c) == [BindDnsServers((V4, V6))]
    assert c.poll_timeout() is None


def test_failed_address_is_retried_alone_with_growing_capped_delays() -> None:
    c = DnsBindRetry(SeededEntropy(2))
    now = Instant(0)
    c.set_addresses(now, (V4, V6))
    drain(c)
    c.handle_bound(now, DnsServerBound(V4, TUN_DNS_PORT))
    delays = []
    for _ in range(14):
        c.handle_bind_failed(now, DnsServerBindFailed(V6, "Cannot assign requested address"))
        deadline = c.poll_timeout()
        assert deadline is not None and deadline.at >= now
        delays.append(deadline.at - now)
        assert drain(c) == []  # nothing before the deadline
        c.handle_timeout(Instant(deadline.at - 1))
        assert drain(c) == []
        now = Instant(deadline.at)
        c.handle_timeout(now)
        assert drain(c) == [RetryDnsServerBind(V6)]  # that address alone
        assert c.poll_timeout() is None  # waiting for the outcome
    assert millis(75) <= delays[0] <= millis(125)  # 100 ms +- 25 %
    assert delays[5] > delays[0] * 8
    assert max(delays) <= DNS_BIND_BACKOFF.max_interval * 5 // 4
    assert delays[-1] >= DNS_BIND_BACKOFF.max_interval * 3 // 4  # capped, never given up
    assert c.failures == 14


def test_addresses_back_off_independently_and_success_resets() -> None:
    c = DnsBindRetry(SeededEntropy(3))
    c.set_addresses(Instant(0), (V4, V6))
    for _ in range(6):
        c.handle_bind_failed(Instant(0), DnsServerBindFailed(V6, "x"))
    c.handle_bind_failed(Instant(0), DnsServerBindFailed(V4, "y"))
    at_v4, at_v6 = c.retry_at(V4), c.retry_at(V6)
    assert at_v4 is not None and at_v6 is not None and at_v4 < at_v6
    deadline = c.poll_timeout()
    assert deadline is not None and deadline.at == at_v4
    c.handle_bound(Instant(1), DnsServerBound(V6, TUN_DNS_PORT))
    assert c.retry_at(V6) is None
    c.handle_bind_failed(Instant(2), DnsServerBindFailed(V6, "again"))
    at_v6 = c.retry_at(V6)
    assert at_v6 is not None and at_v6 - 2 <= millis(125)  # back to the first delay


def test_removed_addresses_are_forgotten_and_late_failures_ignored() -> None:
    c = DnsBindRetry(SeededEntropy(4))
    c.set_addresses(Instant(0), (V4, V6))
    c.handle_bind_failed(Instant(0), DnsServerBindFailed(V6, "x"))
    c.set_addresses(Instant(1), (V4, OTHER))
    assert c.retry_at(V6) is None
    assert c.poll_timeout() is None
    c.handle_bind_failed(Instant(2), DnsServerBindFailed(V6, "late"))
    assert c.retry_at(V6) is None
    assert drain(c) == [BindDnsServers((V4, V6)), BindDnsServers((V4, OTHER))]
    c.handle_timeout(Instant(secs(100)))
    assert drain(c) == []  # no retry for an address nobody wants


def test_same_seed_same_schedule() -> None:
    def schedule(seed: int) -> list[int | None]:
        c = DnsBindRetry(SeededEntropy(seed))
        c.set_addresses(Instant(0), (V4,))
        out = []
        for _ in range(8):
            c.handle_bind_failed(Instant(0), DnsServerBindFailed(V4, "x"))
            out.append(c.retry_at(V4))
        return out

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_time_must_not_go_backwards() -> None:
    c = DnsBindRetry(SeededEntropy(5))
    c.set_addresses(Instant(10), (V4,))
    with pytest.raises(UsageError):
        c.handle_timeout(Instant(9))


def test_a_schedule_that_runs_out_keeps_retrying_at_the_cap() -> None:
    """A custom schedule whose ``max_elapsed`` has passed gives no delay: the address is retried every
    ``max_interval`` instead of being given up (a DNS server address must come back eventually)."""
    from gateway_core.backoff import BackoffConfig

    cfg = BackoffConfig(initial=millis(100), max_interval=secs(2), max_elapsed=secs(1))
    c = DnsBindRetry(SeededEntropy(3), cfg)
    c.set_addresses(Instant(0), (V4,))
    drain(c)
    c.handle_bind_failed(Instant(0), DnsServerBindFailed(V4, "x"))
    first = c.retry_at(V4)
    assert first is not None and first < secs(1)
    late = Instant(secs(5))  # past max_elapsed since the first failure
    c.handle_bind_failed(late, DnsServerBindFailed(V4, "x"))
    assert c.retry_at(V4) == late + cfg.max_interval
