"""The underlay guard: an nftables table of our own that keeps the underlay out of the tunnel side.

Theory of operation
-------------------
The gateway's tunnel addresses live on ``tun-firezone`` and the tunnel ranges (``100.64.0.0/11``,
``fd00:2021:1111::/107``) are routed into it. Linux would otherwise accept, from *any* interface, packets
for the gateway's tunnel addresses (its DNS listeners, ICMP echo) and forward packets for the clients'
tunnel addresses into the TUN, where the core can no longer tell them from a resource's replies (the
attacks of ``tests/system/test_underlay_guard.py``). Firezone configures nothing of this (its init script
accepts everything in and out of the TUN, ``rust/gateway/debian/firezone-gateway-init.sh``).

:func:`ruleset` renders the table ``inet firezone-gateway`` for a :class:`GuardSpec`:

- chain ``input`` (hook input): a packet for one of the gateway's tunnel addresses that did not come in
  over the TUN is dropped. The DNS listeners are also bound to the TUN device (``SO_BINDTODEVICE``,
  :mod:`gateway_io.dns_server`), which keeps out everything from the other interfaces; this rule makes
  sure the kernel does not answer either (no ICMP port unreachable, no TCP reset, no echo reply). It also
  keeps out the host's own processes, which the device binding alone does not: the kernel counts a local
  packet for an address as arriving over that address's device. Nothing on the host needs the tunnel
  addresses, so "only the TUN" holds without exceptions. Exact addresses, never the ranges: a host whose
  uplink has an address in ``100.64.0.0/10`` (carrier-grade NAT) keeps working.
- chain ``forward`` (hook forward), per family whose masquerading the portal's ``init`` announces: a packet
  routed *into* the TUN (towards a client: the tunnel ranges are what is routed there) jumps to
  ``into_tunnel``, which drops it when its source would not be routed back through the interface it came
  in on (strict reverse path: ``fib saddr . iif oif missing``), accepts it
  when conntrack knows it as a reply of a flow the clients started (``established,related``: with
  masquerading every legitimate packet towards a client is one), and drops everything else.

Both chains run at priority ``filter - 5``, before iptables' ``filter`` chains: a drop here is final
whatever ``FORWARD`` accepts. Every drop rule has a counter (``nft list table inet firezone-gateway``).
The rendered text starts by creating and deleting the table, so one ``nft -f`` transaction replaces
whatever an earlier run (or ``scripts/setup-masquerade.sh``, which installs the forward part under the
same name) left, atomically: applying it twice changes nothing. :func:`remove` deletes the whole table.

``nft`` runs as a subprocess: it needs ``CAP_NET_ADMIN`` only (the unit's ambient capability, inherited
across ``execve``), no root (``tests/system/test_underlay_guard.py`` runs it as an unprivileged user).
Failures are returned as text, never raised: the caller decides (the daemon logs and goes on, decision
0110).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import anyio

from gateway_core.interface import InterfaceConfig

TABLE = "firezone-gateway"
"""Name of our table (family ``inet``); created and deleted as a whole."""

NFT = "/usr/sbin/nft"
"""Where Debian installs ``nft`` (package ``nftables``); ``PATH`` is searched when it is not there."""

PRIORITY = "filter - 5"
"""Before iptables(-nft)'s ``filter`` chains (priority 0), so their ``ACCEPT`` cannot come first."""

NFT_TIMEOUT = 10.0
"""Seconds one ``nft`` run may take (it takes milliseconds; a hung one must not hold the interface)."""


@dataclass(frozen=True, slots=True)
class GuardSpec:
    """What the guard protects: the TUN's name, the gateway's tunnel addresses (input), and for which
    families only replies may be forwarded into the TUN."""

    tun: str
    addresses: tuple[IPv4Address | IPv6Address, ...] = ()
    forward_v4: bool = False
    forward_v6: bool = False


def spec_for(config: InterfaceConfig, tun: str, *, ipv4: bool = True, ipv6: bool = True) -> GuardSpec:
    """The guard for an applied :class:`InterfaceConfig` (``ipv4``/``ipv6``: the families whose address is
    on the interface)."""
    addresses: list[IPv4Address | IPv6Address] = []
    if ipv4 and config.ipv4 is not None:
        addresses.append(config.ipv4)
    if ipv6 and config.ipv6 is not None:
        addresses.append(config.ipv6)
    return GuardSpec(tun, tuple(addresses), config.masquerade_v4, config.masquerade_v6)


def _quoted(name: str) -> str:
    if not name or any(not (c.isalnum() or c in "-_.") for c in name):
        raise ValueError(f"interface name not usable in a rule: {name!r}")
    return f'"{name}"'


def ruleset(spec: GuardSpec) -> str:
    """The ``nft -f`` script that replaces our table with the guard of ``spec`` (module docstring)."""
    tun = _quoted(spec.tun)
    lines = [
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "    chain input {",
        f"        type filter hook input priority {PRIORITY}; policy accept;",
    ]
    for ip in spec.addresses:
        fam = "ip" if ip.version == 4 else "ip6"
        lines.append(f"        iifname != {tun} {fam} daddr {ip} counter drop")
    lines += [
        "    }",
        "    chain forward {",
        f"        type filter hook forward priority {PRIORITY}; policy accept;",
    ]
    for on, proto in ((spec.forward_v4, "ipv4"), (spec.forward_v6, "ipv6")):
        if on:
            lines.append(f"        oifname {tun} meta nfproto {proto} jump into_tunnel")
    lines += [
        "    }",
        "    chain into_tunnel {",
        "        fib saddr . iif oif missing counter drop",
        "        ct state established,related accept",
        "        counter drop",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def nft_path() -> str:
    return NFT if shutil.which(NFT) else (shutil.which("nft") or NFT)


async def _nft(args: list[str], stdin: bytes | None, netns: str | None) -> str | None:
    argv = (["ip", "netns", "exec", netns] if netns else []) + [nft_path(), *args]
    try:
        with anyio.fail_after(NFT_TIMEOUT):
            result = await anyio.run_process(argv, input=stdin, check=False)
    except (OSError, TimeoutError) as e:
        return f"{argv[0]}: {e}"
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        return f"nft exited {result.returncode}: {err[0] if err else '(no message)'}"
    return None


async def apply(spec: GuardSpec, *, netns: str | None = None) -> str | None:
    """Install (or replace) the table for ``spec``; ``None``, or why it failed."""
    return await _nft(["-f", "-"], ruleset(spec).encode(), netns)


async def remove(*, netns: str | None = None) -> str | None:
    """Delete the table (absent: nothing to do); ``None``, or why it failed."""
    return await _nft(["-f", "-"], f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n".encode(), netns)
