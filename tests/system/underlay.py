"""Helpers for attacking a :class:`e2e.topology.Topology` from its underlay (the router namespace) and for
watching what reaches the tunnel side: raw spoofed packets, bounded captures, and the attacker's routes.

Nothing here sleeps for a fixed time: a capture stops when the block inside it is done (the tests end each
block with a positive control whose reply crosses the same path later than the attack packets did), and
every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from e2e.demo import connect
from e2e.topology import Topology, sh
from gateway_core.addr import IPAddress
from tests.system.io_netns import inside

ROUTER_V6, GW_UNDERLAY_V6 = "fd10:201:4::1", "fd10:201:4::2"
"""The attacker's own IPv6 addresses on the router-gateway link (the attacks need both families there)."""
CAPTURE_WAIT = 10.0
"""Seconds a capture may take to arm or to stop (reached only when something is broken)."""


def attacker_routes(t: Topology) -> None:
    """Give the router (the attacker) IPv6 to the gateway and routes to the tunnel ranges and the LANs
    behind the gateway through the gateway's underlay addresses, both families."""
    inet, gw = t.ns["inet"], t.ns["gw"]
    sh("ip", "-6", "-n", inet, "addr", "add", f"{ROUTER_V6}/64", "dev", "r-gw", "nodad")
    sh("ip", "-6", "-n", gw, "addr", "add", f"{GW_UNDERLAY_V6}/64", "dev", "eth0", "nodad")
    gw4 = t.ip("gw")
    for net in ("100.64.0.0/11", "172.20.1.0/24"):
        sh("ip", "-n", inet, "route", "replace", net, "via", gw4)
    for net in ("fd00:2021:1111::/107", "fd20:1::/64"):
        sh("ip", "-6", "-n", inet, "route", "replace", net, "via", GW_UNDERLAY_V6)


@contextlib.contextmanager
def attacked_topology() -> Iterator[Topology]:
    """A topology with both clients connected and :func:`attacker_routes` in place; the gateway's log
    tail is printed when it is torn down (the module fixture of the underlay attack tests)."""
    with Topology() as t:
        for client in (0, 1):
            connect(t, client)
        attacker_routes(t)
        try:
            yield t
        finally:
            if "gateway" in t.procs:
                print(f"--- gateway log (tail) ---\n{t.procs['gateway'].text()[-2500:]}")


def gateway_tunnel_addresses(t: Topology) -> dict[int, IPAddress]:
    """The gateway's tunnel addresses, by IP version (as the portal's ``init`` set them)."""
    out = json.loads(sh("ip", "-j", "-n", t.ns["gw"], "addr", "show", "dev", "tun-firezone"))
    found: dict[int, IPAddress] = {}
    for info in out[0]["addr_info"]:
        ip = ip_address(info["local"])
        if not ip.is_link_local:
            found[ip.version] = ip
    return found


def raw_socket(ns: str, version: int) -> socket.socket:
    """A raw socket in ``ns`` that sends whole IP packets (header included: any source address)."""
    with inside(ns):
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        return socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)


def spoof(ns: str, packets: list[bytes], dst: IPAddress, copies: int = 3) -> None:
    """Send each packet (already built, spoofed source and all) ``copies`` times from ``ns`` towards
    ``dst`` (the routing decision of ``ns``)."""
    with raw_socket(ns, dst.version) as s:
        for packet in packets:
            for _ in range(copies):
                s.sendto(packet, (str(dst), 0))


@dataclass
class Capture:
    """Lines tcpdump printed (one per packet), available after the ``with capture(...)`` block."""

    lines: list[str] = field(default_factory=list)

    def matching(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(w in line for w in words)]


@contextlib.contextmanager
def capture(ns: str, iface: str, bpf: str) -> Iterator[Capture]:
    """tcpdump on ``iface`` in ``ns`` for the block (armed before it starts, stopped by PID after it)."""
    argv = ["ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "--immediate-mode", "-i", iface, bpf]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = Capture()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # "listening on ...": the capture is armed
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"tcpdump did not start: {proc.wait(CAPTURE_WAIT)}")
        yield result
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=CAPTURE_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        result.lines.extend(out.splitlines())


def nft_counters(t: Topology) -> dict[str, int]:
    """Packets counted by each rule of our table in the gateway namespace, keyed ``chain:n`` (n-th rule
    with a counter in that chain); empty when the table does not exist."""
    r = subprocess.run(
        ["ip", "netns", "exec", t.ns["gw"], "nft", "-j", "list", "table", "inet", "firezone-gateway"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if r.returncode != 0:
        return {}
    counts: dict[str, int] = {}
    seen: dict[str, int] = {}
    for item in json.loads(r.stdout)["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                n = seen.get(rule["chain"], 0)
                seen[rule["chain"]] = n + 1
                counts[f"{rule['chain']}:{n}"] = int(expr["counter"]["packets"])
    return counts


def v4(text: str) -> IPv4Address:
    return IPv4Address(text)


def v6(text: str) -> IPv6Address:
    return IPv6Address(text)
