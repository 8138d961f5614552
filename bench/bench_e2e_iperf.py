"""iperf3 TCP through our client and the real gateway daemon, next to wireguard-go on both ends.

Both runs use the same :class:`e2e.topology.Topology` in the same process run: ``client`` (iperf3 -c) ->
tunnel -> ``gw`` (forwarding) -> ``web`` (iperf3 -s on 172.20.1.10:5201), over the same veths and router.

1. **ours**: ``devio.client`` (the dev client, Python) -> UDP -> ``firezone-gateway`` (Python),
   both userspace with a TUN device each.
2. **reference**: a ``wireguard-go`` interface in the client namespace and one in the gateway namespace
   (peers over the same underlay, ``10.250.0.0/24`` inside), with a host route ``172.20.1.10/32`` in the
   client namespace through wireguard-go for the time of the run; the gateway namespace forwards it to
   the web host like tunnel traffic.

Each is ``iperf3 -c 172.20.1.10 -t SECONDS -J`` (TCP, one stream); the receiver's bits per second are
compared (ratio ours / wireguard-go). With ``--profile`` py-spy samples the gateway and the client during
our run and writes two flame graphs (SVG) plus a top-functions summary next to them.

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
from pathlib import Path

SECONDS = 10
"""iperf3 duration per run (the issue's 10 s)."""
WG_PORT = 51900
"""wireguard-go's listening port in the gateway namespace (any free port)."""


def iperf(ns: str, seconds: int) -> float:
    """Receiver-side Mbit/s of one TCP iperf3 run from ``ns`` to the web host."""
    from e2e.topology import WEB_V4, run

    r = run("iperf3", "-c", WEB_V4, "-p", "5201", "-t", str(seconds), "-J", ns=ns, timeout=seconds + 30)
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e6


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


def wireguard_go(topo: object, seconds: int) -> float:
    """The reference run: wireguard-go on both ends over the same topology."""
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
        return iperf(cns, seconds)
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
    mbps = iperf(topo.ns["client"], seconds)
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
    from e2e.demo import connect
    from e2e.topology import Topology

    with Topology() as topo:
        connect(topo, 0)
        pids = {n: topo.procs[n].popen.pid for n in ("gateway", "client")}  # type: ignore[union-attr]
        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        t0 = time.monotonic()
        ours = iperf(topo.ns["client"], args.seconds)
        wall = time.monotonic() - t0
        cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        ref = wireguard_go(topo, args.seconds)
        print(
            f"iperf3 TCP {args.seconds} s, client host -> tunnel -> gateway -> resource host (receiver side)"
        )
        print(f"  ours (devio.client + firezone-gateway, Python): {ours:9.1f} Mbit/s")
        print(f"  wireguard-go on both ends:                    {ref:9.1f} Mbit/s")
        print(f"  ratio ours / wireguard-go: {ours / ref:.3f}x")
        for n in pids:
            user, system = (cpu1[n][k] - cpu0[n][k] for k in (0, 1))
            u, sy = 100 * user / wall, 100 * system / wall
            print(f"  {n} CPU during our run: user {u:.0f}%, system {sy:.0f}% of a core")
        if args.profile:
            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            mbps, lines = profile(topo, args.seconds, out)
            print(f"profiled run (py-spy, 200 Hz): {mbps:.1f} Mbit/s; most self time (samples incl. idle):")
            for line in lines:
                print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
