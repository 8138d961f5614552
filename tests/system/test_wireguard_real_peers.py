"""Our sans-IO WireGuard peer on a real UDP socket against real peers, in namespaces the test creates.

(a) Debian ``wireguard-go`` configured with ``wg``: handshake with us as initiator and as responder, ICMP
echo through the tunnel to its TUN both ways, UDP both ways, a rekey, and a replayed transport packet
rejected by us. (b) boringtun from PyPI ``mitmproxy-wireguard`` (a responder only): handshake with us as
initiator, UDP and TCP echo through it, a rekey. Needs root; runs in CI (never skipped).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from gateway_core.clock import secs
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DropReason
from gateway_core.wireguard import RateLimiter, WireGuardConfig
from gateway_core.wireguard.crypto import public_key

from .wg_harness import (
    Harness,
    namespaces,
    now,
    process,
    run,
    suffix,
    udp_socket_in,
    veth,
    wait_for,
    wg_keypair,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

US_VETH, PEER_VETH = "10.201.0.1", "10.201.0.2"
PEER_TUN, US_TUN = "10.202.0.1", "10.202.0.2"
US_PORT, PEER_PORT = 51821, 51820


@dataclass
class Setup:
    ns_us: str
    ns_peer: str
    tmp: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    sfx = suffix()
    ns_us, ns_peer = f"wgu{sfx}", f"wgp{sfx}"
    with namespaces(ns_us, ns_peer):
        veth(ns_us, f"wva{sfx}", f"{US_VETH}/24", ns_peer, f"wvb{sfx}", f"{PEER_VETH}/24")
        yield Setup(ns_us, ns_peer, tmp_path)


# --- (a) wireguard-go -------------------------------------------------------------------------------


@dataclass
class GoPeer:
    ifname: str
    ns: str

    def latest_handshake(self) -> int:
        out = run("wg", "show", self.ifname, "latest-handshakes", ns=self.ns).split()
        return int(out[1]) if len(out) >= 2 else 0


@pytest.fixture
def wggo(setup: Setup) -> Iterator[tuple[Setup, GoPeer, Harness]]:
    ifname = f"wgt{suffix()}"  # the UAPI socket path is not per namespace: the name must be unique
    raw_us, _, pub_us = wg_keypair()
    _, b64_go, pub_go = wg_keypair()
    psk = os.urandom(32)
    (setup.tmp / "go.key").write_text(b64_go)
    (setup.tmp / "psk").write_text(base64.b64encode(psk).decode())
    log = str(setup.tmp / "wireguard-go.log")
    with process(["ip", "netns", "exec", setup.ns_peer, "wireguard-go", "-f", ifname], log):
        wait_for(lambda: Path(f"/var/run/wireguard/{ifname}.sock").exists(), 10, "wireguard-go UAPI socket")
        run(
            "wg", "set", ifname, "listen-port", str(PEER_PORT), "private-key", str(setup.tmp / "go.key"),
            "peer", pub_us, "preshared-key", str(setup.tmp / "psk"),
            "endpoint", f"{US_VETH}:{US_PORT}", "allowed-ips", f"{US_TUN}/32",
            ns=setup.ns_peer,
        )  # fmt: skip
        run("ip", "addr", "add", f"{PEER_TUN}/24", "dev", ifname, ns=setup.ns_peer)
        run("ip", "link", "set", ifname, "up", ns=setup.ns_peer)
        sock = udp_socket_in(setup.ns_us, (US_VETH, US_PORT))
        try:
            h = Harness.make(sock, (PEER_VETH, PEER_PORT), raw_us, base64.b64decode(pub_go), psk)
            yield setup, GoPeer(ifname, setup.ns_peer), h
        finally:
            sock.close()


def echo_request(src: str, dst: str, ident: int, seq: int, payload: bytes = b"sans-io") -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=seq) / payload)


def is_echo_reply(pkt: bytes, ident: int, seq: int) -> bool:
    ip = IP(pkt)
    return ICMP in ip and ip[ICMP].type == 0 and ip[ICMP].id == ident and ip[ICMP].seq == seq


def answer_pings_and_udp(h: Harness) -> None:
    """Make the harness answer ICMP echo requests and echo UDP datagrams sent to our tunnel address."""

    def on_packet(pkt: bytes) -> None:
        ip = IP(pkt)
        if ip.dst != US_TUN:
            return
        if ICMP in ip and ip[ICMP].type == 8:
            icmp = ip[ICMP]
            reply = IP(src=US_TUN, dst=ip.src) / ICMP(type=0, id=icmp.id, seq=icmp.seq) / bytes(icmp.payload)
            h.send_ip(bytes(reply))
        elif UDP in ip:
            u = ip[UDP]
            reply = IP(src=US_TUN, dst=ip.src) / UDP(sport=u.dport, dport=u.sport) / bytes(u.payload)
            h.send_ip(bytes(reply))

    h.on_packet = on_packet


def test_wireguard_go_we_initiate_ping_and_replay(wggo: tuple[Setup, GoPeer, Harness]) -> None:
    _, go, h = wggo
    for seq in range(1, 4):
        h.send_ip(echo_request(US_TUN, PEER_TUN, 0x4242, seq))
        h.run_until(
            lambda s=seq: any(is_echo_reply(p, 0x4242, s) for p in h.tunnel_packets), 10, f"echo reply {seq}"
        )
    assert h.peer.stats.counters["handshakes_as_initiator"] == 1
    assert go.latest_handshake() > 0
    # A replayed transport packet from wireguard-go is rejected by us.
    data = [d for d in h.received_datagrams if d[0] == 4 and len(d) > 32]
    assert data
    before = h.peer.stats.drops[DropReason.WG_REPLAY]
    assert h.peer.decapsulate(now(), data[-1]) is None
    assert h.peer.stats.drops[DropReason.WG_REPLAY] == before + 1


def test_wireguard_go_initiates_ping_and_udp_to_us(wggo: tuple[Setup, GoPeer, Harness]) -> None:
    setup, go, h = wggo
    answer_pings_and_udp(h)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", setup.ns_peer, "ping", "-c", "3", "-i", "0.2", "-W", "3", US_TUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        h.run_until(lambda: ping.poll() is not None, 20, "ping from the wireguard-go namespace")
    finally:
        if ping.poll() is None:
            ping.kill()
        out = ping.communicate()[0].decode()
    assert ping.returncode == 0, out
    assert "3 received" in out
    assert h.peer.stats.counters["handshakes_as_responder"] >= 1
    assert h.peer.stats.counters["initiations_sent"] == 0
    # UDP from the wireguard-go side, echoed by us.
    client = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);"
        f"s.sendto(b'udp-through-wg',('{US_TUN}',9999));d,a=s.recvfrom(100);print(d.decode(),a[0])"
    )
    udp = subprocess.Popen(
        ["ip", "netns", "exec", setup.ns_peer, sys.executable, "-c", client],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        h.run_until(lambda: udp.poll() is not None, 15, "UDP echo client")
    finally:
        if udp.poll() is None:
            udp.kill()
        out = udp.communicate()[0].decode()
    assert udp.returncode == 0 and f"udp-through-wg {US_TUN}" in out, out
    assert go.latest_handshake() > 0


def test_wireguard_go_accepts_our_cookie_reply_under_load(wggo: tuple[Setup, GoPeer, Harness]) -> None:
    """We are under load from the first handshake (limit 0): wireguard-go's initiation gets our Cookie
    Reply; its retransmission 5 s later carries a mac2 made with our cookie, which we accept."""
    setup, go, h = wggo
    own = h.keys[0]
    h.reconfigure(rate_limiter=RateLimiter(public_key(own), SeededEntropy(3), now(), limit=0))
    answer_pings_and_udp(h)
    ping = subprocess.Popen(
        ["ip", "netns", "exec", setup.ns_peer, "ping", "-c", "1", "-W", "15", US_TUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        h.run_until(lambda: ping.poll() is not None, 25, "ping through a cookie exchange")
    finally:
        if ping.poll() is None:
            ping.kill()
        out = ping.communicate()[0].decode()
    assert ping.returncode == 0, out
    assert h.peer.stats.drops[DropReason.WG_COOKIE_REQUIRED] == 1
    assert h.peer.stats.counters["handshakes_as_responder"] == 1
    assert go.latest_handshake() > 0


def test_wireguard_go_rekey(wggo: tuple[Setup, GoPeer, Harness]) -> None:
    _, _, h = wggo
    # Shrink our REKEY_AFTER_TIME so that the rekey happens within a few seconds of real time.
    h.reconfigure(WireGuardConfig(rekey_after_time=secs(2)))
    seq = 0
    sessions = set()
    end = time.monotonic() + 6
    while time.monotonic() < end:
        seq += 1
        h.send_ip(echo_request(US_TUN, PEER_TUN, 0x5151, seq))
        h.run_until(
            lambda s=seq: any(is_echo_reply(p, 0x5151, s) for p in h.tunnel_packets), 10, f"reply {seq}"
        )
        cur = h.peer.current_session
        assert cur is not None
        sessions.add(cur.local_index)
        t = time.monotonic() + 0.3
        while time.monotonic() < t:
            h.step(0.05)
    assert h.peer.stats.counters["handshakes_as_initiator"] >= 2
    assert len(sessions) >= 2
    assert h.peer.stats.total_drops == 0, h.peer.stats.snapshot()


# --- (b) boringtun via mitmproxy-wireguard ----------------------------------------------------------


@pytest.fixture
def boringtun(setup: Setup) -> Iterator[tuple[Setup, Harness]]:
    raw_us, _, pub_us = wg_keypair()
    _, b64_bt, pub_bt = wg_keypair()
    script = Path(__file__).with_name("mitm_wg_echo.py")
    log = setup.tmp / "boringtun.log"
    cmd = ["ip", "netns", "exec", setup.ns_peer, sys.executable, str(script)]
    cmd += [PEER_VETH, str(PEER_PORT), b64_bt, pub_us, "60"]
    with process(cmd, str(log)):
        wait_for(lambda: "ready" in log.read_text(), 15, "mitmproxy-wireguard server")
        sock = udp_socket_in(setup.ns_us, (US_VETH, US_PORT))
        try:
            # mitmproxy-wireguard takes no PSK: boringtun uses the all-zero one.
            yield setup, Harness.make(sock, (PEER_VETH, PEER_PORT), raw_us, base64.b64decode(pub_bt), None)
        finally:
            sock.close()


def udp_echoed(h: Harness, payload: bytes) -> bool:
    for p in h.tunnel_packets:
        ip = IP(p)
        if UDP in ip and ip.src == "10.203.0.9" and ip[UDP].sport == 53 and bytes(ip[UDP].payload) == payload:
            return True
    return False


def test_boringtun_udp_and_tcp_echo(boringtun: tuple[Setup, Harness]) -> None:
    _, h = boringtun
    payload = b"hello-udp"
    h.send_ip(bytes(IP(src=US_TUN, dst="10.203.0.9") / UDP(sport=40000, dport=53) / payload))
    h.run_until(lambda: udp_echoed(h, payload), 10, "UDP echo through boringtun")
    assert h.peer.stats.counters["handshakes_as_initiator"] == 1

    # TCP: a hand-made three-way handshake and one data segment, echoed by the far side.
    dst, sport, dport, isn = "10.203.0.2", 40001, 7, 1000
    h.send_ip(
        bytes(IP(src=US_TUN, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=isn, window=65535))
    )

    def synack() -> IP | None:
        for p in h.tunnel_packets:
            ip = IP(p)
            if TCP in ip and ip[TCP].dport == sport and ip[TCP].flags == "SA":
                return ip
        return None

    h.run_until(lambda: synack() is not None, 10, "TCP SYN-ACK through boringtun")
    sa = synack()
    assert sa is not None
    their = sa[TCP].seq + 1
    data = b"hello-tcp"
    seg = TCP(sport=sport, dport=dport, flags="PA", seq=isn + 1, ack=their, window=65535)
    h.send_ip(bytes(IP(src=US_TUN, dst=dst) / seg / data))

    def echoed() -> bool:
        for p in h.tunnel_packets:
            ip = IP(p)
            if TCP in ip and ip[TCP].dport == sport and bytes(ip[TCP].payload) == data:
                return True
        return False

    h.run_until(echoed, 10, "TCP echo through boringtun")
    assert h.peer.stats.total_drops == 0, h.peer.stats.snapshot()


def test_boringtun_rekey(boringtun: tuple[Setup, Harness]) -> None:
    _, h = boringtun
    h.reconfigure(WireGuardConfig(rekey_after_time=secs(2)))
    sessions = set()
    end = time.monotonic() + 6
    n = 0
    while time.monotonic() < end:
        n += 1
        payload = b"udp-%d" % n
        h.send_ip(bytes(IP(src=US_TUN, dst="10.203.0.9") / UDP(sport=40000, dport=53) / payload))
        h.run_until(lambda p=payload: udp_echoed(h, p), 10, f"UDP echo {n}")
        cur = h.peer.current_session
        assert cur is not None
        sessions.add(cur.local_index)
        t = time.monotonic() + 0.3
        while time.monotonic() < t:
            h.step(0.05)
    assert h.peer.stats.counters["handshakes_as_initiator"] >= 2
    assert len(sessions) >= 2
