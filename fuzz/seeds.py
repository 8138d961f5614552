"""The seed corpus: ``python -m fuzz seeds`` rewrites ``fuzz/corpus/<target>/`` (deterministically).

Seeds are real inputs, not random bytes: what a simulated gateway received in a stateful-test program
(``sim.stateful.run_seeded``: datagrams (STUN, ChannelData, WireGuard), decrypted inner packets, TUN
packets, portal frames, DNS queries and upstream answers; recorded by wrapping the facade's entry
points), plus what the unit tests' builders make (ICMP errors, control packets, NAT inputs), and for the
two stateful targets operation sequences written with :class:`~fuzz.fdp_writer.FdpWriter` (checked by
replaying them: each seed must run the operations it was written for). At most :data:`PER_TARGET` files
per target, chosen evenly from what was recorded; file names are content hashes, so regenerating is
idempotent, and files named otherwise (crash inputs) are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"
PER_TARGET = 40
"""Files per target: enough to cover each kind of input once, small enough to keep the corpus in the
tens of kilobytes."""
_GENERATED = re.compile(r"[0-9a-f]{40}")
"""Names of generated seeds (content hashes); any other file in a corpus directory is a kept finding."""
SIM_SEEDS = (3, 11)
SIM_STEPS = 30


@dataclass
class Recorded:
    datagrams: list[bytes] = field(default_factory=list)
    inner: list[bytes] = field(default_factory=list)
    tun: list[bytes] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    dns_queries: list[bytes] = field(default_factory=list)
    dns_answers: list[bytes] = field(default_factory=list)


def record_simulation() -> Recorded:
    """Run stateful-test programs with the gateway's entry points wrapped to record their inputs."""
    import gateway_core.gateway as gwmod
    from gateway_core.dns.forwarding import DnsQueryReceived, DnsUpstreamResponse
    from gateway_core.portal.channel import PortalFrameReceived
    from sim.stateful.run import run_seeded

    rec = Recorded()
    cls = gwmod.Gateway
    orig_dg, orig_tun, orig_input = cls.handle_datagram, cls.handle_tun_packet, cls.handle_input
    orig_validate = gwmod.__dict__["validate"]
    in_datagram = [False]

    def handle_datagram(self: Any, now: Any, local: Any, remote: Any, payload: bytes, ecn: int = 0) -> Any:
        rec.datagrams.append(bytes(payload))
        in_datagram[0] = True
        try:
            return orig_dg(self, now, local, remote, payload, ecn)
        finally:
            in_datagram[0] = False

    def handle_tun_packet(self: Any, now: Any, packet: bytes) -> Any:
        rec.tun.append(bytes(packet))
        return orig_tun(self, now, packet)

    def handle_input(self: Any, now: Any, inp: Any) -> None:
        if isinstance(inp, PortalFrameReceived):
            rec.frames.append(inp.data if isinstance(inp.data, str) else inp.data.decode("utf-8", "replace"))
        elif isinstance(inp, DnsQueryReceived):
            rec.dns_queries.append(inp.message)
        elif isinstance(inp, DnsUpstreamResponse):
            rec.dns_answers.append(inp.message)
        orig_input(self, now, inp)

    def validate(packet: Any) -> Any:
        if in_datagram[0]:
            rec.inner.append(bytes(packet))
        return orig_validate(packet)

    cls.handle_datagram = handle_datagram  # type: ignore[method-assign]
    cls.handle_tun_packet = handle_tun_packet  # type: ignore[method-assign]
    cls.handle_input = handle_input  # type: ignore[method-assign]
    setattr(gwmod, "validate", validate)  # noqa: B010 - the facade's own reference
    try:
        for seed in SIM_SEEDS:
            run_seeded(seed, SIM_STEPS)
    finally:
        cls.handle_datagram = orig_dg  # type: ignore[method-assign]
        cls.handle_tun_packet = orig_tun  # type: ignore[method-assign]
        cls.handle_input = orig_input  # type: ignore[method-assign]
        setattr(gwmod, "validate", orig_validate)  # noqa: B010
    return rec


