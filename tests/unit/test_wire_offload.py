"""Segmenting and coalescing (``gateway_core.wire.offload``) against scapy, an independent implementation:
super-packets built by scapy are split into segments whose every checksum scapy recomputes to the same
value; split then coalesce gives back the same byte stream, and splitting the coalesced frames again gives
byte-identical segments; garbage never raises anything but ``DecodeError``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from gateway_core.errors import DecodeError
from gateway_core.wire.offload import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_SEGMENTS,
    VNET_HDR_LEN,
    VnetHdr,
    coalesce,
    complete_checksum,
    segment,
    split_tcp,
)

V4 = ("10.0.0.1", "172.20.1.10")
V6 = ("fd00::1", "fd00:2::10")


def _ip(version: int, **kw: Any) -> Any:
    src, dst = V4 if version == 4 else V6
    if version == 4:
        return IP(src=src, dst=dst, ttl=kw.get("ttl", 64), id=kw.get("ident", 1), flags="DF")
    return IPv6(src=src, dst=dst, hlim=kw.get("ttl", 64))


def _tcp_super(version: int, payload: bytes, seq: int, flags: str, options: list[Any]) -> bytes:
    return bytes(
        _ip(version)
        / TCP(sport=40000, dport=5201, seq=seq, ack=7, flags=flags, window=501, options=options)
        / payload
    )


def _checksums_verify(seg: bytes) -> None:
    """scapy recomputes the IPv4 header and transport checksums: they must equal ours."""
    pkt = IP(seg) if seg[0] >> 4 == 4 else IPv6(seg)
    again = pkt.copy()
    if seg[0] >> 4 == 4:
        del again[IP].chksum
        del again[IP].len
    else:
        del again[IPv6].plen
    l4 = TCP if TCP in pkt else UDP
    del again[l4].chksum
    if l4 is UDP:
        del again[UDP].len
    rebuilt = type(pkt)(bytes(again))
    if seg[0] >> 4 == 4:
        assert pkt[IP].chksum == rebuilt[IP].chksum
        assert pkt[IP].len == len(seg)
    assert pkt[l4].chksum == rebuilt[l4].chksum
    assert bytes(rebuilt) == seg


def _frames_to_segments(frames: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for f in frames:
        out.extend(segment(VnetHdr.unpack(f), f[VNET_HDR_LEN:]))
    return out


options = st.sampled_from([[], [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))], [("MSS", 1240)]])


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    mss=st.integers(1, 1460),
    payload=st.binary(min_size=1, max_size=20000),
    seq=st.integers(0, 2**32 - 1),
    psh=st.booleans(),
    opts=options,
)
def test_tcp_split_then_coalesce_gives_back_the_stream(
    version: int, mss: int, payload: bytes, seq: int, psh: bool, opts: list[Any]
) -> None:
    sup = _tcp_super(version, payload, seq, "PA" if psh else "A", opts)
    off = 20 if version == 4 else 40
    hdr = VnetHdr(F_NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6, 0, mss, off, 16)
    segs = segment(hdr, sup)
    assert len(segs) == -(-len(payload) // mss)
    stream = b""
    for i, s in enumerate(segs):
        _checksums_verify(s)
        t = (IP(s) if version == 4 else IPv6(s))[TCP]
        assert t.seq == (seq + len(stream)) % 2**32
        assert len(bytes(t.payload)) <= mss
        assert bool(t.flags & 0x08) == (psh and i == len(segs) - 1)
        if version == 4:
            assert IP(s).id == (1 + i) & 0xFFFF
        stream += bytes(t.payload)
    assert stream == payload
    frames = coalesce(segs)
    assert _frames_to_segments(frames) == segs
    if len(segs) <= MAX_SEGMENTS and len(sup) <= 65535:
        assert len(frames) == 1
        assert frames[0][VNET_HDR_LEN:][off + (sup[off + 12] >> 4) * 4 :] == payload


@settings(max_examples=100, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    size=st.integers(1, 1400),
    payload=st.binary(min_size=1, max_size=12000),
)
def test_udp_split_then_coalesce_gives_back_the_datagrams(version: int, size: int, payload: bytes) -> None:
    sup = bytes(_ip(version) / UDP(sport=5000, dport=5201) / payload)
    off = 20 if version == 4 else 40
    segs = segment(VnetHdr(F_NEEDS_CSUM, GSO_UDP_L4, 0, size, off, 6), sup)
    got = b""
    for s in segs:
        _checksums_verify(s)
        d = bytes((IP(s) if version == 4 else IPv6(s))[UDP].payload)
        assert 0 < len(d) <= size
        got += d
    assert got == payload
    frames = coalesce(segs, udp=True)
    assert _frames_to_segments(frames) == segs
    assert coalesce(segs) == [bytes(VNET_HDR_LEN) + s for s in segs]  # without USO: one by one


@settings(max_examples=60, deadline=None)
@given(order=st.lists(st.sampled_from([0, 1]), min_size=2, max_size=60))
def test_interleaved_flows_keep_their_order(order: list[int]) -> None:
    flows = [bytearray(), bytearray()]
    segs = []
    seqs = [1000, 5000]
    for i, f in enumerate(order):
        data = bytes([i]) * 100
        p = (
            IP(src=V4[0], dst=V4[1], id=i)
            / TCP(sport=40000 + f, dport=5201, seq=seqs[f], ack=7, flags="A")
            / data
        )
        seqs[f] += 100
        segs.append(bytes(p))
        flows[f] += data
    frames = coalesce(segs)
    assert len(frames) == len(set(order))  # each flow's run stays open across the other's packets
    again = [bytearray(), bytearray()]
    for s in _frames_to_segments(frames):
        _checksums_verify(s)
        t = IP(s)[TCP]
        again[t.sport - 40000] += bytes(t.payload)
    assert again == flows


def test_a_segment_with_a_bad_checksum_is_not_merged() -> None:
    segs = split_tcp(_tcp_super(4, bytes(range(256)) * 20, 1, "A", []), 1000)
    assert len(coalesce(segs)) == 1
    bad = bytearray(segs[1])
    bad[-1] ^= 1
    frames = coalesce([segs[0], bytes(bad), segs[2]])
    assert [f[VNET_HDR_LEN:] for f in frames[1:]] == [bytes(bad), segs[2]]
    assert VnetHdr.unpack(frames[1]).gso_type == GSO_NONE


def test_non_data_segments_and_gaps_end_a_run() -> None:
    segs = split_tcp(_tcp_super(4, b"x" * 5000, 1, "A", []), 1000)
    gap = coalesce([segs[0], segs[2]])
    assert len(gap) == 2
    fin = bytes(IP(src=V4[0], dst=V4[1]) / TCP(sport=40000, dport=5201, seq=1001, ack=7, flags="FA"))
    assert len(coalesce([segs[0], fin, segs[1]])) == 3
    short_first = coalesce([segs[-1], segs[0]])
    assert len(short_first) == 2


def test_complete_checksum_matches_scapy() -> None:
    for version in (4, 6):
        for l4, at in ((TCP(sport=1, dport=2, flags="A"), 16), (UDP(sport=1, dport=2), 6)):
            good = bytes(_ip(version) / l4 / (b"abc" * 101))
            off = 20 if version == 4 else 40
            partial = bytearray(good)
            # The kernel leaves the pseudo-header sum (not complemented) in the field.
            full = int.from_bytes(good[off + at : off + at + 2], "big")
            partial[off + at : off + at + 2] = b"\0\0"
            rest = sum(
                int.from_bytes(partial[i : i + 2].ljust(2, b"\0"), "big") for i in range(off, len(partial), 2)
            )
            pseudo = (~full & 0xFFFF) - rest
            pseudo %= 0xFFFF
            partial[off + at : off + at + 2] = pseudo.to_bytes(2, "big")
            assert complete_checksum(bytes(partial), off, at) == good


@settings(max_examples=300, deadline=None)
@given(
    gso=st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 3, 0x81]),
    flags=st.integers(0, 3),
    size=st.integers(0, 2000),
    start=st.integers(0, 100),
    off=st.integers(0, 40),
    data=st.binary(max_size=300),
)
def test_garbage_raises_only_decode_error(
    gso: int, flags: int, size: int, start: int, off: int, data: bytes
) -> None:
    try:
        segment(VnetHdr(flags, gso, 0, size, start, off), data)
    except DecodeError:
        pass
    frames = coalesce([data, data], udp=True)
    assert all(len(f) >= VNET_HDR_LEN for f in frames)
