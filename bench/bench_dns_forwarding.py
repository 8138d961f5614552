"""SRV/TXT queries per second through our client and gateway to unbound, next to dnsmasq forwarding to the
same unbound, in the same run.

Both runs use the same :class:`e2e.topology.Topology` and the same dnsperf in the ``client`` namespace:

1. **ours**: dnsperf -> the client's stub resolver (``100.100.111.1:53``, ``devio.client``) -> forwarded
   through the tunnel to the gateway's tunnel address, port 53535 -> ``firezone-gateway``'s layer-4 DNS
   server -> the core's forwarder -> the gateway's upstream resolver -> unbound (``172.20.2.53``) -> and
   back the same way. This is the path the issue measured (1,619 queries/s).
2. **reference**: dnsperf -> the gateway host's underlay address (``10.201.4.2:5353``) -> dnsmasq started
   by the bench in the gateway's namespace with ``--cache-size=0`` (so every query is forwarded) and
   ``--server=172.20.2.53`` -> the same unbound.

The query file asks ``_http._tcp.fz.test SRV`` and ``txt.fz.test TXT`` (both DNS-resource names, so our
client forwards both through the tunnel). Rounds alternate (ours, dnsmasq, ...) so background load hits
both alike; the best round of each counts. The gateway's and the client's CPU time are read from
``/proc/<pid>/stat`` during our rounds, which gives the gateway's CPU per forwarded query. With
``--profile DIR`` py-spy records the gateway and the client during one more round of ours (raw collapsed
stacks, and the functions with the most self time printed).

Run (root: namespaces): ``.venv/bin/python -m bench bench_dns_forwarding`` (environment ``SECONDS=5``,
``ROUNDS=3``, ``OUTSTANDING=200`` change the defaults) or ``python bench/bench_dns_forwarding.py --profile
/tmp/prof``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SECONDS = int(os.environ.get("SECONDS_PER_RUN", os.environ.get("SECONDS", "5")))
"""dnsperf duration per round."""
ROUNDS = int(os.environ.get("ROUNDS", "2"))
"""Rounds of each (alternating); the best counts."""
OUTSTANDING = int(os.environ.get("OUTSTANDING", "64"))
"""dnsperf ``-q``: queries in flight at once. The forwarder lets one client have 64 in flight
(``MAX_IN_FLIGHT_PER_CLIENT``, decision 0111): more would be answered SERVFAIL at once. (The issue's
measurement had about 200: 1,619 q/s x 123 ms.)"""
DNSMASQ_PORT = 5353
"""dnsmasq's port on the gateway host's underlay address."""
QUERIES = "_http._tcp.fz.test SRV\ntxt.fz.test TXT\n"


@dataclass(frozen=True)
class Result:
    qps: float
    lost: int
    completed: int
    latency_ms: float
    noerror: int = 0


def dnsperf(ns: str, server: str, port: int, data: Path, seconds: int, qps: int = 0) -> Result:
    """One bounded dnsperf run from namespace ``ns`` (``qps``: at most that many queries a second)."""
    from e2e.topology import run

    argv = ["dnsperf", "-s", server, "-p", str(port), "-d", str(data), "-l", str(seconds)]
    argv += ["-c", "4", "-q", str(OUTSTANDING), "-t", "3"] + (["-Q", str(qps)] if qps else [])
    r = run(*argv, ns=ns, timeout=seconds + 30)
    out = r.stdout

    def field(pattern: str) -> str:
        m = re.search(pattern, out)
        if m is None:
            raise RuntimeError(f"dnsperf: no {pattern!r} in its output:\n{out}\n{r.stderr}")
        return m.group(1)

    codes = re.search(r"NOERROR (\d+)", out)
    return Result(
        float(field(r"Queries per second:\s+([\d.]+)")),
        int(field(r"Queries lost:\s+(\d+)")),
        int(field(r"Queries completed:\s+(\d+)")),
        1000 * float(field(r"Average Latency \(s\):\s+([\d.]+)")),
        int(codes.group(1)) if codes else 0,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_dnsmasq(topo: object) -> object:
    from e2e.topology import DNS_V4, Topology, sh, wait_for

    assert isinstance(topo, Topology)
    ip = topo.ip("gw")
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        f"--listen-address={ip}",
        f"--port={DNSMASQ_PORT}",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--cache-size=0",
        "--dns-forward-max=1000",
        f"--server={DNS_V4}",
        f"--pid-file={topo.workdir / 'dnsmasq.pid'}",
        "--user=root",
    ]
    proc = topo._proc("dnsmasq", "gw", argv)
    wait_for(
        "dnsmasq to answer",
        lambda: (
            "web.fz.test"
            in sh(
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                f"@{ip}",
                "-p",
                str(DNSMASQ_PORT),
                "_http._tcp.fz.test",
                "SRV",
                ns=topo.ns["client"],
                check=False,
            )
        ),
    )
    return proc


def profile(topo: object, data: Path, seconds: int, out: Path) -> tuple[Result, list[str]]:
    """One round of ours with py-spy recording the gateway and the client."""
    from bench.bench_e2e_iperf import top_functions
    from e2e.topology import Topology

    assert isinstance(topo, Topology)
    spy = Path(sys.executable).parent / "py-spy"
    recs = []
    for name in ("gateway", "client"):
        pid = topo.procs[name].popen.pid  # type: ignore[union-attr]
        argv = [str(spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw"]
        argv += ["--nonblocking", "-o", str(out / f"dnsfwd-{name}.txt")]
        recs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    result = dnsperf(topo.ns["client"], "100.100.111.1", 53, data, seconds)
    for r in recs:
        r.wait(timeout=60)
    lines = [f"  {name}: " + top_functions(out / f"dnsfwd-{name}.txt", 10) for name in ("gateway", "client")]
    return result, lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench_dns_forwarding")
    ap.add_argument("--seconds", type=int, default=SECONDS)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--profile", help="directory for py-spy profiles of one more round of ours")
    ap.add_argument(
        "--fixed-qps",
        type=int,
        default=2000,
        help="also run ours at this fixed rate and print the CPU per query of the gateway and the client "
        "(steadier than the top rate on a shared machine); 0: skip",
    )
    args = ap.parse_args(argv if argv is not None else [])
    if os.geteuid() != 0:
        print("  bench_dns_forwarding: needs root (network namespaces); not run")
        return
    missing = [t for t in ("dnsperf", "dnsmasq", "unbound") if shutil.which(t) is None]
    if missing:
        print(f"  {', '.join(missing)} not installed (`make deps`); not run")
        return
    from e2e.demo import connect
    from e2e.topology import Topology

    # No per-client rate limit: one client host is the whole load here (decision 0111's limit would
    # answer most of it SERVFAIL at once, which is not the forwarding path being measured).
    with Topology(gateway_env={"FIREZONE_DNS_CLIENT_QPS": "0"}) as topo:
        connect(topo, 0)
        data = topo.workdir / "queries.txt"
        data.write_text(QUERIES)
        start_dnsmasq(topo)
        cns = topo.ns["client"]
        pids = {n: topo.procs[n].popen.pid for n in ("gateway", "client")}  # type: ignore[union-attr]
        print(
            f"  dnsperf -l {args.seconds} -c 4 -q {OUTSTANDING} from the client host, SRV + TXT of "
            f"DNS-resource names, {args.rounds} alternating rounds; load average {os.getloadavg()[0]:.2f}"
        )
        best: dict[str, Result] = {}
        per_query: list[float] = []
        for _ in range(args.rounds):
            cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
            ours = dnsperf(cns, "100.100.111.1", 53, data, args.seconds)
            cpu = {n: cpu_seconds(p) - cpu0[n] for n, p in pids.items()}
            ref = dnsperf(cns, topo.ip("gw"), DNSMASQ_PORT, data, args.seconds)
            us = 1e6 * cpu["gateway"] / max(ours.completed, 1)
            per_query.append(us)
            if ours.noerror < 0.99 * ours.completed:
                raise RuntimeError(f"ours: only {ours.noerror} of {ours.completed} answers were NOERROR")
            print(
                f"  ours    {ours.qps:9.0f} q/s  avg {ours.latency_ms:7.1f} ms  lost {ours.lost:5d}  "
                f"gateway CPU {100 * cpu['gateway'] / args.seconds:3.0f}% ({us:.0f} us/query), "
                f"client CPU {100 * cpu['client'] / args.seconds:3.0f}%"
            )
            print(f"  dnsmasq {ref.qps:9.0f} q/s  avg {ref.latency_ms:7.1f} ms  lost {ref.lost:5d}")
            for name, res in (("ours", ours), ("dnsmasq", ref)):
                if res.qps > best.get(name, Result(0, 0, 0, 0)).qps:
                    best[name] = res
        print(
            f"  best: ours {best['ours'].qps:.0f} q/s, dnsmasq {best['dnsmasq'].qps:.0f} q/s; "
            f"gateway CPU per query (best round) {min(per_query):.0f} us"
        )
        print(f"  ratio ours / dnsmasq: {best['ours'].qps / best['dnsmasq'].qps:.3f}")
        if args.fixed_qps:
            cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
            fixed = dnsperf(cns, "100.100.111.1", 53, data, args.seconds, qps=args.fixed_qps)
            per = {n: 1e6 * (cpu_seconds(p) - cpu0[n]) / max(fixed.completed, 1) for n, p in pids.items()}
            print(
                f"  at a fixed {args.fixed_qps} q/s: {fixed.qps:.0f} q/s answered, "
                f"avg {fixed.latency_ms:.1f} "
                f"ms; CPU per query: gateway {per['gateway']:.0f} us, client {per['client']:.0f} us"
            )
        if args.profile:
            out = Path(args.profile)
            out.mkdir(parents=True, exist_ok=True)
            res, lines = profile(topo, data, args.seconds, out)
            print(f"  profiled round (py-spy 200 Hz): {res.qps:.0f} q/s; most self time (incl. idle):")
            for line in lines:
                print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