def _spread(items: Iterable[bytes], n: int = PER_TARGET) -> list[bytes]:
    """Up to ``n`` distinct items, evenly spread over the sequence (first kinds and late ones alike)."""
    seen: dict[bytes, None] = {}
    for it in items:
        seen.setdefault(it, None)
    uniq = list(seen)
    if len(uniq) <= n:
        return uniq
    return [uniq[i * len(uniq) // n] for i in range(n)]


def _built_packets() -> list[bytes]:
    from gateway_core.policy.p2p_control import (
        GOODBYE_PACKET,
        NatStatus,
        build_assigned_ips,
        build_domain_status,
    )
    from gateway_core.wire.icmp import build_icmp_prohibited, build_icmp_unreachable
    from gateway_core.wire.ipbuild import build_icmp_echo, build_tcp_packet, build_udp_packet
    from tests.unit.gateway_harness import DNS_ID

    c4, r4 = IPv4Address("100.64.0.2"), IPv4Address("172.20.0.5")
    c6, r6 = IPv6Address("fd00:2021:1111::2"), IPv6Address("2001:db8::5")
    out = []
    for c, r in ((c4, r4), (c6, r6)):
        udp = build_udp_packet(c, r, 5401, 53, b"query")
        tcp = build_tcp_packet(c, r, 5402, 80, b"GET /")
        echo = build_icmp_echo(c, r, 7, 1, b"ping")
        out += [
            udp,
            tcp,
            echo,
            build_icmp_prohibited(udp),
            build_icmp_unreachable(tcp),
            build_icmp_unreachable(echo),
        ]
    proxies4 = [IPv4Address(f"100.96.0.{i}") for i in range(1, 5)]
    out += [
        GOODBYE_PACKET,
        build_assigned_ips(DNS_ID, "app.example.com", proxies4),
        build_domain_status(DNS_ID, "app.example.com", NatStatus.ACTIVE),
    ]
    return out


def _wg_tunnel_seeds() -> list[bytes]:
    from fuzz.fdp_writer import FdpWriter
    from fuzz.targets import wg_tunnel as t
    from tests.unit.wireguard_link import ipv4_udp

    seeds = []
    for counter in (5, 2000):  # ahead of the window, far ahead
        w = FdpWriter().int_in_range(0, 3, 2).bool(True).int_in_range(0, 3000, counter)
        seeds.append(w.sized(ipv4_udp(b"fuzz"), 120).build())
    for i in range(len(t.RECORDED)):
        seeds.append(
            FdpWriter()
            .int_in_range(0, 3, 1)
            .int_in_range(0, len(t.RECORDED) - 1, i)
            .int_in_range(0, 3, 0)
            .build()
        )
    seeds.append(
        FdpWriter()
        .int_in_range(0, 3, 3)
        .int_in_range(0, len(t.STEPS) - 1, 5)
        .int_in_range(0, 3, 3)
        .int_in_range(0, len(t.STEPS) - 1, 6)
        .build()
    )
    return seeds


def _gateway_seeds(rec: Recorded) -> list[bytes]:
    from fuzz.fdp_writer import FdpWriter
    from fuzz.gateway_template import INNER_DESTINATIONS, INNER_SOURCES, PORTS
    from fuzz.targets import gateway as g

    seeds: list[tuple[bytes, list[int]]] = []

    def op(w: FdpWriter, code: int) -> FdpWriter:
        return w.int_in_range(0, g.OPS, code)

    def time(w: FdpWriter, step: int) -> FdpWriter:
        return op(w, g.OP_TIME).int_in_range(0, len(g.STEPS) - 1, step)

    for pkt in _spread(rec.inner, 8):
        w = op(FdpWriter(), g.OP_TUNNEL_RAW).sized(pkt, 1400)
        seeds.append((time(w, 3).build(), [g.OP_TUNNEL_RAW, g.OP_TIME]))
    for pkt in _spread(rec.tun, 6):
        seeds.append((op(FdpWriter(), g.OP_TUN_RAW).sized(pkt, 1400).build(), [g.OP_TUN_RAW]))
    for text in _spread([f.encode() for f in [*_golden_frames(), *rec.frames]], 12):
        w = op(FdpWriter(), g.OP_PORTAL_RAW).sized(text, g.MAX_TEXT).bool(True)
        seeds.append((w.build(), [g.OP_PORTAL_RAW]))
    for i in range(len(g.TEMPLATE.portal_payloads)):
        w = op(FdpWriter(), g.OP_PORTAL).int_in_range(0, len(g.TEMPLATE.portal_payloads) - 1, i).bool(True)
        w = op(w, g.OP_TUNNEL).int_in_range(0, len(INNER_SOURCES) - 1, 0)  # then traffic from CL_TUN4
        fitting = [a for a in INNER_DESTINATIONS if a.version == 4]
        w = w.int_in_range(0, len(fitting) - 1, i % len(fitting)).int_in_range(0, 3, i % 3)
        w = w.sized(b"payload", 64).bool(True).int_in_range(0, len(PORTS) - 1, 3)  # source port
        if i % 3 == 2:  # echo: the identifier was the one port; sequence, reply flag
            w = w.int_in_range(0, 0xFFFF, 1).bool(False)
        else:
            w = w.bool(True).int_in_range(0, len(PORTS) - 1, i % 3)  # destination port
        if i % 3 == 1:  # TCP flags
            w = w.int_in_range(0, 0x3F, 0x02)
        seeds.append((time(w, 4).build(), [g.OP_PORTAL, g.OP_TUNNEL, g.OP_TIME]))
    for q in _spread(rec.dns_queries, 4):
        w = op(FdpWriter(), g.OP_DNS_QUERY).sized(q, 300).bool(False)
        w = w.int_in_range(0, len(INNER_SOURCES) - 1, 0).bool(False).int_in_range(0, 0xFFFF, 40000)
        seeds.append((op(w, g.OP_ANSWER).build(), [g.OP_DNS_QUERY, g.OP_ANSWER]))
    n = len(g.TEMPLATE.received)
    for i in range(max(0, n - 4), n):
        w = op(FdpWriter(), g.OP_RECORDED).int_in_range(0, n - 1, i).int_in_range(0, 3, 0)
        seeds.append((w.build(), [g.OP_RECORDED]))
    seeds.append((time(time(FdpWriter(), 7), 8).build(), [g.OP_TIME, g.OP_TIME]))
    out = []
    for data, want in seeds:
        got = g.execute(data).ops
        assert got == want, f"a gateway seed ran {got}, written for {want}"
        out.append(data)
    return out


def _dns_queries() -> list[bytes]:
    import dns.message

    out = []
    for name, rtype in (
        ("_sip._udp.app.example.com", "SRV"),
        ("app.example.com", "TXT"),
        ("x.corp.test", "A"),
    ):
        q = dns.message.make_query(name, rtype, id=0x4242)
        out.append(q.to_wire())
        q.use_edns(0, payload=1232)
        out.append(q.to_wire())
    return out


def _golden_frames() -> list[str]:
    """Firezone's own frames, as the portal tests pin them (``tests/unit/portal/spec_fixtures.py``)."""
    from gateway_core.errors import DecodeError
    from gateway_core.portal.phoenix import decode_frame
    from tests.unit.portal import spec_fixtures as fx

    out = []
    for name in sorted(vars(fx)):
        value = getattr(fx, name)
        if name.isupper() and isinstance(value, str):
            try:
                decode_frame(value)
            except DecodeError:
                continue  # not a frame (the resources list)
            out.append(value)
    return out


def corpora() -> dict[str, list[bytes]]:
    """Every target's seeds (see the module docstring)."""
    from gateway_core.policy.p2p_control import is_control_packet
    from gateway_core.portal.phoenix import decode_frame
    from gateway_core.wire import stun, turn

    rec = record_simulation()
    built = _built_packets()
    packets = _spread([*rec.inner, *rec.tun, *built])
    stun_msgs = [d for d in rec.datagrams if turn.classify(d) is turn.Kind.STUN]
    channel = [d for d in rec.datagrams if turn.classify(d) is turn.Kind.CHANNEL_DATA]
    wg = [d for d in rec.datagrams if turn.classify(d) is turn.Kind.WIREGUARD]
    for d in channel:
        try:
            wg.append(turn.decode_channel_data(d, exact=False)[1])
        except Exception:
            pass
    for d in rec.datagrams:
        try:
            msg = stun.decode(d)
            wg.append(turn.parse_data_indication(msg)[1])
        except Exception:
            pass
    frames = [*_golden_frames(), *rec.frames]
    messages = []
    for text in frames:
        f = decode_frame(text)
        messages.append(f"{f.event}\n{json.dumps(f.payload, separators=(',', ':'))}".encode())
    icmp_errors = [p for p in [*built, *rec.tun] if len(p) > 9 and p[9 if p[0] >> 4 == 4 else 6] in (1, 58)]
    return {
        "ip": packets,
        "icmp": _spread(icmp_errors),
        "rewrite": _spread(
            bytes((m,)) + b"\x13\x88" + p for m, p in zip(range(0, 64, 3), packets, strict=False)
        ),
        "stun": _spread(stun_msgs),
        "turn": _spread([*stun_msgs, *channel[:10]]),
        "channel_data": _spread(channel),
        "wg_messages": _spread(wg),
        "wg_tunnel": _wg_tunnel_seeds(),
        "phoenix": _spread(t.encode() for t in frames),
        "portal_messages": _spread(messages),
        "dns": _spread(
            [
                *(b"\x02" + q for q in [*rec.dns_queries, *_dns_queries()]),
                *(b"\x00" + q for q in _dns_queries()[:2]),
                *(b"\x06" + a for a in rec.dns_answers),
            ]
        ),
        "p2p_control": _spread([p for p in [*rec.inner, *built] if is_control_packet(p)]),
        "gateway": _gateway_seeds(rec),
    }


def write(directory: Path = CORPUS, log: Callable[[str], None] = print) -> None:
    from fuzz.targets import TARGETS

    logging.disable(logging.CRITICAL)
    try:
        seeds = corpora()
    finally:
        logging.disable(logging.NOTSET)
    assert set(seeds) == set(TARGETS), set(seeds) ^ set(TARGETS)
    for name, items in sorted(seeds.items()):
        d = directory / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            if _GENERATED.fullmatch(old.name):  # crash inputs (crash-*, ...) are kept
                old.unlink()
        for data in items:
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
        log(f"{name:16} {len(items):3} files {sum(len(x) for x in items):7} bytes")
