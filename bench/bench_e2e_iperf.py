"""iperf3 TCP through our client and the real gateway daemon, next to wireguard-go on both ends.

Both runs use the same :class:`e2e.topology.Topology` in the same process run: ``client`` (iperf3 -c) ->
tunnel -> ``gw`` (forwarding) -> ``web`` (iperf3 -s on 172.20.1.10:5201), over the same veths and router.

1. **ours**: ``devio.client`` (the dev client, Python) -> UDP -> ``firezone-gateway`` (Python),
   both userspace with a TUN device each.
2. **reference**: a ``wireguard-go`` interface in the client namespace and one in the gateway namespace
   (peers over the same underlay, ``10.250.0.0/24`` inside), with a host route ``172.20.1.10/32`` in the
   client namespace through wireguard-go for the time of the run; the gateway namespace forwards it to
   the web host like tunnel traffic.

Each setup runs the same cases, ``iperf3 -t SECONDS -J`` each: TCP client to resource (one stream, the
headline), TCP resource to client (``-R``), 2 parallel TCP streams (``-P 2``), UDP at a fixed rate
(:data:`UDP_RATE`, 1200-byte datagrams; loss reported) and, for ours, TCP through the DNS resource (the
gateway's NAT path, to the proxy address the client's stub resolver gives; wireguard-go has no NAT, so
that row is set against its plain TCP run). Next to each figure: the CPU seconds per GB moved of each side
(client process, gateway process; user + system, from ``/proc/<pid>/stat``; for wireguard-go its two
daemons; the kernel's softirq work on behalf of either is not in these figures). The receiver's bits per
second are compared; the last line stays the headline ratio (one TCP stream, client to resource). With
``--profile`` py-spy samples the gateway and the client during a second run of ours and prints the
functions with the most self time.

Needs root (namespaces); without it, prints that and returns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import machine

SECONDS = 10
"""iperf3 duration per run (the issue's 10 s)."""
UDP_RATE = "300M"
"""iperf3 UDP offered rate: below what either side carries on a quiet machine, so loss means trouble."""
CASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TCP", ()),
    ("TCP -R", ("-R",)),
    ("TCP -P 2", ("-P", "2")),
    (f"UDP {UDP_RATE}", ("-u", "-b", UDP_RATE, "-l", "1200")),
)
"""(label, extra iperf3 arguments) of the cases run on both setups."""
WG_PORT = 51900
"""wireguard-go's listening port in the gateway namespace (any free port)."""


@dataclass
class Result:
    """One iperf3 run: receiver Mbit/s, bytes moved, UDP loss (%), CPU seconds of each side."""

    mbps: float
    nbytes: int
    lost: float | None
    cpu: dict[str, float]

    def cpu_per_gb(self, side: str) -> float:
        return self.cpu[side] / max(self.nbytes / 1e9, 1e-9)


def iperf(
    ns: str, seconds: int, extra: Sequence[str] = (), host: str | None = None
) -> tuple[float, int, float | None]:
    """(receiver Mbit/s, bytes, UDP loss % or None) of one iperf3 run from ``ns`` to the web host."""
    from e2e.topology import WEB_V4, run

    argv = ["iperf3", "-c", host or WEB_V4, "-p", "5201", "-t", str(seconds), "-J", *extra]
    for attempt in range(3):
        # iperf3 3.12's server resets a control connection that arrives while it is still ending the
        # previous test: that error (only) is retried.
        r = run(*argv, ns=ns, timeout=seconds + 30)
        data = json.loads(r.stdout)
        if "control message" not in str(data.get("error", "")) or attempt == 2:
            break
        time.sleep(0.5)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    end = data["end"]
    if "-u" in extra:
        s = end["sum"]
        return (
            float(s["bits_per_second"]) / 1e6 * (1 - s["lost_percent"] / 100),
            int(s["bytes"]),
            float(s["lost_percent"]),
        )
    return float(end["sum_received"]["bits_per_second"]) / 1e6, int(end["sum_received"]["bytes"]), None


