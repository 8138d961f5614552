"""Floods at the gateway in the e2e topology (:mod:`e2e.topology`), measured from outside, while legit
traffic runs through the tunnel: for ``tests/system/test_floods.py`` and for re-measuring by hand.

A flood runs ``tests.attack`` in ``procs`` processes in the router namespace (one host: the router's
address on the gateway's link, 10.201.4.1), each bounded by ``seconds``. Meanwhile :func:`measure`
pings the CIDR resource from both clients (``client`` directly, ``client2`` over a relay) every 0.1 s,
and once a second runs ``curl`` to the DNS resource, ``dig SRV`` through the gateway's forwarder and
``/healthz`` in the gateway's namespace, each with a short timeout. Around the flood it reads the
gateway process's CPU time (``/proc/PID/stat`` utime + stime) and the gateway namespace's UDP counters
(``/proc/net/snmp``: ``InDatagrams`` = datagrams the daemon read, ``InErrors`` = dropped at the socket:
the socket filter's drops and receive-buffer overflows), the source budget's drop counters (nftables,
``gateway_io.flood_guard``) and how many Cookie-Reply-sized datagrams reached the client host. The
gateway's CPU without a flood (same probes, :func:`idle_cpu`) is subtracted before dividing by the
datagrams read.

``python -m tests.system.flood_harness [--seconds S] [--procs N] KIND...`` builds the topology, connects
both clients, runs each flood kind in turn and prints one line per flood (Ctrl-C tears it down).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e.demo import connect
from e2e.topology import WEB_V4, Topology, run

GATEWAY_PORT = 52625
PING_INTERVAL = 0.1
"""Seconds between echo requests per client (ping's -i; 0.1 s is allowed for root)."""
PROBE_EVERY = 1.0
"""Seconds between rounds of curl / dig SRV / healthz."""
KINDS = ("junk", "garbage", "random148", "mac1", "victim", "wg4")


@dataclass
class FloodResult:
    kind: str
    seconds: float = 0.0
    sent: int = 0
    read: int = 0
    kernel_dropped: int = 0
    guard_dropped: int = 0
    cpu: float = 0.0
    idle_cpu: float = 0.0
    """The gateway's CPU seconds per second without a flood (same probes), subtracted per datagram."""
    cookies_to_client: int = 0
    pings: dict[str, tuple[int, int]] = field(default_factory=dict)
    rtt_avg_max: dict[str, tuple[float, float]] = field(default_factory=dict)
    probes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def cpu_per_read_us(self) -> float:
        """The gateway's CPU time per datagram it read, less what it spends without a flood."""
        flood_cpu = max(0.0, self.cpu - self.idle_cpu * self.seconds)
        return 1e6 * flood_cpu / self.read if self.read else 0.0

    @property
    def ping_loss(self) -> float:
        sent = sum(s for s, _ in self.pings.values())
        got = sum(r for _, r in self.pings.values())
        return 1 - got / sent if sent else 1.0

    def line(self) -> str:
        pings = " ".join(
            f"{c}={r}/{s}" + (f" rtt {a:.1f}/{m:.1f} ms" if (a, m) != (0, 0) else "")
            for c, (s, r) in self.pings.items()
            for a, m in [self.rtt_avg_max.get(c, (0, 0))]
        )
        probes = " ".join(f"{k}={ok}/{n}" for k, (ok, n) in self.probes.items())
        return (
            f"{self.kind:<9} {self.sent / self.seconds / 1000:6.1f} kpps sent, "
            f"{self.read / self.seconds / 1000:6.1f} k/s read, "
            f"{self.kernel_dropped / self.seconds / 1000:6.1f} k/s dropped at the socket, "
            f"{self.guard_dropped / self.seconds / 1000:6.1f} k/s by the source budget, "
            f"gateway CPU {100 * self.cpu / self.seconds:3.0f} % "
            f"({self.cpu_per_read_us:.1f} us per datagram read); ping loss {100 * self.ping_loss:.1f} % "
            f"({pings}); {probes}; {self.cookies_to_client} cookie replies to the client"
        )


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_counters(ns: str) -> dict[str, int]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True, check=True
    ).stdout
    lines = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(lines[0], lines[1], strict=True)}


def guard_dropped(ns: str) -> int:
    """Datagrams the source budget (``gateway_io.flood_guard``) dropped so far in ``ns``."""
    r = run("nft", "list", "table", "inet", "firezone-gateway-guard", ns=ns)
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", r.stdout))


