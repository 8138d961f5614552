"""On real kernels (the :mod:`e2e.topology` namespaces, the real daemon): ``--validate-checksums`` drops
corrupted packets in both directions, an outer ECN CE mark reaches the resource inside the packet, and the
datagrams on the underlay carry the ECN bits of the packets inside, both ways.

The gateway runs with ``FIREZONE_VALIDATE_CHECKSUMS=true``; only ``client`` (direct path) is connected.
Packets are made by hand (:mod:`tests.system.raw_inject`, a raw socket) so that a checksum can be wrong
and the TOS byte chosen; each carries its own source port as its name. What arrives is read with tcpdump
on the far side: on the web host's ``eth0`` (client to resource) or on the client's TUN (resource to
client). A corrupted packet is always sent *before* a good one on the same path, so once the good one is
seen the corrupted one would have been too. The ECN marks on the underlay are set by an nftables rule in
the router (``ip ecn set ce`` on the client's datagrams to the gateway), as a congested router would.
Every wait is a polled condition with a bounded timeout; the topology is torn down on any failure.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.demo import connect
from e2e.topology import CLIENT_TUNNEL, WEB_V4, Topology, sh, wait_for

pytestmark = pytest.mark.system

CLIENT_V4 = CLIENT_TUNNEL[0][0]
UDP_PORT = 5201
"""A port the CIDR resource's filters allow for UDP (``udp/5201``)."""
_SEEN = re.compile(r"\(tos (0x[0-9a-f]+)[^\n]*\n\s+\S+?\.(\d+) > ")


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(gateway_env={"FIREZONE_VALIDATE_CHECKSUMS": "true"}) as t:
        connect(t, 0)
        try:
            yield t
        finally:
            print(f"--- gateway log (tail) ---\n{t.procs['gateway'].text()[-2500:]}")


class Capture:
    """tcpdump in ``ns`` on ``iface`` with ``bpf``, verbose (the TOS byte), until :meth:`stop`."""

    def __init__(self, topo: Topology, ns: str, iface: str, bpf: str) -> None:
        self.out = topo.workdir / f"cap-{ns}-{iface}-{len(list(topo.workdir.glob('cap-*')))}.txt"
        self._file = self.out.open("w")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-v", "-i", iface, bpf],
            stdout=self._file,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.proc.stderr.readline()  # "tcpdump: listening on ...": the capture is armed

    def seen(self) -> dict[int, int]:
        """Source port -> TOS byte of every packet captured so far."""
        text = Path(self.out).read_text()
        return {int(port): int(tos, 16) for tos, port in _SEEN.findall(text)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


def _inject(
    ns: str, src: str, dst: str, sport: int, dport: int, *, tos: int = 0, corrupt: bool = False
) -> None:
    argv = [sys.executable, "-m", "tests.system.raw_inject", src, dst, str(sport), str(dport), f"p{sport}"]
    argv += ["--tos", str(tos)] + (["--corrupt"] if corrupt else [])
    sh(*argv, ns=ns)


def test_a_corrupted_packet_from_the_client_is_dropped_and_the_good_one_passes(topo: Topology) -> None:
    cap = Capture(topo, topo.ns["web"], "eth0", f"udp and dst port {UDP_PORT}")
    try:
        _inject(topo.client_ns(0), CLIENT_V4, WEB_V4, 41001, UDP_PORT, corrupt=True)
        _inject(topo.client_ns(0), CLIENT_V4, WEB_V4, 41002, UDP_PORT)
        wait_for("the good packet at the resource", lambda: 41002 in cap.seen(), timeout=10)
        assert 41001 not in cap.seen()
    finally:
        cap.stop()
    wait_for(
        "the gateway's warning",
        lambda: "invalid checksum in a packet from a client" in topo.procs["gateway"].text(),
        timeout=5,
    )


def test_a_corrupted_packet_towards_the_client_is_dropped_and_the_good_one_passes(topo: Topology) -> None:
    cap = Capture(topo, topo.client_ns(0), "tun-fzclient", f"udp and src port {UDP_PORT}")
    try:
        # From the gateway host itself, with the resource's address: routed into tun-firezone like a reply.
        for dport, corrupt in ((41003, True), (41004, False)):
            sh(
                sys.executable,
                "-m",
                "tests.system.raw_inject",
                WEB_V4,
                CLIENT_V4,
                str(UDP_PORT),
                str(dport),
                f"p{dport}",
                *(["--corrupt"] if corrupt else []),
                ns=topo.ns["gw"],
            )
        wait_for(
            "the good packet at the client", lambda: cap.out.read_text().count(f".{41004}:") >= 1, timeout=10
        )
        assert f".{41003}:" not in cap.out.read_text()
    finally:
        cap.stop()
    wait_for(
        "the gateway's warning",
        lambda: "invalid checksum in a packet from the TUN" in topo.procs["gateway"].text(),
        timeout=5,
    )


def test_an_outer_ce_mark_reaches_the_resource_in_an_ect_packet(topo: Topology) -> None:
    router = topo.ns["inet"]
    rule = (
        "table ip fz_ecn {\n  chain marks {\n    type filter hook forward priority 0; policy accept;\n"
        f"    ip daddr {topo.ip('gw')} udp dport 52625 ip ecn set ce\n  }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", router, "nft", "-f", "-"], input=rule, text=True, check=True)
    cap = Capture(topo, topo.ns["web"], "eth0", f"udp and dst port {UDP_PORT}")
    try:
        for sport, tos in ((41010, 0x02), (41011, 0x00), (41012, 0x01), (41013, 0xB8 | 0x02)):
            _inject(topo.client_ns(0), CLIENT_V4, WEB_V4, sport, UDP_PORT, tos=tos)
        wait_for("the marked packets at the resource", lambda: 41013 in cap.seen(), timeout=10)
        sh("nft", "delete", "table", "ip", "fz_ecn", ns=router)
        _inject(topo.client_ns(0), CLIENT_V4, WEB_V4, 41014, UDP_PORT, tos=0x02)
        wait_for("the unmarked packet at the resource", lambda: 41014 in cap.seen(), timeout=10)
        seen = cap.seen()
    finally:
        cap.stop()
        sh("nft", "delete", "table", "ip", "fz_ecn", ns=router, check=False)
    assert seen[41010] == 0x03  # ECT(0) inside, CE outside: CE
    assert seen[41011] == 0x00  # Not-ECT inside: never CE
    assert seen[41012] == 0x03  # ECT(1) inside: CE
    assert seen[41013] == 0xB8 | 0x03  # the DSCP is kept
    assert seen[41014] == 0x02  # no CE on the outer datagram: unchanged


