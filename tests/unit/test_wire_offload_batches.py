"""Coalescing a mixed batch (``gateway_core.wire.offload.coalesce``), the way the TUN writer meets it:
segments of several TCP and UDP flows of both IP versions interleaved, with pure ACKs, FINs, gaps and
things that are not IP at all in between. Whatever the mix, splitting the frames again gives back every
packet byte for byte, each flow's packets in their order, nothing lost, nothing merged across flows; with
``verify`` off a segment is trusted as it is (its checksum is not looked at)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from gateway_core.wire.offload import VNET_HDR_LEN, VnetHdr, coalesce, segment, split_tcp, split_udp

ADDRS = {4: ("10.0.0.1", "172.20.1.10"), 6: ("fd00::1", "fd00:2::10")}


def _ip(version: int, ident: int) -> IP | IPv6:
    src, dst = ADDRS[version]
    return IP(src=src, dst=dst, id=ident, flags="DF") if version == 4 else IPv6(src=src, dst=dst)


def _flow(kind: str, version: int, sport: int, size: int, length: int, seq: int) -> list[bytes]:
    """The packets of one flow: a super-packet cut by our splitter (checked against scapy elsewhere), or a
    pure ACK / FIN (never merged)."""
    if kind == "tcp":
        tcp = TCP(sport=sport, dport=5201, seq=seq, ack=7, flags="A")
        return split_tcp(bytes(_ip(version, 1) / tcp / (b"t" * length)), size)
    if kind == "udp":
        return split_udp(bytes(_ip(version, 1) / UDP(sport=sport, dport=5201) / (b"u" * length)), size)
    flags = "A" if kind == "ack" else "FA"
    return [bytes(_ip(version, 9) / TCP(sport=sport, dport=5201, seq=seq, ack=7, flags=flags))]


def _key(p: bytes) -> bytes:
    """A packet's flow, or the packet itself for what is not IP."""
    if p[:1] and p[0] >> 4 == 4 and len(p) >= 24:
        return p[9:10] + p[12:24]
    if p[:1] and p[0] >> 4 == 6 and len(p) >= 44:
        return p[6:7] + p[8:44]
    return b"junk" + p


def _per_flow(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    flows: dict[bytes, list[bytes]] = defaultdict(list)
    for p in packets:
        flows[_key(p)].append(p)
    return dict(flows)


flow = st.tuples(
    st.sampled_from(["tcp", "udp", "ack", "fin"]),
    st.sampled_from([4, 6]),
    st.integers(1, 400),  # segment size
    st.integers(1, 3000),  # payload of the super-packet
    st.integers(0, 2**32 - 1),  # first sequence number
)
junk = st.sampled_from([b"", b"\x00", b"\x45\x00", bytes(19), b"\x60" + bytes(10), b"\xff" * 60])


@settings(max_examples=200, deadline=None)
@given(
    flows=st.lists(flow, min_size=1, max_size=5),
    junks=st.lists(junk, max_size=3),
    picks=st.lists(st.integers(0, 7), max_size=80),
    udp=st.booleans(),
    verify=st.booleans(),
)
def test_splitting_the_frames_gives_back_every_packet_of_every_flow(
    flows: list[tuple[str, int, int, int, int]],
    junks: list[bytes],
    picks: list[int],
    udp: bool,
    verify: bool,
) -> None:
    queues = [_flow(kind, v, 40000 + i, size, n, seq) for i, (kind, v, size, n, seq) in enumerate(flows)]
    queues += [[j] for j in junks]
    batch: list[bytes] = []
    for pick in picks:  # interleave the flows, each in its order
        live = [q for q in queues if q]
        if live:
            batch.append(live[pick % len(live)].pop(0))
    for q in queues:
        batch.extend(q)
    frames = coalesce(batch, udp=udp, verify=verify)
    again: list[bytes] = []
    for f in frames:
        assert len(f) >= VNET_HDR_LEN
        parts = segment(VnetHdr.unpack(f), f[VNET_HDR_LEN:])
        assert len({_key(p) for p in parts}) == 1  # a frame never mixes flows
        again.extend(parts)
    assert sorted(again) == sorted(batch)  # nothing lost, nothing made up
    assert _per_flow(again) == _per_flow(batch)  # and each flow in its order
    if not udp:
        assert all(VnetHdr.unpack(f).gso_type == 0 for f in frames if f[VNET_HDR_LEN:][9:10] == b"\x11")


def test_without_verify_a_segment_is_trusted_as_it_is() -> None:
    """``verify=False`` (packets out of an authenticated tunnel): a segment whose checksum is wrong is
    merged like the others; with ``verify`` it ends the run (as Linux GRO)."""
    sup = bytes(_ip(4, 1) / TCP(sport=40000, dport=5201, seq=1, ack=7, flags="A") / (b"x" * 3000))
    segs = split_tcp(sup, 1000)
    bad = bytearray(segs[1])
    bad[-1] ^= 1
    batch = [segs[0], bytes(bad), segs[2]]
    assert len(coalesce(batch, verify=False)) == 1
    assert len(coalesce(batch, verify=True)) == 3


def _one_flow(kind: str, version: int, src: str, sport: int) -> list[bytes]:
    dst = ADDRS[version][1]
    ip = IP(src=src, dst=dst, id=1, flags="DF") if version == 4 else IPv6(src=src, dst=dst)
    if kind == "tcp":
        return split_tcp(
            bytes(ip / TCP(sport=sport, dport=5201, seq=7, ack=7, flags="A") / (b"t" * 4000)), 1000
        )
    return split_udp(bytes(ip / UDP(sport=sport, dport=5201) / (b"u" * 4000)), 1000)


def test_flows_one_byte_apart_stay_apart_and_each_is_merged_whole() -> None:
    """Two flows whose 5-tuples differ in one byte only (the first of the source address, or the last of
    the source port), their segments interleaved: each flow becomes exactly one super-packet of its own."""
    for version, (src_a, src_b) in ((4, ("10.0.0.1", "11.0.0.1")), (6, ("fd00::1", "fe00::1"))):
        for kind in ("tcp", "udp"):
            for (a_src, a_port), (b_src, b_port) in (
                ((src_a, 40000), (src_b, 40000)),
                ((src_a, 40000), (src_a, 40001)),
            ):
                a = _one_flow(kind, version, a_src, a_port)
                b = _one_flow(kind, version, b_src, b_port)
                batch = [p for pair in zip(a, b, strict=True) for p in pair]
                frames = coalesce(batch, udp=True)
                assert len(frames) == 2, (version, kind, a_src, b_src, a_port, b_port)
                got = [segment(VnetHdr.unpack(f), f[VNET_HDR_LEN:]) for f in frames]
                assert got == [a, b]