def count_cookies(topo: Topology) -> int:
    """Cookie Replies (UDP payload of 64 bytes starting ``03 00 00 00``) the client host received from
    the gateway so far (an nftables counting table in its namespace, created on first use)."""
    ns = topo.client_ns(0)
    listing = run("nft", "list", "table", "inet", "fzcount", ns=ns)
    if listing.returncode != 0:
        rule = f"ip saddr {topo.ip('gw')} udp length 72 @th,64,32 0x03000000 counter"
        chain = f"chain input {{\n type filter hook input priority filter;\n {rule}\n }}"
        table = f"table inet fzcount {{\n {chain}\n}}\n"
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=table, text=True, check=True)
        listing = run("nft", "list", "table", "inet", "fzcount", ns=ns)
    m = re.search(r"counter packets (\d+)", listing.stdout)
    assert m, listing.stdout + listing.stderr
    return int(m.group(1))


def idle_cpu(topo: Topology, seconds: float = 3.0) -> float:
    """The gateway's CPU seconds per second with the pings and probes of :func:`measure`, no flood."""
    res = measure(topo, "", seconds)
    return res.cpu / res.seconds


def _ping(topo: Topology, client: int, seconds: float) -> subprocess.Popen[str]:
    count = int(seconds / PING_INTERVAL)
    return subprocess.Popen(
        ["ip", "netns", "exec", topo.client_ns(client), "ping", "-n", "-q", "-c", str(count), "-i",
         str(PING_INTERVAL), "-W", "1", WEB_V4],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def _ping_result(out: str) -> tuple[tuple[int, int], tuple[float, float]]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", out)
    sent_got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return sent_got, ((float(rtt.group(1)), float(rtt.group(2))) if rtt else (0.0, 0.0))


def _probe_once(topo: Topology) -> dict[str, bool]:
    ns = topo.client_ns(0)
    curl = run("curl", "-s", "-4", "--max-time", "2", "http://web.fz.test/", ns=ns, timeout=10)
    dig = run("dig", "+short", "+time=1", "+tries=1", "_http._tcp.fz.test", "SRV", ns=ns, timeout=10)
    health = run(
        "curl", "-s", "--max-time", "2", "http://127.0.0.1:8080/healthz", ns=topo.ns["gw"], timeout=10
    )
    return {
        "curl": curl.returncode == 0 and "hello" in curl.stdout,
        "srv": "web.fz.test." in dig.stdout,
        "healthz": health.returncode == 0,
    }


def flood_argv(
    topo: Topology, kind: str, seconds: float, rate: float = 0.0, variants: int = 256
) -> list[str]:
    target = f"{topo.ip('gw')}:{GATEWAY_PORT}"
    argv = [sys.executable, "-m", "tests.attack", "--target", target, "--kind", kind]
    argv += ["--seconds", str(seconds), "--variants", str(variants), "--rate", str(rate)]
    if kind in ("mac1", "victim"):
        argv += ["--gateway-public", gateway_public(topo).hex()]
    if kind == "victim":
        argv += ["--victim-public", victim_public(topo).hex()]
    return argv


def victim_public(topo: Topology) -> bytes:
    """The direct client's public key (the portal hands it to the gateway; here from its config)."""
    m = re.search(r'public_key = "([A-Za-z0-9+/=]{44})"', (topo.workdir / "portal.toml").read_text())
    assert m, "no client key in the portal's config"
    return base64.b64decode(m.group(1))


def gateway_public(topo: Topology) -> bytes:
    """The gateway's public key (any client learns it from the portal; here: the daemon's log line)."""
    m = re.search(r"public key ([A-Za-z0-9+/=]{44})", topo.procs["gateway"].text())
    assert m, "the gateway did not log its public key"
    return base64.b64decode(m.group(1))


def measure(
    topo: Topology, kind: str, seconds: float = 5.0, procs: int = 2, idle: float = 0.0, rate: float = 0.0
) -> FloodResult:
    """One flood of ``kind`` (``tests.attack``; ``""``: none) from the router, measured (see the module
    docstring); ``idle``: the gateway's CPU per second without a flood (:func:`idle_cpu`); ``rate``: the
    datagrams per second of each flooder (0: as fast as it can)."""
    gw = topo.procs["gateway"].popen
    assert gw is not None
    res = FloodResult(kind or "none", idle_cpu=idle)
    pings = {c: _ping(topo, i, seconds + 1) for i, c in ((0, "client"), (1, "client2"))}
    probes: dict[str, list[bool]] = {"curl": [], "srv": [], "healthz": []}
    stop = threading.Event()

    def prober() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            for k, ok in _probe_once(topo).items():
                probes[k].append(ok)
            stop.wait(max(0.0, PROBE_EVERY - (time.monotonic() - t0)))

    time.sleep(0.5)  # the pings run alone first: a baseline within the same run
    gw_ns = topo.ns["gw"]
    counters0, guard0, cookies0 = udp_counters(gw_ns), guard_dropped(gw_ns), count_cookies(topo)
    cpu0, t0 = cpu_seconds(gw.pid), time.monotonic()
    flooders = [
        subprocess.Popen(
            ["ip", "netns", "exec", topo.ns["inet"], *flood_argv(topo, kind, seconds, rate)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs if kind else 0)
    ]
    thread = threading.Thread(target=prober, daemon=True)
    thread.start()
    try:
        if not flooders:
            time.sleep(seconds)
        for f in flooders:
            out, _ = f.communicate(timeout=seconds + 30)
            m = re.search(r"sent=(\d+)", out)
            res.sent += int(m.group(1)) if m else 0
    finally:
        for f in flooders:
            if f.poll() is None:
                f.kill()
                f.wait()
    res.seconds = time.monotonic() - t0
    res.cpu = cpu_seconds(gw.pid) - cpu0
    counters1 = udp_counters(gw_ns)
    res.read = counters1["InDatagrams"] - counters0["InDatagrams"]
    res.kernel_dropped = counters1["InErrors"] - counters0["InErrors"]
    res.guard_dropped = guard_dropped(gw_ns) - guard0
    stop.set()
    thread.join(timeout=30)
    for c, p in pings.items():
        out, _ = p.communicate(timeout=seconds + 30)
        res.pings[c], res.rtt_avg_max[c] = _ping_result(out)
    res.probes = {k: (sum(v), len(v)) for k, v in probes.items()}
    res.cookies_to_client = count_cookies(topo) - cookies0
    return res


class Attached(Topology):
    """A topology that ``firezone-e2e up`` built and keeps (found by its tag and work directory): only
    what :func:`measure` reads; its own ``__init__``, so nothing is built or torn down here."""

    def __init__(self, tag: str, workdir: str) -> None:
        self.tag = tag
        self.workdir = Path(workdir)
        roles = ("inet", "portal", "relay1", "relay2", "gw", "client", "client2", "web", "dns")
        self.ns = {r: f"fze{tag}-{r}" for r in roles}
        pids = subprocess.run(
            ["ip", "netns", "pids", self.ns["gw"]], capture_output=True, text=True
        ).stdout.split()
        gw = [p for p in pids if b"firezone-gateway" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(gw) == 1, f"gateway process in {self.ns['gw']}: {gw}"
        self.procs = {"gateway": _Running(int(gw[0]), self.workdir / "gateway.log")}


@dataclass
class _Running:
    pid: int
    log: Path

    @property
    def popen(self) -> _Running:
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.system.flood_harness")
    ap.add_argument("kinds", nargs="+", choices=KINDS)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0.0, help="datagrams/s per flooder (0: full rate)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--budget", help="FIREZONE_UDP_SOURCE_BUDGET for the gateway (0: no source budget)")
    ap.add_argument("--attach", nargs=2, metavar=("TAG", "WORKDIR"), help="a topology of firezone-e2e up")
    a = ap.parse_args(argv)
    if a.attach:
        run_floods(Attached(*a.attach), a)
        return 0
    topology = Topology()
    if a.budget is not None:
        topology.env["FIREZONE_UDP_SOURCE_BUDGET"] = a.budget
    with topology as topo:
        for client in (0, 1):
            connect(topo, client)
        run_floods(topo, a)
    return 0


def run_floods(topo: Topology, a: argparse.Namespace) -> None:
    print(f"topology fze{topo.tag}-*; gateway pid {topo.procs['gateway'].popen.pid}", flush=True)  # type: ignore[union-attr]
    idle = idle_cpu(topo)
    print(f"gateway CPU without a flood: {100 * idle:.1f} %", flush=True)
    for _ in range(a.repeat):
        for kind in a.kinds:
            print(measure(topo, kind, a.seconds, a.procs, idle, a.rate).line(), flush=True)


if __name__ == "__main__":
    sys.exit(main())
