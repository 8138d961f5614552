"""Queries per second over UDP on loopback: one :class:`UdpDnsServer` answering from a fixed response,
against dnsmasq answering the same record.

dnsperf (bounded with ``-l``) asks ``www.fz.test A`` of each server in turn, in the same run:

- ours: the server's socket registered once with the event loop, whose reader callback takes what the
  socket holds (``server.read_nowait()``: read until empty) and answers each query at once with
  ``server.send_nowait(query.remote, id + fixed[2:])``: the way the gateway's listeners hand batches to
  the driver (``DnsServerSet.attach``, decision 0112) - the answer (``www.fz.test. 60 IN A 10.0.0.1``) is
  built once, only the query's id is copied in;
- dnsmasq on 127.0.0.1 on another free port, answering the same record from ``--address`` (started by
  the bench, stopped by PID).

Rounds alternate (ours, dnsmasq, ours, dnsmasq...) so that background load hits both alike; the best
round of each counts. Run: ``.venv/bin/python -m bench bench_dns_vs_dnsmasq`` (``SECONDS=5`` for longer
rounds, ``ROUNDS=3`` for more).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import anyio
import dns.message
import dns.rrset

from bench import machine
from gateway_io.dns_server import UdpDnsServer

SECONDS = int(os.environ.get("SECONDS_PER_RUN", os.environ.get("SECONDS", "3")))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
NAME, ADDRESS = "www.fz.test.", "10.0.0.1"


def fixed_response() -> bytes:
    """The answer, encoded once: id 0, QR/RD/RA, one question, one A record."""
    query = dns.message.make_query(NAME, "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(NAME, 60, "IN", "A", ADDRESS))
    response.id = 0
    return response.to_wire()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def dnsperf(port: int, data: Path) -> tuple[float, int]:
    """``(queries per second, queries lost)`` of one bounded dnsperf run against 127.0.0.1:port."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", str(SECONDS)]
    argv += ["-c", "2", "-q", "100", "-t", "2"]
    result = await anyio.run_process(argv, check=False)
    out = result.stdout.decode()
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if result.returncode != 0 or qps is None or lost is None:
        raise RuntimeError(f"dnsperf failed: {out} {result.stderr.decode()}")
    return float(qps.group(1)), int(lost.group(1))


async def ours(data: Path) -> tuple[float, int]:
    answer = fixed_response()
    server = await UdpDnsServer.bind(("127.0.0.1", 0))

    tail = answer[2:]
    send = server.send_nowait

    def readable() -> None:
        for query in server.read_nowait():
            send(query.remote, query.message[:2] + tail)

    loop = asyncio.get_running_loop()
    loop.add_reader(server.fileno(), readable)
    try:
        result = await dnsperf(server.local_address[1], data)
    finally:
        loop.remove_reader(server.fileno())
    await server.aclose()
    return result


def start_dnsmasq(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--address=/{NAME.rstrip('.')}/{ADDRESS}",
        f"--pid-file={tmp / 'dnsmasq.pid'}",
        "--user=" + ("root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_answering(port: int, proc: subprocess.Popen[bytes]) -> None:
    query = dns.message.make_query(NAME, "A").to_wire()
    deadline = time.monotonic() + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited: {err}")
            s.sendto(query, ("127.0.0.1", port))
            try:
                reply = dns.message.from_wire(s.recv(512))
            except TimeoutError:
                continue
            if reply.answer and reply.answer[0][0].to_text() == ADDRESS:
                return
    raise RuntimeError("dnsmasq did not answer within 10 s")


async def reference(data: Path, tmp: Path) -> tuple[float, int]:
    port = free_port()
    proc = start_dnsmasq(port, tmp)
    try:
        wait_answering(port, proc)
        return await dnsperf(port, data)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


async def _main() -> dict[str, tuple[float, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "queries.txt"
        data.write_text(f"{NAME.rstrip('.')} A\n")
        best: dict[str, tuple[float, int]] = {}
        for _ in range(ROUNDS):
            for name, result in (
                ("UdpDnsServer", await ours(data)),
                ("dnsmasq", await reference(data, Path(tmp))),
            ):
                qps, lost = result
                print(f"  {name:14s} {qps:10.0f} queries/s  lost {lost}")
                if qps > best.get(name, (0.0, 0))[0]:
                    best[name] = result
        return best


def main() -> None:
    missing = [tool for tool in ("dnsperf", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        print(f"  {' and '.join(missing)} not installed (Debian packages dnsperf, dnsmasq-base; `make deps`)")
        return
    print(f"  {machine.line()}")
    print(f"  dnsperf -l {SECONDS} -c 2 -q 100, UDP on 127.0.0.1, {NAME} A, {ROUNDS} alternating rounds")
    best = anyio.run(_main)
    ratio = best["UdpDnsServer"][0] / best["dnsmasq"][0]
    print(f"  best: UdpDnsServer {best['UdpDnsServer'][0]:.0f} q/s, dnsmasq {best['dnsmasq'][0]:.0f} q/s")
    print(f"  ratio UdpDnsServer / dnsmasq: {ratio:.2f}")


if __name__ == "__main__":
    main()
