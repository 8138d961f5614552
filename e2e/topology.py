"""The end-to-end topology in network namespaces, built from veth pairs, torn down always.

Theory of operation
-------------------
:class:`Topology` is a context manager. On entry it creates one namespace per host (names carry a
per-run tag, so parallel runs never collide) and wires them; on exit, also after a failure, Ctrl-C or
SIGTERM (``firezone-e2e`` turns SIGTERM into an exception), it stops every process it started by PID
(SIGTERM, then SIGKILL), deletes the namespaces (which removes their veths, TUN devices, routes and
firewall rules) and the ``/etc/netns/<ns>`` resolver and hosts files. The root namespace is never touched.

Hosts (underlay ``10.201.<i>.0/24``, host ``.2``, router ``.1``; IPv4)::

    portal  10.201.1.2  firezone-dev-portal :8081 (gateway WebSocket + admin and client API)
    relay1  10.201.2.2  the project's relay (devio.relay, Firezone flavour) :3478
    relay2  10.201.3.2  coturn (turnserver; the portal hands out TURN REST credentials for it)
    gw      10.201.4.2  firezone-gateway (real TUN tun-firezone), forwarding + masquerading (as
                        Firezone's ``rust/gateway/debian/firezone-gateway-init.sh``)
    client  10.201.5.2  devio.client (TUN tun-fzclient): may reach the gateway directly
    client2 10.201.6.2  devio.client: its direct path to the gateway is cut in the router (nftables via
                        iptables-nft), so it can only use the relays
    client3 fd01:201:7::2  devio.client on an IPv6-only underlay: its direct path to the gateway and its
                        path to relay1 are cut, so it reaches the gateway through relay2 over IPv6
    inet    router between them (ip_forward, IPv6 forwarding)

The underlay is dual-stack beside that: every host but ``client`` and ``client2`` (IPv4 only) also has
``fd01:201:<i>::2/64`` (router ``::1``), ``client3`` has nothing but that; the portal listens on both
families, the relays (ours and coturn) on both addresses and the portal hands out both. Every allocation
gets an IPv4 and an IPv6 relayed address from either relay in one ALLOCATE (coturn too: decision 0171).

    behind the gateway (its eth1/eth2, so the ``-o e+`` masquerade rules apply):
    web     172.20.1.10 / fd20:1::10   HTTP :80 and :8080 (python -m http.server), iperf3 :5201
    dns     172.20.2.53 / fd20:2::53   unbound serving fz.test (A, AAAA, SRV, TXT) and firezone.dev,
                                       logging every query (what the gateway asks upstream)

The gateway's ``/etc/netns`` hosts file names ``intranet.fz.test`` (the web host), which unbound does
not know: the gateway resolves DNS-resource names like the system (``getaddrinfo``).

Resources in the portal: ``lan`` = CIDR 172.20.1.0/24 with filters tcp/80, tcp/5201, udp/5201, icmp
(so 8080 is blocked and answers ICMP prohibited); ``fz`` = DNS ``*.fz.test`` (no filters). Both clients
have policies for both (``expires_in`` unset). Nothing is granted until :meth:`Topology.grant` runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gateway_core.wireguard.crypto import public_key

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
PORTAL_PORT = 8081
"""The dev portal's port (its default)."""
WAIT = 30.0
"""Seconds any awaited condition may take before it counts as failed (reached only when broken)."""
STOP_GRACE = 5.0
"""Seconds a process gets after SIGTERM before SIGKILL."""
TOKEN = "e2e-gateway-token"
CIDR_ID = uuid.UUID("c7793628-8579-465b-83e3-1a5d4af4db3b")
DNS_ID = uuid.UUID("619fbe83-bc95-4635-9a08-68da9a944c88")
CLIENT_IDS = (
    uuid.UUID("3abd725a-733b-4801-ac16-72f26cd98a24"),
    uuid.UUID("5c1f2d3e-7a8b-4c9d-8e0f-1a2b3c4d5e6f"),
    uuid.UUID("8e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b"),
)
CLIENT_TUNNEL = (
    ("100.93.74.51", "fd00:2021:1111::f:853b"),
    ("100.93.74.52", "fd00:2021:1111::f:853c"),
    ("100.93.74.53", "fd00:2021:1111::f:853d"),
)
RELAY_IDS = (
    uuid.UUID("0a133356-7a9e-4b9a-b413-0d95a5720fd8"),
    uuid.UUID("1b244467-8b0f-4cab-8524-1ea6b6831fe9"),
)
WEB_V4, WEB_V6 = "172.20.1.10", "fd20:1::10"
HOSTS_ONLY_NAME = "intranet.fz.test"
"""A name only the gateway's hosts file knows (``/etc/netns/<gw>/hosts``; unbound answers NXDOMAIN):
reachable as a DNS resource because the gateway resolves with ``getaddrinfo``."""
DNS_V4 = "172.20.2.53"
BLOCKED_PORT = 8080
"""Served by the web host but not in the CIDR resource's filters: the gateway answers ICMP prohibited."""
UNDERLAY = {"portal": 1, "relay1": 2, "relay2": 3, "gw": 4, "client": 5, "client2": 6, "client3": 7}
V4_ONLY = frozenset({"client", "client2"})
"""Hosts with no IPv6 underlay address (they reach everything over IPv4)."""
V6_ONLY = frozenset({"client3"})
"""Hosts with no IPv4 underlay address (they reach everything over IPv6, the portal included)."""

