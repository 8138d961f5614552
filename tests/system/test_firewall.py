"""The underlay guard's mechanics in a bare namespace (root; CI runs as root): the nftables table is
replaced as a whole and idempotently, the script and the daemon write the same forward rules, nothing
needs more than ``CAP_NET_ADMIN``, and the DNS listeners bound to a TUN device receive only what comes
in over it (decision 0110). The attacks themselves are ``test_underlay_guard.py``."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import anyio
import dns.message
import pytest

from gateway_core.interface import InterfaceConfig
from gateway_core.wire.ip import parse_ip, parse_udp
from gateway_core.wire.ipbuild import build_udp_packet
from gateway_io import firewall
from gateway_io.dns_server import TcpDnsServer, UdpDnsServer
from gateway_io.tun import TunDevice
from tests.system.io_netns import inside, netns, sh

pytestmark = [pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup-masquerade.sh"
GW4, GW6 = IPv4Address("100.64.0.1"), IPv6Address("fd00:2021:1111::1")
CLIENT4 = IPv4Address("100.64.0.9")
SPEC = firewall.GuardSpec("tun-firezone", (GW4, GW6), forward_v4=True, forward_v6=True)


@pytest.fixture
def ns() -> Iterator[str]:
    with netns("fzguard") as name:
        yield name


def listing(ns: str) -> str:
    return sh("nft", "-s", "list", "table", "inet", firewall.TABLE, ns=ns)


def chain(text: str, name: str) -> list[str]:
    """The rule lines of chain ``name`` in an ``nft -s list`` text."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index(f"chain {name} {{")
    end = lines.index("}", start)
    return [line for line in lines[start + 1 : end] if line and not line.startswith("type ")]


def test_ruleset_follows_the_spec() -> None:
    text = firewall.ruleset(firewall.GuardSpec("tun-x", (GW4,), forward_v4=False, forward_v6=True))
    assert text.startswith(f"table inet {firewall.TABLE} {{}}\ndelete table inet {firewall.TABLE}\n")
    assert 'iifname != "tun-x" ip daddr 100.64.0.1 counter drop' in text
    assert "ip6 daddr" not in text
    assert 'oifname "tun-x" meta nfproto ipv6 jump into_tunnel' in text
    assert "nfproto ipv4" not in text
    with pytest.raises(ValueError):
        firewall.ruleset(firewall.GuardSpec('tun"; flush ruleset; "'))
    spec = firewall.spec_for(InterfaceConfig(GW4, GW6, masquerade_v6=False), "tun-firezone", ipv6=False)
    assert spec == firewall.GuardSpec("tun-firezone", (GW4,), forward_v4=True, forward_v6=False)


def test_apply_replaces_the_table_whole_and_remove_deletes_it(ns: str) -> None:
    async def main() -> None:
        assert await firewall.apply(SPEC, netns=ns) is None
        first = listing(ns)
        assert await firewall.apply(SPEC, netns=ns) is None
        assert listing(ns) == first  # applying again changes nothing
        changed = firewall.GuardSpec("tun-firezone", (IPv4Address("100.64.0.2"),), forward_v4=True)
        assert await firewall.apply(changed, netns=ns) is None
        text = listing(ns)
        assert "100.64.0.2" in text and "100.64.0.1" not in text and "nfproto ipv6" not in text
        assert await firewall.remove(netns=ns) is None
        assert firewall.TABLE not in sh("nft", "list", "tables", ns=ns)
        assert await firewall.remove(netns=ns) is None  # nothing to remove: fine

    anyio.run(main)


def test_a_missing_nft_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "nft_path", lambda: "/nonexistent/nft")
    err = anyio.run(firewall.apply, SPEC)
    assert err == "/nonexistent/nft: [Errno 2] No such file or directory: '/nonexistent/nft'"
    assert anyio.run(firewall.remove) == err


def test_the_script_and_the_daemon_write_the_same_forward_rules(ns: str) -> None:
    for _ in range(2):
        sh("sh", str(SCRIPT), ns=ns)
    script = listing(ns)
    assert "chain input" not in script  # the script does not know the tunnel addresses
    assert anyio.run(lambda: firewall.apply(SPEC, netns=ns)) is None
    daemon = listing(ns)
    for name in ("forward", "into_tunnel"):
        assert chain(script, name) == chain(daemon, name)
    assert len(chain(daemon, "input")) == 2  # the daemon adds its tunnel addresses


PROBE = """
import anyio, socket
from ipaddress import IPv4Address
from gateway_io import firewall
from gateway_io.dns_server import bind_socket
spec = firewall.GuardSpec("lo", (IPv4Address("127.0.0.2"),), forward_v4=True)
print("apply", anyio.run(firewall.apply, spec))
print("remove", anyio.run(firewall.remove))
s = bind_socket(("127.0.0.1", 0), socket.SOCK_DGRAM, "lo")
print("bound to device", s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\\0").decode())
"""


def test_the_guard_and_the_device_binding_need_cap_net_admin_only(ns: str) -> None:
    """As the unit runs the daemon: CAP_NET_ADMIN as the only capability (ambient, so ``nft`` inherits it).
    The process stays UID 0 to read the repository wherever CI checks it out, but has no other
    capability (no CAP_NET_RAW, no CAP_DAC_OVERRIDE: UID 0 alone grants nothing in the kernel checks)."""
    caps = ["--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin"]
    argv = ["ip", "netns", "exec", ns, "setpriv", *caps, sys.executable, "-c", PROBE]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.splitlines() == ["apply None", "remove None", "bound to device lo"], out.stderr
    # And without CAP_NET_ADMIN nft is refused: the check above is not vacuous.
    argv = ["ip", "netns", "exec", ns, "setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable]
    out = subprocess.run([*argv, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[0].startswith("apply nft exited"), out.stdout + out.stderr


def test_listeners_bound_to_the_tun_device_see_only_what_comes_over_it(ns: str) -> None:
    """A query written into the TUN (as the gateway does with a client's packet) is received and answered
    through the TUN; the same query from another host over the underlay (a veth, with a route to the
    tunnel range) finds no listener: the kernel answers "port unreachable" (UDP) and a reset (TCP), which
    the sender sees as "connection refused". (No nftables table here: this is the device binding alone;
    host-local senders are the input rule's part, see :mod:`gateway_io.firewall`.)"""
    query = dns.message.make_query("fz.test", "SRV").to_wire()
    with netns("fzout") as outside:
        sh(
            "ip",
            "link",
            "add",
            "veth-gw",
            "type",
            "veth",
            "peer",
            "name",
            "veth-out",
            "netns",
            outside,
            ns=ns,
        )
        sh("ip", "addr", "add", "10.9.0.1/24", "dev", "veth-gw", ns=ns)
        sh("ip", "link", "set", "veth-gw", "up", ns=ns)
        sh("ip", "addr", "add", "10.9.0.2/24", "dev", "veth-out", ns=outside)
        sh("ip", "link", "set", "veth-out", "up", ns=outside)
        sh("ip", "route", "add", "100.64.0.0/11", "via", "10.9.0.1", ns=outside)

        async def main() -> None:
            with inside(ns):
                tun = TunDevice.open("tun-guard")
                sh("ip", "link", "set", "tun-guard", "up", ns=ns)
                sh("ip", "addr", "add", f"{GW4}/32", "dev", "tun-guard", ns=ns)
                sh("ip", "route", "add", "100.64.0.0/11", "dev", "tun-guard", ns=ns)
                udp = await UdpDnsServer.bind((str(GW4), 0), device="tun-guard")
                tcp = await TcpDnsServer.bind((str(GW4), udp.local_address[1]), device="tun-guard")
            with inside(outside):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            port = udp.local_address[1]
            try:
                probe.settimeout(5)
                probe.connect((str(GW4), port))
                probe.send(query)
                with pytest.raises(ConnectionRefusedError):  # ICMP port unreachable: no listener matched
                    probe.recv(2000)
                stream.settimeout(5)
                with pytest.raises(ConnectionRefusedError):  # TCP reset: no listener matched
                    stream.connect((str(GW4), port))
                assert tun.write(build_udp_packet(CLIENT4, GW4, 40000, port, query)) is None
                with anyio.fail_after(5):
                    got = await udp.receive()
                assert got.remote == (str(CLIENT4), 40000) and got.message == query
                assert udp.stats.counters["udp.queries"] == 1  # the underlay query never arrived
                await udp.send_response(got.remote, query)  # the answer leaves through the TUN
                answers: list[IPv4Address | IPv6Address] = []
                with anyio.fail_after(5):
                    while not answers:
                        for packet in await tun.read_batch():  # (also the kernel's IPv6 solicitations)
                            ip = parse_ip(packet)
                            if ip.proto == 17 and parse_udp(ip.payload).sport == port:
                                answers.append(ip.dst)
                assert answers == [CLIENT4]
            finally:
                probe.close()
                stream.close()
                await udp.aclose()
                await tcp.aclose()
                await tun.aclose()

        anyio.run(main)


def test_masquerade_script_leaves_the_root_namespace_alone(ns: str) -> None:
    before = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    sh("sh", str(SCRIPT), ns=ns)
    after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    assert before == after
    assert firewall.TABLE in sh("nft", "list", "tables", ns=ns)