def measured(
    pids: dict[str, int], ns: str, seconds: int, extra: Sequence[str] = (), host: str | None = None
) -> Result:
    """One iperf3 run with the CPU seconds (user + system) each of ``pids`` used meanwhile."""
    cpu0 = {n: sum(cpu_seconds(p)) for n, p in pids.items()}
    mbps, nbytes, lost = iperf(ns, seconds, extra, host)
    return Result(mbps, nbytes, lost, {n: sum(cpu_seconds(p)) - cpu0[n] for n, p in pids.items()})


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _wg_key() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    pub = subprocess.run(
        ["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True
    ).stdout.strip()
    return priv, pub


def wireguard_go(topo: object, seconds: int) -> dict[str, Result]:
    """The reference runs: wireguard-go on both ends over the same topology, every case of :data:`CASES`."""
    from e2e.topology import WEB_V4, Proc, Topology, sh, wait_for

    assert isinstance(topo, Topology)
    cns, gns = topo.ns["client"], topo.ns["gw"]
    cif, gif = f"wgc{topo.tag}"[:15], f"wgg{topo.tag}"[:15]
    (cpriv, cpub), (gpriv, gpub) = _wg_key(), _wg_key()
    keys = topo.workdir / "wg"
    keys.mkdir(exist_ok=True)
    (keys / "c.key").write_text(cpriv + "\n")
    (keys / "g.key").write_text(gpriv + "\n")
    procs = []
    try:
        for ns, ifname in ((cns, cif), (gns, gif)):
            p = Proc(
                f"wg-{ifname}", ns, ["wireguard-go", "-f", ifname], topo.env, topo.workdir / f"{ifname}.log"
            )
            p.start()
            procs.append(p)
            wait_for(f"{ifname} to appear", lambda n=ns, i=ifname: i in sh("ip", "link", ns=n, check=False))
        gw_ip = topo.ip("gw")
        sh(
            "wg",
            "set",
            gif,
            "listen-port",
            str(WG_PORT),
            "private-key",
            str(keys / "g.key"),
            "peer",
            cpub,
            "allowed-ips",
            "10.250.0.1/32",
            ns=gns,
        )
        sh(
            "wg",
            "set",
            cif,
            "private-key",
            str(keys / "c.key"),
            "peer",
            gpub,
            "endpoint",
            f"{gw_ip}:{WG_PORT}",
            "allowed-ips",
            "10.250.0.0/24,172.20.1.10/32",
            ns=cns,
        )
        sh("ip", "addr", "add", "10.250.0.1/24", "dev", cif, ns=cns)
        sh("ip", "addr", "add", "10.250.0.2/24", "dev", gif, ns=gns)
        for ns, ifname in ((cns, cif), (gns, gif)):
            sh("ip", "link", "set", ifname, "mtu", "1420", "up", ns=ns)
        sh("ip", "route", "add", f"{WEB_V4}/32", "dev", cif, "src", "10.250.0.1", ns=cns)
        wait_for(
            "wireguard-go to pass traffic",
            lambda: (
                subprocess.run(
                    ["ip", "netns", "exec", cns, "ping", "-c", "1", "-W", "1", WEB_V4], capture_output=True
                ).returncode
                == 0
            ),
        )
        pids = {"client": procs[0].popen.pid, "gateway": procs[1].popen.pid}  # type: ignore[union-attr]
        return {label: measured(pids, cns, seconds, extra) for label, extra in CASES}
    finally:
        sh("ip", "route", "del", f"{WEB_V4}/32", ns=cns, check=False)
        for p in procs:
            p.stop()


def profile(topo: object, seconds: int, out: Path) -> tuple[float, list[str]]:
    """Our run with py-spy recording the gateway and the client; (Mbit/s, report lines)."""
    from e2e.topology import Topology

    assert isinstance(topo, Topology)
    spy = Path(sys.executable).parent / "py-spy"
    recs = []
    for name in ("gateway", "client"):
        pid = topo.procs[name].popen.pid  # type: ignore[union-attr]
        for fmt, suffix in (("raw", "txt"),):
            recs.append(
                subprocess.Popen(
                    [
                        str(spy),
                        "record",
                        "-p",
                        str(pid),
                        "-d",
                        str(seconds),
                        "-r",
                        "200",
                        "-f",
                        fmt,
                        "--nonblocking",
                        "-o",
                        str(out / f"profile-{name}.{suffix}"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    mbps = iperf(topo.ns["client"], seconds)[0]
    for r in recs:
        r.wait(timeout=60)
    lines = []
    for name in ("gateway", "client"):
        lines.append(f"  {name}: " + top_functions(out / f"profile-{name}.txt"))
    return mbps, lines


def top_functions(raw: Path, n: int = 6) -> str:
    """The ``n`` functions with the most self time in a py-spy raw (collapsed stacks) file."""
    counts: dict[str, int] = {}
    total = 0
    try:
        text = raw.read_text()
    except OSError:
        return "no profile"
    for line in text.splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        leaf = stack.split(";")[-1]
        fn = leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
        counts[fn] = counts.get(fn, 0) + int(num)
        total += int(num)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{fn} {100 * c / max(total, 1):.0f}%" for fn, c in top)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_e2e_iperf")
    ap.add_argument("--seconds", type=int, default=SECONDS)
    ap.add_argument("--profile", help="directory for py-spy profiles of a second run of ours")
    args = ap.parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("bench_e2e_iperf: needs root (network namespaces); not run")
        return
    print(machine.line())
    from e2e.demo import connect
    from e2e.topology import Topology, run

    with Topology() as topo:
        connect(topo, 0)
        cns = topo.ns["client"]
        pids = {n: topo.procs[n].popen.pid for n in ("client", "gateway")}  # type: ignore[union-attr]
        ours = {label: measured(pids, cns, args.seconds, extra) for label, extra in CASES}
        proxy = run("dig", "+short", "+time=3", "+tries=2", "web.fz.test", "A", ns=cns).stdout.split()
        nat = measured(pids, cns, args.seconds, (), proxy[0]) if proxy else None
        ref = wireguard_go(topo, args.seconds)
        print(
            f"iperf3 {args.seconds} s per case, client host <-> tunnel <-> gateway <-> resource host"
            " (receiver side);"
        )
        print("CPU s/GB: CPU seconds (user + system) of the client / gateway process per GB moved")
        print(
            f"  {'case':<12} {'ours Mbit/s':>12} {'wg-go Mbit/s':>13} {'ratio':>6}"
            f"  {'ours CPU s/GB c/g':>18}  {'wg-go CPU s/GB c/g':>18}"
        )
        rows = [(label, ours[label], ref[label]) for label, _ in CASES]
        if nat is not None:
            rows.append(("TCP DNS/NAT", nat, ref["TCP"]))
        for label, o, w in rows:
            loss = (
                f"  loss {o.lost:.1f}% / {w.lost:.1f}%" if o.lost is not None and w.lost is not None else ""
            )
            print(
                f"  {label:<12} {o.mbps:12.1f} {w.mbps:13.1f} {o.mbps / w.mbps:5.2f}x"
                f"  {o.cpu_per_gb('client'):8.1f} / {o.cpu_per_gb('gateway'):6.1f}"
                f"  {w.cpu_per_gb('client'):10.1f} / {w.cpu_per_gb('gateway'):6.1f}{loss}"
            )
        if nat is None:
            print("  TCP DNS/NAT: no proxy address from the stub resolver; not run")
        if args.profile:
            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            mbps, lines = profile(topo, args.seconds, out)
            print(f"profiled run (py-spy, 200 Hz): {mbps:.1f} Mbit/s; most self time (samples incl. idle):")
            for line in lines:
                print(line)
        head_o, head_w = ours["TCP"].mbps, ref["TCP"].mbps
        print(
            f"  single TCP stream, client to resource: ours {head_o:.1f} Mbit/s,"
            f" wireguard-go {head_w:.1f} Mbit/s"
        )
        print(f"ratio ours / wireguard-go: {head_o / head_w:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