ZONE = """\
server:
    interface: {ip}@53
    interface: {ip6}@53
    access-control: 0.0.0.0/0 allow
    access-control: ::/0 allow
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    log-queries: yes
    module-config: "iterator"
    auto-trust-anchor-file: ""
    do-not-query-localhost: yes
    ratelimit: 0
    ip-ratelimit: 0
    local-zone: "." refuse
    local-zone: "fz.test." static
    local-data: "web.fz.test. 60 IN A {web4}"
    local-data: "web.fz.test. 60 IN AAAA {web6}"
    local-data: "fresh.fz.test. 60 IN A {web4}"
    local-data: "_http._tcp.fz.test. 60 IN SRV 10 5 80 web.fz.test."
    local-data: 'txt.fz.test. 60 IN TXT "v=spf1 -all" "firezone e2e"'
    local-zone: "firezone.dev." static
    local-data: "firezone.dev. 60 IN A 192.0.2.80"
remote-control:
    control-enable: no
"""


COTURN = """\
listening-ip={ip}
listening-ip={ip6}
listening-port=3478
relay-ip={ip}
relay-ip={ip6}
min-port=49152
max-port=65535
realm=firezone
use-auth-secret
static-auth-secret={secret}
no-tls
no-dtls
no-cli
no-multicast-peers
userdb={dir}/{name}-turn.db
pidfile={dir}/{name}-turn.pid
log-file=stdout
simple-log
verbose
"""
"""coturn as a Firezone relay: TURN REST credentials from the shared secret (the portal's ``kind =
"coturn"`` relays), realm ``firezone``, UDP only."""


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = WAIT) -> str:
    """Run a command (inside ``ns``); its stdout. Raises RuntimeError on failure when ``check``."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def run(*argv: str, ns: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    """Run a command inside ``ns`` and return the whole result (for programs whose failure is news)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    ns: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = None

    def start(self) -> None:
        self.out = self.log.open("ab")
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *self.argv],
            env=self.env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the process by its PID and wait (SIGKILL after :data:`STOP_GRACE`); its exit code."""
        p = self.popen
        code = None
        if p is not None:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
                try:
                    p.wait(timeout=STOP_GRACE)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=STOP_GRACE)
            code = p.returncode
        if self.out is not None:
            self.out.close()
            self.out = None
        return code

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Topology:
    """See the module docstring."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000}{os.urandom(2).hex()}")
    keep_workdir: bool = False
    gateway_log: str = "info"
    coturn: bool = False
    """relay2 is coturn (``turnserver``, TURN REST credentials) instead of a second ``devio.relay``."""
    gateway_env: dict[str, str] = field(default_factory=dict)
    """More environment for the gateway daemon (e.g. ``FIREZONE_DNS_CLIENT_QPS`` for a benchmark)."""
    client_env: dict[str, str] = field(default_factory=dict)
    """More environment for the dev clients (e.g. ``FIREZONE_TUN_OFFLOAD=0``)."""
    workdir: Path = field(init=False)
    ns: dict[str, str] = field(init=False, default_factory=dict)
    procs: dict[str, Proc] = field(init=False, default_factory=dict)
    client_keys: list[bytes] = field(init=False, default_factory=list)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"fz-e2e-{self.tag}-"))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.client_keys = [os.urandom(32) for _ in CLIENT_IDS]

    # --- context -----------------------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def name(self, role: str) -> str:
        return f"fze{self.tag}-{role}"

    def teardown(self) -> None:
        for proc in reversed(list(self.procs.values())):
            with contextlib.suppress(Exception):
                proc.stop()
        for ns in reversed(list(self.ns.values())):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=WAIT, capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self.ns.clear()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- building ----------------------------------------------------------------------------------------

    def _netns(self, role: str) -> str:
        ns = self.name(role)
        sh("ip", "netns", "add", ns)
        self.ns[role] = ns
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        na, nb = self.ns[a], self.ns[b]
        sh("ip", "-n", na, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", nb)
        sh("ip", "-n", na, "link", "set", a_if, "up")
        sh("ip", "-n", nb, "link", "set", b_if, "up")

    def _resolv(self, role: str, nameserver: str) -> None:
        d = Path(f"/etc/netns/{self.ns[role]}")
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(f"nameserver {nameserver}\n")

    def _hosts(self, role: str, entries: dict[str, str]) -> None:
        d = Path(f"/etc/netns/{self.ns[role]}")
        d.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{ip} {name}" for ip, name in entries.items()]
        (d / "hosts").write_text("\n".join(lines) + "\n")

    def upstream_queries(self, name: str, rtype: str = "A") -> int:
        """How many ``rtype`` queries for ``name`` unbound (the gateway's upstream) has logged."""
        text = self.procs["unbound"].text() if "unbound" in self.procs else ""
        return text.count(f" {name}. {rtype} IN")

    def ip(self, role: str) -> str:
        return f"10.201.{UNDERLAY[role]}.2"

    def ip6(self, role: str) -> str:
        return f"fd01:201:{UNDERLAY[role]}::2"

    def build(self) -> None:
        for role in ("inet", *UNDERLAY, "web", "dns"):
            self._netns(role)
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns=self.ns["inet"])
        sh("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1", ns=self.ns["inet"])
        for role, i in UNDERLAY.items():
            self._veth(role, "eth0", "inet", f"r-{role}")
            ns = self.ns[role]
            sh("ip", "-n", self.ns["inet"], "addr", "add", f"10.201.{i}.1/24", "dev", f"r-{role}")
            sh(
                "ip",
                "-6",
                "-n",
                self.ns["inet"],
                "addr",
                "add",
                f"fd01:201:{i}::1/64",
                "dev",
                f"r-{role}",
                "nodad",
            )
            if role not in V6_ONLY:
                sh("ip", "-n", ns, "addr", "add", f"10.201.{i}.2/24", "dev", "eth0")
                sh("ip", "-n", ns, "route", "add", "default", "via", f"10.201.{i}.1")
            if role not in V4_ONLY:
                sh("ip", "-6", "-n", ns, "addr", "add", f"fd01:201:{i}::2/64", "dev", "eth0", "nodad")
                sh("ip", "-6", "-n", ns, "route", "add", "default", "via", f"fd01:201:{i}::1")
            else:
                sh("sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1", ns=ns)  # no link-local either
        # The LAN behind the gateway: web on eth1, dns on eth2 (names starting with "e": masqueraded).
        for gw_if, role, n, host in (("eth1", "web", 1, "10"), ("eth2", "dns", 2, "53")):
            self._veth("gw", gw_if, role, "eth0")
            sh("ip", "-n", self.ns["gw"], "addr", "add", f"172.20.{n}.1/24", "dev", gw_if)
            sh("ip", "-n", self.ns[role], "addr", "add", f"172.20.{n}.{host}/24", "dev", "eth0")
            sh("ip", "-n", self.ns[role], "route", "add", "default", "via", f"172.20.{n}.1")
            sh("ip", "-6", "-n", self.ns["gw"], "addr", "add", f"fd20:{n}::1/64", "dev", gw_if, "nodad")
            sh("ip", "-6", "-n", self.ns[role], "addr", "add", f"fd20:{n}::{host}/64", "dev", "eth0", "nodad")
            sh("ip", "-6", "-n", self.ns[role], "route", "add", "default", "via", f"fd20:{n}::1")
        for i in (1, 2):  # count what reaches each relay host (relay_stats)
            sh("iptables", "-w", "-A", "INPUT", "-p", "udp", ns=self.ns[f"relay{i}"])
            sh("ip6tables", "-w", "-A", "INPUT", "-p", "udp", ns=self.ns[f"relay{i}"])
        # client2 may only use the relays: its direct path to the gateway is dropped in the router.
        self.cut_direct_path("client2")
        # client3 (IPv6 only) may only use relay2 (coturn with --coturn): its direct path to the gateway and
        # its path to relay1 are dropped, so its tunnel runs over relay2's IPv6 side.
        self.cut_direct_path("client3")
        self.cut_path("client3", "relay1")
        self._resolv("gw", DNS_V4)
        self._hosts("gw", {WEB_V4: HOSTS_ONLY_NAME, WEB_V6: HOSTS_ONLY_NAME})
        self._resolv("client", "100.100.111.1")
        self._resolv("client2", "100.100.111.1")
        self._resolv("client3", "100.100.111.1")
        self._start_resources()
        self._start_portal()
        for i in (1, 2):
            self.start_relay(i)
        self.start_gateway()
        for i in range(len(CLIENT_IDS)):
            self.start_client(i)

    def cut_direct_path(self, client: str) -> None:
        """Drop UDP between ``client`` and the gateway in the router (both directions, both families)."""
        self.cut_path(client, "gw")

    def cut_path(self, a: str, b: str) -> None:
        """Drop UDP between hosts ``a`` and ``b`` in the router (both directions, each family they have)."""
        ns = self.ns["inet"]
        for tool, ip in (("iptables", self.ip), ("ip6tables", self.ip6)):
            if {a, b} & (V6_ONLY if tool == "iptables" else V4_ONLY):
                continue
            for src, dst in ((ip(a), ip(b)), (ip(b), ip(a))):
                sh(tool, "-w", "-I", "FORWARD", "-p", "udp", "-s", src, "-d", dst, "-j", "DROP", ns=ns)

    def _proc(self, name: str, role: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, self.ns[role], argv, {**self.env, **(env or {})}, self.workdir / f"{name}.log")
        self.procs[name] = proc
        proc.start()
        return proc

    def _start_resources(self) -> None:
        www = self.workdir / "www"
        www.mkdir()
        (www / "index.html").write_text("hello from the resource behind the firezone gateway\n")
        py = sys.executable
        self._proc("http80", "web", [py, "-m", "http.server", "80", "--bind", "::", "--directory", str(www)])
        self._proc(
            "http8080", "web", [py, "-m", "http.server", str(BLOCKED_PORT), "--bind", "::", "-d", str(www)]
        )
        self._proc("iperf3", "web", ["iperf3", "-s", "-p", "5201"])
        dnsdir = self.workdir / "dns"
        dnsdir.mkdir()
        conf = dnsdir / "unbound.conf"
        conf.write_text(ZONE.format(ip=DNS_V4, ip6="fd20:2::53", dir=dnsdir, web4=WEB_V4, web6=WEB_V6))
        self._proc("unbound", "dns", ["unbound", "-d", "-c", str(conf)])
        wait_for(
            "the web server",
            lambda: "HTTP/1.0 200" in sh("curl", "-si", f"http://{WEB_V4}/", ns=self.ns["gw"], check=False),
        )
        wait_for(
            "unbound",
            lambda: (
                WEB_V4 in sh("dig", "+short", f"@{DNS_V4}", "web.fz.test", "A", ns=self.ns["gw"], check=False)
            ),
        )

    def portal_config(self) -> str:
        lines = [
            f'token = "{TOKEN}"',
            'secret = "e2e-portal-secret"',
            'account_slug = "e2e"',
            "",
            "[[resources]]",
            f'id = "{CIDR_ID}"',
            'type = "cidr"',
            'address = "172.20.1.0/24"',
            'name = "lan"',
            'filters = ["tcp/80", "tcp/5201", "udp/5201", "icmp"]',
            "",
            "[[resources]]",
            f'id = "{DNS_ID}"',
            'type = "dns"',
            'address = "**.fz.test"',
            'name = "fz"',
        ]
        for cid, key, (v4, v6) in zip(CLIENT_IDS, self.client_keys, CLIENT_TUNNEL, strict=True):
            pub = base64.b64encode(public_key(key)).decode()
            lines += [
                "",
                "[[clients]]",
                f'id = "{cid}"',
                f'public_key = "{pub}"',
                f'ipv4 = "{v4}"',
                f'ipv6 = "{v6}"',
            ]
            for rid in (CIDR_ID, DNS_ID):
                lines += ["", "[[policies]]", f'client = "{cid}"', f'resource = "{rid}"']
        for i, rid in enumerate(RELAY_IDS, start=1):
            ip = self.ip(f"relay{i}")
            lines += [
                "",
                "[[relays]]",
                f'id = "{rid}"',
                f'addrs = ["{ip}:3478", "[{self.ip6(f"relay{i}")}]:3478"]',
                f'secret = "relay-secret-{i}"',
                f'kind = "{"coturn" if self.coturn and i == 2 else "firezone"}"',
            ]
        return "\n".join(lines) + "\n"

    def _start_portal(self) -> None:
        cfg = self.workdir / "portal.toml"
        cfg.write_text(self.portal_config())
        self.start_portal()

    def start_portal(self) -> None:
        argv = [str(BIN / "firezone-dev-portal"), "--config", str(self.workdir / "portal.toml")]
        proc = self._proc("portal", "portal", [*argv, "--listen", f"*:{PORTAL_PORT}"])  # both families
        wait_for("the dev portal", lambda: "listening on" in proc.text() or not proc.alive())
        if not proc.alive():
            raise RuntimeError(f"the dev portal did not start:\n{proc.text()[-2000:]}")

    def start_relay(self, i: int) -> Proc:
        name = f"relay{i}"
        if self.coturn and i == 2:
            return self.start_coturn(i)
        argv = [str(BIN / "firezone-dev-relay"), "--listen", self.ip(name), "--listen", self.ip6(name)]
        argv += ["--secret", f"relay-secret-{i}"]
        proc = self._proc(name, name, [*argv, "--stats", str(self.workdir / f"{name}.json")])
        wait_for(f"{name} to listen", lambda: "listening on" in proc.text() or not proc.alive())
        return proc

    def relay_stats(self, i: int) -> dict[str, int]:
        """``{"in": UDP datagrams received, "in4": over IPv4, "in6": over IPv6}`` by relay ``i``'s host
        (iptables/ip6tables counting rules, so it is the same measure for our relay and coturn)."""
        got: dict[str, int] = {}
        for tool, key in (("iptables", "in4"), ("ip6tables", "in6")):
            out = sh(tool, "-w", "-L", "INPUT", "-v", "-x", "-n", ns=self.ns[f"relay{i}"], check=False)
            for line in out.splitlines():
                cols = line.split()
                if len(cols) > 3 and cols[0].isdigit() and cols[2] in ("udp", "17"):
                    got[key] = int(cols[0])
                    break
        if got:
            got["in"] = got.get("in4", 0) + got.get("in6", 0)
        return got

    def start_coturn(self, i: int) -> Proc:
        name = f"relay{i}"
        ip = self.ip(name)
        conf = self.workdir / f"{name}-turnserver.conf"
        conf.write_text(
            COTURN.format(ip=ip, ip6=self.ip6(name), secret=f"relay-secret-{i}", dir=self.workdir, name=name)
        )
        proc = self._proc(name, name, ["turnserver", "-c", str(conf)])
        wait_for(
            f"coturn ({name}) to listen",
            lambda: f"{ip}:3478" in sh("ss", "-Hlnu", ns=self.ns[name]) or not proc.alive(),
        )
        if not proc.alive():
            raise RuntimeError(f"coturn stopped:\n{proc.text()[-2000:]}")
        return proc

    def start_gateway(self) -> Proc:
        sh("sh", str(ROOT / "scripts" / "setup-masquerade.sh"), ns=self.ns["gw"])
        env = {
            "FIREZONE_ID": f"e2e-gateway-{self.tag}",
            "FIREZONE_NAME": "e2e-gateway",
            "FIREZONE_NO_INC_BUF": "true",
            "RUST_LOG": self.gateway_log,
            **self.gateway_env,
        }
        argv = [
            str(BIN / "firezone-gateway"),
            TOKEN,
            "--api-url",
            f"ws://{self.ip('portal')}:{PORTAL_PORT}",
            "--health-check-addr",
            "127.0.0.1:8080",
        ]
        self.procs.pop("gateway", None)
        proc = self._proc("gateway", "gw", argv, env)
        wait_for(
            "the gateway to join the portal", lambda: self.gateway_joined() or not proc.alive(), timeout=WAIT
        )
        if not proc.alive():
            raise RuntimeError(f"the gateway stopped:\n{proc.text()[-3000:]}")
        return proc

    def start_client(self, i: int) -> Proc:
        role = "client" if i == 0 else f"client{i + 1}"
        v4, v6 = CLIENT_TUNNEL[i]
        portal = f"[{self.ip6('portal')}]" if role in V6_ONLY else self.ip("portal")
        argv = [
            sys.executable,
            "-m",
            "devio.client",
            "--portal",
            f"http://{portal}:{PORTAL_PORT}",
            "--client-id",
            str(CLIENT_IDS[i]),
            "--private-key",
            base64.b64encode(self.client_keys[i]).decode(),
            "--ipv4",
            v4,
            "--ipv6",
            v6,
            "--status",
            str(self.workdir / f"{role}.json"),
        ]
        self.procs.pop(role, None)
        proc = self._proc(role, role, argv, self.client_env)
        wait_for(f"{role} to start", lambda: "dev-client: up" in proc.text() or not proc.alive())
        if not proc.alive():
            raise RuntimeError(f"{role} stopped:\n{proc.text()[-3000:]}")
        return proc

    # --- the portal's admin API (called from the router namespace, which reaches every host) -------------

    def admin(self, action: str, **params: str) -> dict[str, Any]:
        from urllib.parse import urlencode

        url = f"http://{self.ip('portal')}:{PORTAL_PORT}/admin/{action}?{urlencode(params)}"
        out = sh("curl", "-s", "--max-time", "5", url, ns=self.ns["inet"], check=False)
        try:
            return json.loads(out)  # type: ignore[no-any-return]
        except ValueError:
            return {"ok": False, "error": f"no answer: {out!r}"}

    def gateway_joined(self) -> bool:
        status = self.admin("status")
        return any(g.get("joined") for g in status.get("gateways", []))

    def grant(self, client: int, resource: uuid.UUID) -> dict[str, Any]:
        return self.admin("authorize", client=str(CLIENT_IDS[client]), resource=str(resource))

    def revoke(self, client: int, resource: uuid.UUID) -> dict[str, Any]:
        return self.admin("revoke", client=str(CLIENT_IDS[client]), resource=str(resource))

    def client_status(self, client: int) -> dict[str, Any]:
        role = "client" if client == 0 else f"client{client + 1}"
        try:
            return json.loads((self.workdir / f"{role}.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def client_path(self, client: int) -> str:
        """The client's nominated path to the gateway: ``direct``, ``via relayN`` (our side sends from
        our allocation on relayN) or ``to relayN`` (we send to the gateway's allocation on relayN; ICE may
        call such a path peer-to-peer when it learned the address as a peer-reflexive candidate)."""
        relay_ips = {self.ip(f"relay{i}"): f"relay{i}" for i in (1, 2)}
        relay_ips.update({self.ip6(f"relay{i}"): f"relay{i}" for i in (1, 2)})
        for p in self.client_status(client).get("paths", {}).values():
            kind, dest = p.get("kind"), p.get("dest")
            if kind is None:
                continue
            if kind.startswith("relay_to"):
                relay = next(
                    (f"relay{i}" for i, r in enumerate(RELAY_IDS, 1) if str(r) == p.get("relay")), "?"
                )
                return f"via {relay} ({kind})"
            host = str(dest).rpartition(":")[0].strip("[]")
            if host in relay_ips:
                return f"to {relay_ips[host]} ({kind})"
            return f"direct ({kind})"
        return "none"

    def client_ns(self, client: int) -> str:
        return self.ns["client" if client == 0 else f"client{client + 1}"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread for the block (so ``finally`` tears down)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
