"""The flood guard's logic with a fake ``nft`` (a script that records what it was given): it installs its
table once, follows the relays the driver's ticks read (at most once a second, only on change, the last of
several queued changes), deletes its table when cancelled, and stays off without ``nft``. The real
``nft`` in a namespace: ``tests/system/test_flood_guard_netns.py``."""

from __future__ import annotations

import stat
from ipaddress import ip_address
from pathlib import Path

import anyio
import pytest

from gateway_core.addr import IPAddress
from gateway_io.flood_guard import TABLE, FloodGuard, budget_from_env, exempt_update, ruleset, session_element


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fake_nft(tmp_path: Path, fail: bool = False) -> tuple[str, Path]:
    log = tmp_path / "nft.log"
    script = tmp_path / "nft"
    script.write_text(f"#!/bin/sh\ncat >> {log}\necho '--' >> {log}\n" + ("exit 1\n" if fail else ""))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_session_element_is_what_the_kernel_reads_from_a_data_message() -> None:
    """The node keys a data message by ``LE32(payload[4:8]) >> 8``; the kernel reads payload bytes 5-7
    big-endian: the element of a connection index must equal what the kernel reads from its messages."""
    for index in (0, 1, 0x123456, 0xFFFFFF, 0x00AB00):
        for counter in (0, 7, 255):
            payload = bytes([4, 0, 0, 0]) + ((index << 8) | counter).to_bytes(4, "little") + bytes(24)
            assert int.from_bytes(payload[4:8], "little") >> 8 == index
            assert session_element(index) == int.from_bytes(payload[5:8], "big")


def test_texts() -> None:
    text = ruleset([52625, 40000, 52625], 10_000)
    assert f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n" in text  # replaces a leftover
    assert "udp dport { 40000, 52625 } ip saddr @relays4 accept" in text
    assert "limit rate over 10000/second burst 5000 packets" in text
    assert "ip6 saddr & ffff:ffff:ffff:ffff::" in text
    assert "@th,64,32 0x04000000 @th,104,24 @sessions accept" in text
    upd = exempt_update(
        [ip_address("10.0.0.2"), ip_address("10.0.0.1"), ip_address("2001:db8::1")], [0x123456, 0x000001]
    )
    assert upd.splitlines() == [
        f"flush set inet {TABLE} relays4",
        f"flush set inet {TABLE} relays6",
        f"flush set inet {TABLE} sessions",
        f"add element inet {TABLE} relays4 {{ 10.0.0.1, 10.0.0.2 }}",
        f"add element inet {TABLE} relays6 {{ 2001:db8::1 }}",
        f"add element inet {TABLE} sessions {{ 0x010000, 0x563412 }}",
    ]
    assert budget_from_env({}) == 10_000
    assert budget_from_env({"FIREZONE_UDP_SOURCE_BUDGET": "0"}) == 0
    assert budget_from_env({"FIREZONE_UDP_SOURCE_BUDGET": "lots"}) == 10_000


@pytest.mark.anyio
async def test_installs_follows_the_relays_and_removes_its_table(tmp_path: Path) -> None:
    nft, log = fake_nft(tmp_path)
    relays: list[IPAddress] = []
    guard = FloodGuard([52625], lambda: relays, nft=nft)

    def runs() -> list[str]:
        return log.read_text().split("--\n")[:-1] if log.exists() else []

    async def until(n: int) -> None:
        with anyio.fail_after(10):
            while len(runs()) < n:
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(guard.run)
        await until(1)
        assert "chain input" in runs()[0]
        guard.tick(0)  # no relays yet: the same as applied (nothing) -> queued anyway once
        await until(2)
        relays.append(ip_address("10.0.0.1"))
        guard.tick(500_000_000)  # within the second: not looked at
        await anyio.sleep(0.05)
        assert len(runs()) == 2
        guard.tick(1_000_000_000)
        await until(3)
        assert "relays4 { 10.0.0.1 }" in runs()[2]
        guard.tick(2_000_000_000)  # unchanged: nothing
        relays.append(ip_address("10.0.0.2"))
        relays.remove(ip_address("10.0.0.1"))
        await anyio.sleep(0.05)
        assert len(runs()) == 3
        guard.tick(3_000_000_000)
        await until(4)
        assert "relays4 { 10.0.0.2 }" in runs()[3]
        tg.cancel_scope.cancel()
    assert runs()[-1] == f"delete table inet {TABLE}\n"
    assert not guard.installed


@pytest.mark.anyio
async def test_without_nft_it_stays_off(tmp_path: Path) -> None:
    for nft in (str(tmp_path / "missing"), fake_nft(tmp_path, fail=True)[0]):
        guard = FloodGuard([52625], lambda: [], nft=nft)
        with anyio.fail_after(10):
            await guard.run()  # returns at once
        assert guard.failed and not guard.installed
        guard.tick(10**10)  # and ignores ticks
    off = FloodGuard([52625], lambda: [], budget=0)
    await off.run()
    assert off.failed is not None and "off" in off.failed
