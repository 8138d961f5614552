"""A per-source budget in the kernel for the gateway's UDP port (nftables), the relays exempt (decision
0116).

Why: one Python process reads every datagram from one socket queue. A flood that looks like WireGuard,
STUN or ChannelData passes the socket filter (:mod:`gateway_io.socket_filter`); faster than the daemon can
read, it fills the queue and legit datagrams are dropped with it, in proportion. An nftables meter drops
what one source address sends beyond :data:`SOURCE_BUDGET` packets per second before it reaches the queue,
so a flood from one host costs the daemon at most that budget. Relays carry many clients from one address,
so their addresses are exempt: the set is kept equal to the node's relays (``Node.relay_addresses``).

Theory of operation: :meth:`FloodGuard.run` is a task of the daemon. It installs the table
:data:`TABLE` (``inet``: an ``input`` chain at priority ``filter - 10``; replaced atomically if a previous
run left it), then applies relay changes as they come; at the end it deletes the table. The driver calls
:meth:`FloodGuard.tick` from its loop once a second (the core is only called from the driver's task, R1):
it reads the relays through the callable it was given and queues an update when they changed. Every
``nft`` run happens in this task, never in the loop. Without ``nft`` or the permission to use it the
guard logs one warning and does nothing else (the socket filter still works).

IPv6 sources are budgeted per /64 (one host usually owns a whole /64). A flood from spoofed source
addresses gets one budget per address: the dynamic sets are bounded (:data:`TRACKED_SOURCES`), and
once they are full further sources pass unmetered; this guard is for a flood from one host.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Collection, Mapping

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from gateway_core.addr import IPAddress

log = logging.getLogger(__name__)

TABLE = "firezone-gateway-guard"
"""Our own nftables table (family ``inet``): nothing else is touched, deleting it undoes everything."""

SOURCE_BUDGET = 10_000
"""Datagrams per second one source address (IPv6: one /64) may send to our UDP port. The daemon
handles at most about 8,500 full-size packets per second in total (about 87 Mbit/s through the tunnel,
``docs/performance.md``), so the budget never limits one legit client below what the daemon can carry,
while a flood from one host costs the daemon at most this much (about 7 % of a core for garbage, less
for handshakes, which the core budgets per source further). ``FIREZONE_UDP_SOURCE_BUDGET`` overrides it;
0 turns the guard off."""

SOURCE_BURST = 5_000
"""Datagrams a source may send at once above its rate (a TCP window's burst through the tunnel)."""

TRACKED_SOURCES = 65535
"""Sources metered at once per family (each costs the kernel a set element, forgotten after
:data:`FORGET_AFTER`)."""

FORGET_AFTER = "10s"
"""A source quiet for this long is forgotten (its budget is full again anyway)."""

NFT_TIMEOUT = 10.0
"""Seconds one ``nft`` run may take."""

TICK_INTERVAL = 1_000_000_000
"""How often (ns) :meth:`FloodGuard.tick` looks at the relays: a new relay is exempt within a second
(until then it is metered like anyone, with a budget it does not reach while it is new)."""


def budget_from_env(env: Mapping[str, str] | None = None) -> int:
    """``FIREZONE_UDP_SOURCE_BUDGET`` (datagrams per second per source; 0: off); default
    :data:`SOURCE_BUDGET`; a value that is not a number is logged and ignored."""
    env = os.environ if env is None else env
    text = env.get("FIREZONE_UDP_SOURCE_BUDGET", "")
    if not text:
        return SOURCE_BUDGET
    try:
        return max(0, int(text))
    except ValueError:
        log.warning("ignoring FIREZONE_UDP_SOURCE_BUDGET=%r (not a number)", text)
        return SOURCE_BUDGET


def ruleset(ports: Collection[int], budget: int, burst: int = SOURCE_BURST) -> str:
    """The table as ``nft -f`` input; replaces a table of the same name atomically."""
    p = ", ".join(str(x) for x in sorted(set(ports)))
    meter = f"limit rate over {budget}/second burst {burst} packets"
    dyn = f"size {TRACKED_SOURCES}; flags dynamic,timeout; timeout {FORGET_AFTER};"
    return f"""table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
  set relays4 {{ type ipv4_addr; }}
  set relays6 {{ type ipv6_addr; }}
  set budget4 {{ type ipv4_addr; {dyn} }}
  set budget6 {{ type ipv6_addr; {dyn} }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    udp dport {{ {p} }} ip saddr @relays4 accept
    udp dport {{ {p} }} ip6 saddr @relays6 accept
    udp dport {{ {p} }} update @budget4 {{ ip saddr {meter} }} counter drop
    udp dport {{ {p} }} update @budget6 {{ ip6 saddr & ffff:ffff:ffff:ffff:: {meter} }} counter drop
  }}
}}
"""


def relay_update(relays: Collection[IPAddress]) -> str:
    """``nft -f`` input that makes the relay sets exactly ``relays`` (one transaction)."""
    lines = [f"flush set inet {TABLE} relays4", f"flush set inet {TABLE} relays6"]
    for version, name in ((4, "relays4"), (6, "relays6")):
        ips = sorted(str(ip) for ip in relays if ip.version == version)
        if ips:
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(ips)} }}")
    return "\n".join(lines) + "\n"


