"""A per-source budget in the kernel for the gateway's UDP port (nftables), the relays exempt (decision
0116).

Why: one Python process reads every datagram from one socket queue. A flood that looks like WireGuard,
STUN or ChannelData passes the socket filter (:mod:`gateway_io.socket_filter`); faster than the daemon can
read, it fills the queue and legit datagrams are dropped with it, in proportion. An nftables meter drops
what one source address sends beyond :data:`SOURCE_BUDGET` packets per second before it reaches the queue,
so a flood from one host costs the daemon at most that budget. Two kinds of traffic are exempt, so the
budget never meters a client's own tunnel: relays carry many clients from one address, so their addresses
are exempt (the set is kept equal to the node's relays, ``Node.relay_addresses``); and a WireGuard data
message whose receiver index names one of our live sessions is exempt whatever its source (the set of
session indices is kept equal to the node's, ``Node.session_indices``; the kernel matches bytes 5-7 of
the payload). What stays metered from a non-relay source: handshakes, STUN, and data for a session we do
not have, which is all a flooder can send without seeing a session's traffic.

Theory of operation: :meth:`FloodGuard.run` is a task of the daemon. It installs the table
:data:`TABLE` (``inet``: an ``input`` chain at priority ``filter - 10``; replaced atomically if a previous
run left it), then applies relay changes as they come; at the end it deletes the table. The driver calls
:meth:`FloodGuard.tick` from its loop once a second (the core is only called from the driver's task, R1):
it reads the relays and the session indices through the callables it was given and queues an update
when they changed. Every
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
"""Datagrams per second one source address (IPv6: one /64) may send to our UDP port outside the exempt
traffic (relays, data for a live session): far above what an honest client sends there (a handful of
handshakes and STUN checks a second), while a flood from one host costs the daemon at most this much
(about 7 % of a core for garbage, less for handshakes, which the core budgets per source further).
``FIREZONE_UDP_SOURCE_BUDGET`` overrides it; 0 turns the guard off."""

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
  set sessions {{ typeof @th,104,24; }}
  set budget4 {{ type ipv4_addr; {dyn} }}
  set budget6 {{ type ipv6_addr; {dyn} }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    udp dport {{ {p} }} ip saddr @relays4 accept
    udp dport {{ {p} }} ip6 saddr @relays6 accept
    udp dport {{ {p} }} @th,64,32 {WG_DATA_HEAD:#010x} @th,104,24 @sessions accept
    udp dport {{ {p} }} update @budget4 {{ ip saddr {meter} }} counter drop
    udp dport {{ {p} }} update @budget6 {{ ip6 saddr & ffff:ffff:ffff:ffff:: {meter} }} counter drop
  }}
}}
"""


WG_DATA_HEAD = 0x04000000
"""The first four payload bytes of a WireGuard data message (type 4, three reserved zero bytes), as the
kernel reads them big-endian (``@th,64,32``: the payload starts after the 8-byte UDP header)."""


def session_element(index: int) -> int:
    """A node's 24-bit connection index as the kernel reads it from a data message (``@th,104,24``).

    The receiver index is a little-endian u32 at payload bytes 4-7 whose upper 24 bits are the connection
    index, so those are bytes 5-7 in little-endian order; the kernel reads the three bytes big-endian."""
    return int.from_bytes(index.to_bytes(3, "little"), "big")


def exempt_update(relays: Collection[IPAddress], sessions: Collection[int] = ()) -> str:
    """``nft -f`` input that makes the relay sets exactly ``relays`` and the session set exactly
    ``sessions`` (node connection indices), in one transaction."""
    lines = [
        f"flush set inet {TABLE} relays4",
        f"flush set inet {TABLE} relays6",
        f"flush set inet {TABLE} sessions",
    ]
    for version, name in ((4, "relays4"), (6, "relays6")):
        ips = sorted(str(ip) for ip in relays if ip.version == version)
        if ips:
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(ips)} }}")
    elems = sorted(session_element(i) for i in sessions)
    for k in range(0, len(elems), SESSION_CHUNK):
        chunk = ", ".join(f"{e:#08x}" for e in elems[k : k + SESSION_CHUNK])
        lines.append(f"add element inet {TABLE} sessions {{ {chunk} }}")
    return "\n".join(lines) + "\n"


SESSION_CHUNK = 512
"""Session elements per ``add element`` line (one transaction either way; keeps each line short)."""

Exempt = tuple[frozenset[IPAddress], frozenset[int]]


class FloodGuard:
    """See the module docstring."""

    def __init__(
        self,
        ports: Collection[int],
        relays: Callable[[], Collection[IPAddress]],
        sessions: Callable[[], Collection[int]] = frozenset,
        *,
        budget: int = SOURCE_BUDGET,
        burst: int = SOURCE_BURST,
        nft: str = "nft",
    ) -> None:
        self.ports = sorted(set(ports))
        self.budget = budget
        self.burst = burst
        self._relays = relays
        self._sessions = sessions
        self._nft_path = nft
        self._applied: Exempt | None = None
        self._queued: Exempt | None = None
        self._last_tick = -TICK_INTERVAL
        send, recv = anyio.create_memory_object_stream[Exempt](math.inf)
        self._send: MemoryObjectSendStream[Exempt] = send
        self._recv: MemoryObjectReceiveStream[Exempt] = recv
        self.installed = False
        self.failed: str | None = None
        """Why the guard is off (``nft`` missing or refused), once it is."""

    def tick(self, now: int) -> None:
        """From the driver's loop: at most once a second, queue the relays and sessions if they changed."""
        if now - self._last_tick < TICK_INTERVAL or self.failed is not None:
            return
        self._last_tick = now
        current = (frozenset(self._relays()), frozenset(self._sessions()))
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
            async for exempt in self._recv:
                if exempt != self._queued:
                    continue  # a newer set is queued behind this one
                relays, sessions = exempt
                err = await self._nft(exempt_update(relays, sessions))
                if err is not None:
                    log.warning("cannot update the budget's exemptions: %s", err)
                    continue
                if self._applied is None or self._applied[0] != relays:
                    log.info(
                        "UDP source budget: relays exempt: %s", ", ".join(sorted(map(str, relays))) or "none"
                    )
                self._applied = exempt
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