_TOS = re.compile(r"\(tos (0x[0-9a-f]+),")


def _outer_tos(cap: Capture) -> list[int]:
    return [int(t, 16) for t in _TOS.findall(cap.out.read_text())]


def test_the_datagram_carries_the_ecn_bits_of_the_packet_inside(topo: Topology) -> None:
    """Both directions on the underlay, captured in the router: the client's datagrams to the gateway and
    the gateway's to the client carry the ECN bits (not the DSCP) of the packet they carry, as Firezone's
    (``ecn: packet.ecn()`` in ``rust/connlib/snownet/src/node.rs``); everything else leaves Not-ECT."""
    router, client, gw = topo.ns["inet"], topo.ip("client"), topo.ip("gw")
    # Nothing listens on the UDP ports at either end: their ICMP errors (whose TOS Linux derives from the
    # packet's) would be more ECN-marked datagrams; the resource and the client keep them.
    quiet = "table ip fz_quiet {\n  chain out {\n    type filter hook output priority 0; policy accept;\n"
    quiet += "    icmp type destination-unreachable drop\n  }\n}\n"
    ends = (topo.ns["web"], topo.client_ns(0))
    for ns in ends:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=quiet, text=True, check=True)
    up = Capture(topo, router, "r-client", f"udp and src host {client} and dst host {gw}")
    down = Capture(topo, router, "r-gw", f"udp and src host {gw} and dst host {client}")
    at_web = Capture(topo, topo.ns["web"], "eth0", f"udp and dst port {UDP_PORT}")
    at_client = Capture(topo, topo.client_ns(0), "tun-fzclient", f"udp and src port {UDP_PORT}")
    try:
        sent = ((41020, 0x01), (41021, 0xB8 | 0x02), (41022, 0x01), (41023, 0x03))
        for sport, tos in sent:
            _inject(topo.client_ns(0), CLIENT_V4, WEB_V4, sport, UDP_PORT, tos=tos)
            # From the gateway host with the resource's address: routed into its TUN like a reply (to a
            # port of its own: a flow the client opened is masqueraded by the gateway host's conntrack).
            _inject(topo.ns["gw"], WEB_V4, CLIENT_V4, UDP_PORT, sport + 100, tos=tos)
        ports = {p for p, _ in sent}
        wait_for("the packets at the resource", lambda: ports <= set(at_web.seen()), timeout=10)
        wait_for(
            "the packets at the client",
            lambda: all(f".{p + 100}:" in at_client.out.read_text() for p, _ in sent),
            timeout=10,
        )
        wait_for("the captures in the router", lambda: 0x03 in _outer_tos(up) and 0x03 in _outer_tos(down))
        ups, downs = _outer_tos(up), _outer_tos(down)
    finally:
        for c in (up, down, at_web, at_client):
            c.stop()
        for ns in ends:
            sh("nft", "delete", "table", "ip", "fz_quiet", ns=ns, check=False)
    for outer in (ups, downs):
        marked = [t for t in outer if t]
        assert sorted(marked) == [0x01, 0x01, 0x02, 0x03], outer  # ECN bits only, one datagram each
        assert all(t <= 3 for t in outer)  # the DSCP stays inside; the rest (checks, keepalives) Not-ECT
