"""What the demo shows and the system tests assert, run from a client host of a :class:`Topology`.

Each check runs ordinary programs inside the client's namespace (ping, curl, dig, tcpdump) and returns a
:class:`Check`: whether it passed and a one-line detail for the report. Nothing here sleeps for a fixed
time: programs carry their own bounded timeouts and conditions are polled with ``wait_for``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from e2e.topology import BLOCKED_PORT, WEB_V4, Topology, run

PAGE = "hello from the resource behind the firezone gateway"
"""The web host's index page (written by the topology)."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"  [{'ok' if self.ok else 'FAIL'}] {self.name:<44} {self.detail}"


def ping(topo: Topology, client: int, dst: str = WEB_V4, count: int = 3) -> Check:
    r = run("ping", "-c", str(count), "-i", "0.2", "-W", "2", dst, ns=topo.client_ns(client))
    m = re.search(r"(\d+) received.*?(?:rtt [^=]+= [\d.]+/([\d.]+))?", r.stdout, re.S)
    got = int(m.group(1)) if m else 0
    avg = re.search(r"rtt [^=]+= [\d.]+/([\d.]+)/", r.stdout)
    detail = f"{got}/{count} replies" + (f", avg {avg.group(1)} ms" if avg else "")
    return Check(f"ping {dst} (CIDR resource)", got == count, detail)


def ping_once(topo: Topology, client: int, dst: str = WEB_V4, wait: float = 1.0) -> bool:
    """One echo request answered within ``wait`` seconds."""
    r = run("ping", "-c", "1", "-W", str(wait), dst, ns=topo.client_ns(client), timeout=wait + 5)
    return r.returncode == 0


def curl_name(topo: Topology, client: int, url: str = "http://web.fz.test/", family: int = 4) -> Check:
    """HTTP to the DNS resource by name: the stub answers with proxy IPs (A or AAAA), the gateway
    translates them to the resource's real address of the same family."""
    ns = topo.client_ns(client)
    r = run("curl", "-s", f"-{family}", "--max-time", "10", "-w", "\n%{remote_ip} %{http_code}", url, ns=ns)
    body, _, tail = r.stdout.rpartition("\n")
    ok = r.returncode == 0 and PAGE in body and tail.endswith(" 200")
    detail = f"HTTP via proxy IP {tail}" if ok else f"rc={r.returncode} {r.stderr.strip()[:80]}"
    return Check(f"curl -{family} {url} (DNS resource)", ok, detail)


def dig(topo: Topology, client: int, name: str, rtype: str, expect: str) -> Check:
    r = run("dig", "+short", "+time=3", "+tries=2", name, rtype, ns=topo.client_ns(client))
    answer = " | ".join(line for line in r.stdout.splitlines() if line)
    ok = expect in r.stdout
    return Check(f"dig {rtype} {name} (gateway's forwarder)", ok, answer or f"no answer (rc={r.returncode})")


def blocked_port(topo: Topology, client: int, port: int = BLOCKED_PORT) -> Check:
    """TCP to a port the resource's filters do not allow: the gateway answers ICMP prohibited, seen on the
    client's TUN by tcpdump and by curl as 'No route to host'."""
    ns = topo.client_ns(client)
    dump = subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-i", "tun-fzclient", "-c", "1", "icmp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        dump.stderr.readline()  # "listening on ...": the capture is armed
        r = run("curl", "-s", "--max-time", "5", f"http://{WEB_V4}:{port}/", ns=ns)
        try:
            out, _ = dump.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            dump.kill()
            out, _ = dump.communicate()
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    icmp = next((line for line in out.splitlines() if "ICMP" in line), "")
    ok = "prohibited" in icmp and r.returncode == 7
    short = icmp.split("ICMP", 1)[-1].strip() if icmp else "no ICMP seen"
    return Check(f"tcp {WEB_V4}:{port} (not in the filters)", ok, f"curl rc={r.returncode}; ICMP {short}")


def path(topo: Topology, client: int, relayed: bool) -> Check:
    """The client's nominated path: direct (``peer_to_peer``) or through a relay, as expected."""
    got = topo.client_path(client)
    ok = got.startswith(("via relay", "to relay")) if relayed else got.startswith("direct")
    return Check("tunnel path " + ("over a relay" if relayed else "direct"), ok, got)


def underlay(topo: Topology, client: int) -> Check:
    """The families of the client's own ICE candidates (its underlay) and those of the gateway's it got; an
    IPv6-only client must hold an IPv6 relayed candidate."""
    paths = list(topo.client_status(client).get("paths", {}).values())
    local = sorted({c.split()[0] + ("6" if "[" in c else "4") for p in paths for c in p.get("local", [])})
    remote = sorted({c.split()[0] + ("6" if "[" in c else "4") for p in paths for c in p.get("remote", [])})
    family = {"client3": "6"}.get("client" if client == 0 else f"client{client + 1}", "4")
    ok = bool(local) and all(c.endswith(family) for c in local if c.startswith("host"))
    ok = ok and {"host6", "srflx6"} <= set(remote) and any(c.startswith("relay") for c in remote)
    if family == "6":  # its relays (coturn included) grant it an IPv6 relayed address (decision 0171)
        ok = ok and "relay6" in local
    return Check(f"underlay IPv{family} only", ok, f"ours {' '.join(local)}; gateway's {' '.join(remote)}")


def all_checks(topo: Topology, client: int) -> list[Check]:
    """What the demo shows for one client (clients 1 and 2 have their direct paths cut)."""
    return [
        underlay(topo, client),
        path(topo, client, relayed=client in (1, 2)),
        ping(topo, client),
        curl_name(topo, client),
        curl_name(topo, client, family=6),
        dig(topo, client, "_http._tcp.fz.test", "SRV", "10 5 80 web.fz.test."),
        dig(topo, client, "txt.fz.test", "TXT", '"v=spf1 -all" "firezone e2e"'),
        blocked_port(topo, client),
    ]