class FloodGuard:
    """See the module docstring."""

    def __init__(
        self,
        ports: Collection[int],
        relays: Callable[[], Collection[IPAddress]],
        *,
        budget: int = SOURCE_BUDGET,
        burst: int = SOURCE_BURST,
        nft: str = "nft",
    ) -> None:
        self.ports = sorted(set(ports))
        self.budget = budget
        self.burst = burst
        self._relays = relays
        self._nft_path = nft
        self._applied: frozenset[IPAddress] | None = None
        self._queued: frozenset[IPAddress] | None = None
        self._last_tick = -TICK_INTERVAL
        send, recv = anyio.create_memory_object_stream[frozenset[IPAddress]](math.inf)
        self._send: MemoryObjectSendStream[frozenset[IPAddress]] = send
        self._recv: MemoryObjectReceiveStream[frozenset[IPAddress]] = recv
        self.installed = False
        self.failed: str | None = None
        """Why the guard is off (``nft`` missing or refused), once it is."""

    def tick(self, now: int) -> None:
        """From the driver's loop: at most once a second, queue the relays if they changed."""
        if now - self._last_tick < TICK_INTERVAL or self.failed is not None:
            return
        self._last_tick = now
        current = frozenset(self._relays())
        if current != (self._queued if self._queued is not None else self._applied):
            self._queued = current
            self._send.send_nowait(current)

    async def _nft(self, script: str) -> str | None:
        """Run ``nft -f -`` with ``script``; the error text, or ``None``."""
        try:
            with anyio.fail_after(NFT_TIMEOUT):
                res = await anyio.run_process([self._nft_path, "-f", "-"], input=script.encode(), check=False)
        except (OSError, TimeoutError) as e:
            return f"{type(e).__name__}: {e}"
        if res.returncode != 0:
            return res.stderr.decode(errors="replace").strip() or f"exit code {res.returncode}"
        return None

    async def run(self) -> None:
        """Install, apply relay changes until cancelled, then delete the table (see the module doc)."""
        if self.budget <= 0 or not self.ports:
            self.failed = "off (FIREZONE_UDP_SOURCE_BUDGET=0)" if self.budget <= 0 else "no UDP port"
            log.info("UDP source budget: %s", self.failed)
            return
        err = await self._nft(ruleset(self.ports, self.budget, self.burst))
        if err is not None:
            self.failed = err
            log.warning("UDP source budget not installed (nftables: %s): floods reach the daemon", err)
            return
        self.installed = True
        log.info("UDP source budget: %d datagrams/s per source on port(s) %s", self.budget, self.ports)
        try:
            async for relays in self._recv:
                if relays != self._queued:
                    continue  # a newer set is queued behind this one
                err = await self._nft(relay_update(relays))
                if err is not None:
                    log.warning("cannot update the relays' exemption: %s", err)
                    continue
                self._applied = relays
                log.info(
                    "UDP source budget: relays exempt: %s", ", ".join(sorted(map(str, relays))) or "none"
                )
        finally:
            with anyio.CancelScope(shield=True):
                await self.remove()

    async def remove(self) -> None:
        if not self.installed:
            return
        self.installed = False
        err = await self._nft(f"delete table inet {TABLE}\n")
        if err is not None:
            log.warning("cannot delete the nftables table %s: %s", TABLE, err)
