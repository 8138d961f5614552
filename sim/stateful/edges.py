"""Edge-case steps of the stateful harness: a client as an adversary of the gateway's parsers and tables.

Theory of operation. Each step kind here walks a fixed table of cases whose outcome the model states
without running the gateway's code:

- ``control_edge``: a client sends p2p control packets straight into its tunnel (as a misbehaving client
  could), drawn from :data:`CONTROL_CASES`: ``assigned_ips`` messages with names at and just beyond the
  DNS limits (a 63-byte label, a 253-byte name, a trailing dot, the root), bad escapes, non-ASCII, bad
  addresses, JSON nested 128 and 129 deep, duplicate and missing fields, trailing garbage, invalid UTF-8,
  events the gateway ignores, and packets that only look like control packets. Every ``assigned_ips``
  names a resource no client is ever granted (:data:`UNKNOWN_RESOURCE`), so a well-formed one is
  answered ``domain_status`` ``Inactive`` for the same name (without its trailing dot) and a malformed one
  is dropped without reply and counted (``drop.p2p_control_malformed``). Ignored events and look-alikes
  produce neither. The gateway's control handling is checked exactly: the multiset of replies and the
  counter's increase (in lossy worlds: no more than predicted).

- ``nat_collision``: a client sends one UDP datagram or TCP request to a proxy IP of each of two names
  of the DNS resource that resolve to the same address (``app.corp.test`` and ``v4only.corp.test``),
  from the same source port to the same port, at once: both flows map to one outside tuple, so the
  gateway's NAT must give the second another port. Each probe is checked against the model as any probe
  (the answer comes from the proxy IP it was sent to, with its own payload) and, when both reach the
  host, they arrive from two different source ports, one of them the client's. Each name's NAT is first
  set up by a probe of its own, so the pair tests the NAT table, not two set-ups with held packets. Found
  by this step (nightly at ``83a86eb``): after a client restart the new client gives the second name proxy
  IPs its previous incarnation gave another name, and the reference's ``setup_nat``
  (``rust/connlib/tunnel/src/gateway/client_on_gateway.rs``) then resets the client's whole NAT, including
  the first name's translation just confirmed; the gateway forgets only the re-numbered proxy IPs
  (decision 0178), so both names stay set up as the model says.

Besides the steps, :class:`DropReasonCheck` checks the counter a refused probe to the CIDR resource's
network goes to (see there).

A ``control_edge`` step sends :data:`CASES_PER_STEP` consecutive cases from index ``a``;
:func:`edge_programs` gives one program per kind that walks its whole table (run by ``make test`` and by
``make mutation``).
"""

from __future__ import annotations

import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from devpeers.client_types import (
    DnsAnswer,
    DomainStatusReceived,
    GoodbyeReceived,
    IcmpErrorReceived,
    TcpReceived,
    UdpReceived,
)
from gateway_core.addr import IPAddress
from sim.gateway_world import APP_V4
from sim.reference import Outcome, Prediction
from sim.stateful.expect import describe, matches
from sim.stateful.invariants import Invariants
from sim.stateful.probes import PROBE_SETTLE, Probe
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import Handler, InvariantError, Scene

if TYPE_CHECKING:
    from sim.stateful.traffic import Traffic

UNKNOWN_RESOURCE = uuid.UUID("5e1f7e57-0bad-4c0d-8e5e-00000000ed9e")
"""A resource id the portal never grants: the gateway answers ``Inactive`` to any well-formed request."""
CASES_PER_STEP = 4
"""Control packets one ``control_edge`` step sends at once (the table is walked in a few steps)."""
COLLIDING_NAMES = ("app.corp.test", "v4only.corp.test")
"""Two names of the DNS resource with the same IPv4 address."""
OPEN_PORTS = {"udp": 7, "tcp": 80}
"""The DNS resource host's echo and web ports."""

_IPS = '["100.96.0.1","100.96.0.2","100.96.0.3","100.96.0.4"]'
_R = f'"{UNKNOWN_RESOURCE}"'
_L63 = "a" * 63
_N253 = ".".join([_L63, _L63, _L63, "b" * 61])
"""253 bytes in presentation form: 255 on the wire (the limit)."""
_N254 = ".".join([_L63, _L63, _L63, "b" * 62])


@dataclass(frozen=True, slots=True)
class ControlCase:
    """One packet and what the gateway must do with it: ``reply`` (the domain of the ``Inactive``
    answer), ``malformed`` (dropped and counted), or ``silent`` (no answer, not counted as malformed)."""

    what: str
    packet: bytes
    verdict: str
    domain: str = ""


def control_packet(
    event: int,
    payload: bytes,
    *,
    plen: int | None = None,
    src: bytes = bytes(16),
    reserved: bytes = bytes(7),
    hop_limit: int = 0,
    trailer: bytes = b"",
) -> bytes:
    """A control packet built by hand (not with the code under test): IPv6, next header 0xFF, ``::`` to
    ``::``, the 8-byte control header (event, reserved) and ``payload``; ``plen`` overrides the IPv6
    payload length, ``trailer`` adds bytes beyond it."""
    body = bytes((event,)) + reserved + payload
    length = len(body) if plen is None else plen
    return struct.pack("!IHBB", 0x6000_0000, length, 0xFF, hop_limit) + src + bytes(16) + body + trailer


def _assigned(
    domain: str = '"edge.corp.test"', resource: str = _R, ips: str = _IPS, extra: str = ""
) -> bytes:
    return f'{{"resource":{resource},"domain":{domain},"proxy_ips":{ips}{extra}}}'.encode()


def _ok(what: str, domain_json: str, reply: str, **kw: str) -> ControlCase:
    return ControlCase(what, control_packet(0, _assigned(domain_json, **kw)), "reply", reply)


def _bad(what: str, payload: bytes) -> ControlCase:
    return ControlCase(what, control_packet(0, payload), "malformed")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


CONTROL_CASES: tuple[ControlCase, ...] = (
    _ok("a plain name", '"edge.corp.test"', "edge.corp.test"),
    _ok("a trailing dot", '"edge.corp.test."', "edge.corp.test"),
    _ok("the root", '"."', "."),
    _ok("one label", '"localhost"', "localhost"),
    _ok("one-byte labels", '"x.y.corp.test"', "x.y.corp.test"),
    _ok("a 63-byte label", f'"{_L63}.test"', f"{_L63}.test"),
    _bad("a 64-byte label", _assigned(f'"{_L63}a.test"')),
    _ok("a 253-byte name", f'"{_N253}"', _N253),
    _ok("a 253-byte name and a dot", f'"{_N253}."', _N253),
    _bad("a 254-byte name", _assigned(f'"{_N254}"')),
    _bad("an empty name", _assigned('""')),
    _bad("two dots", _assigned('".."')),
    _bad("an empty label", _assigned('"a..corp.test"')),
    _bad("a leading dot", _assigned('".corp.test"')),
    _bad("a non-ASCII name", _assigned('"\\u00e9.corp.test"')),
    _bad("an escape", _assigned('"a\\\\.corp.test"')),
    _bad("a number as name", _assigned("5")),
    _bad("null as name", _assigned("null")),
    _ok("fields in another order", '"order.corp.test"', "order.corp.test"),
    _ok("an unknown field", '"extra.corp.test"', "extra.corp.test", extra=',"x":{"y":[1,2]}'),
    _ok("JSON nested 128 deep", '"deep.corp.test"', "deep.corp.test", extra=f',"x":{_nested(127)}'),
    _bad("JSON nested 129 deep", _assigned(extra=f',"x":{_nested(128)}')),
    _bad("a duplicate field", _assigned(extra=',"domain":"edge.corp.test"')),
    _bad("trailing garbage", _assigned() + b"x"),
    _ok("trailing whitespace", '"space.corp.test"', "space.corp.test"),
    _bad("NaN", _assigned(extra=',"x":NaN')),
    _bad("Infinity", _assigned(extra=',"x":-Infinity')),
    _bad("a list, not an object", b"[" + _assigned() + b"]"),
    _bad("a string, not an object", b'"edge.corp.test"'),
    _bad("invalid UTF-8", _assigned().replace(b"edge", b"ed\xffe")),
    _bad("no domain", f'{{"resource":{_R},"proxy_ips":{_IPS}}}'.encode()),
    _bad("no resource", f'{{"domain":"edge.corp.test","proxy_ips":{_IPS}}}'.encode()),
    _bad("no proxy_ips", f'{{"resource":{_R},"domain":"edge.corp.test"}}'.encode()),
    _bad("a resource that is no UUID", _assigned(resource='"not-a-uuid"')),
    _bad("a number as resource", _assigned(resource="7")),
    _bad("proxy_ips a string", _assigned(ips='"100.96.0.1"')),
    _bad("a proxy IP with a zone", _assigned(ips='["fd00::1%eth0"]')),
    _bad("a proxy IP with a space", _assigned(ips='[" 100.96.0.1"]')),
    _bad("a proxy IP out of range", _assigned(ips='["100.96.0.256"]')),
    _bad("a non-ASCII proxy IP", _assigned(ips='["\\u0661.2.3.4"]')),
    _bad("a number as proxy IP", _assigned(ips="[1]")),
    _ok("IPv6 proxy IPs", '"six.corp.test"', "six.corp.test", ips='["fd00:2021:1111:8000::1"]'),
    _ok("no proxy IPs", '"none.corp.test"', "none.corp.test", ips="[]"),
    _bad("an empty payload", b""),
    _bad("invalid JSON", b"{"),
    ControlCase(
        "reserved bytes set",
        control_packet(0, _assigned('"rsv.corp.test"'), reserved=b"\x01" * 7),
        "reply",
        "rsv.corp.test",
    ),
    ControlCase(
        "a hop limit", control_packet(0, _assigned('"hop.corp.test"'), hop_limit=64), "reply", "hop.corp.test"
    ),
    ControlCase(
        "bytes beyond the payload length",
        control_packet(0, _assigned('"beyond.corp.test"'), trailer=b"garbage}"),
        "reply",
        "beyond.corp.test",
    ),
    ControlCase("domain_status from a client", control_packet(1, b'{"x":1}'), "silent"),
    ControlCase("an unknown event", control_packet(9, _assigned()), "silent"),
    ControlCase("a payload length below the header", control_packet(0, _assigned(), plen=7), "silent"),
    ControlCase("a payload length beyond the packet", control_packet(0, _assigned(), plen=4000), "silent"),
    ControlCase(
        "a source that is not ::", control_packet(0, _assigned(), src=b"\xfd" + bytes(14) + b"\x01"), "silent"
    ),
    ControlCase("a packet shorter than a header", control_packet(0, b"")[:44], "silent"),
)
"""The ``control_edge`` table (see the module docstring); whitespace, order and the 128-deep nesting are
accepted as serde_json accepts them; the reference's decoder (``rust/connlib/tunnel/src/p2p_control.rs``)
rejects the others."""


def _padded(domain: str, plen: int) -> bytes:
    """A well-formed ``assigned_ips`` for ``domain`` padded (an unknown field) to an IPv6 payload length of
    exactly ``plen`` bytes (8 of them the control header)."""
    bare = _assigned(f'"{domain}"', extra=',"pad":""')
    return _assigned(f'"{domain}"', extra=',"pad":"' + "p" * (plen - 8 - len(bare)) + '"')


def _reshaped(packet: bytes, at: int, value: int) -> bytes:
    return packet[:at] + bytes((value,)) + packet[at + 1 :]


CONTROL_CASES_EDGE_ONLY: tuple[ControlCase, ...] = (
    # The payload length's high byte counts: at 256-263 its low byte alone is below the header's 8.
    ControlCase(
        "a payload length of 258",
        control_packet(0, _padded("p258.corp.test", 258)),
        "reply",
        "p258.corp.test",
    ),
    # Bytes beyond a payload length over 255 are ignored too (WireGuard's decapsulation already cuts a
    # packet at its IP length, so the gateway's parser never sees them: the reply is what counts).
    ControlCase(
        "a payload length of 300 and bytes beyond it",
        control_packet(0, _padded("p300.corp.test", 300), trailer=b"}garbage"),
        "reply",
        "p300.corp.test",
    ),
    ControlCase(
        "a payload length of 513 and bytes beyond it",
        control_packet(0, _padded("p513.corp.test", 513), trailer=b"\xff" * 9),
        "reply",
        "p513.corp.test",
    ),
    # A payload length one byte beyond the packet: not a control packet (a truncated one).
    ControlCase(
        "a payload length one beyond the packet",
        control_packet(0, _assigned(), plen=len(_assigned()) + 9),
        "silent",
    ),
    # Only IPv6 with next header 0xFF is a control packet, whatever else the bytes look like.
    ControlCase(
        "IPv4 shaped like a control packet", _reshaped(control_packet(0, _assigned()), 0, 0x45), "silent"
    ),
    ControlCase("IPv6 with next header 17", _reshaped(control_packet(0, _assigned()), 6, 17), "silent"),
    ControlCase("IPv6 with next header 0xFE", _reshaped(control_packet(0, _assigned()), 6, 0xFE), "silent"),
)
"""Cases only :func:`edge_programs`' ``control_edge`` program sends (a step with ``b`` =
:data:`WHOLE_TABLE`): appended after the drawn table, so that drawn programs send what they always sent.
The gateway must answer the first three (the payload length read from both bytes; bytes beyond it ignored)
and take the rest for no control packet (not consumed: its spoofed source ``::`` drops it)."""
WHOLE_TABLE = 64
"""``b`` of a ``control_edge`` step that walks :data:`CONTROL_CASES` + :data:`CONTROL_CASES_EDGE_ONLY`; the
drawn ``b`` stays below it (0-63)."""


class Edges:
    """The edge-case steps (see the module docstring)."""

    def __init__(self, scene: Scene, invariants: Invariants, traffic: Traffic) -> None:
        self.s = scene
        self.inv = invariants
        self.traffic = traffic

    def handlers(self) -> dict[StepKind, Handler]:
        return {StepKind.CONTROL_EDGE: self._do_control_edge, StepKind.NAT_COLLISION: self._do_nat_collision}

    def _do_nat_collision(self, step: Step, c: int) -> None:
        s = self.s
        if (c, "app") not in s.model.routes:
            s.coverage["nat_collision_skipped"] += 1  # the client answers NXDOMAIN: no proxy IP
            return
        cl = s.client(c)
        proto = ("udp", "tcp")[step.b % 2]
        port = OPEN_PORTS[proto]
        probes: list[tuple[str, IPAddress, Prediction, bytes]] = []
        for i, name in enumerate(COLLIDING_NAMES):
            before = len(cl.received)
            s.gw.drive(c, lambda cc, t, n=name: cc.query_dns(t, n, "A"))
            answers = [r for r in cl.received[before:] if isinstance(r, DnsAnswer)]
            if len(answers) != 1 or answers[0].rcode != "NOERROR" or len(answers[0].records) != 4:
                raise InvariantError(f"local A answer for {name}: {answers}")
            dst = cl.proxy_ips(name)[(step.a + i) % 4]
            # Each name's NAT is set up on its own first (one probe, checked as any): the colliding pair
            # tests the NAT table, not two set-ups racing (module docstring).
            s.model.nat_query(c, name)
            now = s.world.now
            warm = s.model.predict_packet(c, dst, "udp", 7, now, name)
            s.model.nat_probe(c, name)
            self.traffic.run(Probe(c, "udp", dst, 7, warm, "app"))
            s.model.nat_settle(c, name, now)
            probes.append(
                (name, dst, Prediction.exact(Outcome.NOTHING, 0), f"nat-{s.steps_done}-{i}".encode())
            )
        # A port the app has seen as a source may still be an outside port of a live mapping: the NAT
        # gives a flow whose client port is taken the next free one (the second flow of an earlier
        # collision, a warm-up probe after it, ...), so the colliding pair takes a port never seen there.
        seen = self._app_ports()
        sport = self.traffic.prober.next_sport(c)
        while sport in seen:
            sport = self.traffic.prober.next_sport(c)
        for i, (name, dst, _, payload) in enumerate(probes):
            pred = s.model.predict_packet(c, dst, proto, port, s.world.now, name)
            s.model.nat_probe(c, name)
            probes[i] = (name, dst, pred, payload)
        now = s.world.now
        mark = self.inv.mark()
        for _, dst, _, payload in probes:
            if proto == "udp":
                s.gw.drive(c, lambda cc, t, d=dst, pl=payload: cc.send_udp(t, d, port, pl, sport=sport))
            else:
                s.gw.drive(
                    c, lambda cc, t, d=dst, pl=payload: cc.send_tcp_request(t, d, port, pl, sport=sport)
                )
        s.world.run_for(PROBE_SETTLE)
        for name, _, _, _ in probes:
            s.model.nat_settle(c, name, now)
        # In lossy worlds a warm-up probe's packet or answer may come late, in this window (its client held
        # it while a lost handshake was retried): it is not part of the collision.
        prober = self.traffic.prober
        got = prober.without_late_records(self.inv.since(mark))
        self.inv.nothing_for_others(c, got)
        mine = [r for r in got[c] if not isinstance(r, DnsAnswer | DomainStatusReceived | GoodbyeReceived)]
        arrivals = prober.without_late_arrivals(self.inv.arrivals_since(mark))
        at_app = arrivals.get("app", [])
        for host, new in arrivals.items():
            if host != "app" and new:
                raise InvariantError(f"{host} received packets during a NAT collision: {new}")
        lossy = s.model.lossy
        claimed = 0
        most = least = 0
        for name, dst, pred, payload in probes:
            recs = [r for r in mine if _answers(r, dst, sport)]
            claimed += len(recs)
            fits = [
                a for a in pred.alternatives if matches(a.outcome, proto, dst, 0, sport, payload, recs, lossy)
            ]
            if not fits:
                want = " or ".join(a.outcome.value for a in pred.alternatives)
                raise InvariantError(
                    f"client-{c} {proto} to {dst}:{port} ({name}) from port {sport} beside a colliding flow: "
                    f"expected {want}, got {describe(recs)}"
                )
            most += max(a.arrivals for a in fits)
            least += 0 if lossy else min(a.arrivals for a in fits)
        if claimed != len(mine):
            raise InvariantError(f"client-{c} received what no probe of a NAT collision explains: {mine}")
        flows = sum(1 for _, _, pred, _ in probes if max(a.arrivals for a in pred.alternatives))
        sports = {a.sport for a in at_app}
        ok = least <= len(at_app) <= most and all(a.dst == APP_V4 for a in at_app) and len(sports) <= flows
        # The NAT keeps the client's source port for the first flow (nat_table.rs: the inside port if it
        # is free) and picks another only for the one that collides.
        kept = not sports or sport in sports
        if not ok or not kept or (len(at_app) == most == least and len(sports) != flows):
            raise InvariantError(
                f"client-{c} colliding {proto} flows from port {sport}: expected {least}-{most} arrivals at "
                f"{APP_V4} from {flows} distinct ports, one of them {sport}, got {at_app}"
            )
        if len(sports) == 2:
            s.coverage["event:nat_collision"] += 1

    def _app_ports(self) -> set[int]:
        app = self.inv.servers().get("app")
        return set() if app is None else {a.sport for a in app.received}

    def _do_control_edge(self, step: Step, c: int) -> None:
        s = self.s
        cl = s.client(c)
        gid = s.gw.gateway_id()
        if not (cl.is_connected(gid) and s.model.has_peer(c, s.world.now)):
            s.coverage["control_edge_skipped"] += 1  # nothing would reach the gateway
            return
        table = CONTROL_CASES + CONTROL_CASES_EDGE_ONLY if step.b == WHOLE_TABLE else CONTROL_CASES
        cases = [table[(step.a * CASES_PER_STEP + i) % len(table)] for i in range(CASES_PER_STEP)]
        key = "drop.p2p_control_malformed"
        before = s.gw.gateway.stats().get(key, 0)
        start = len(cl.received)
        for case in cases:
            s.gw.drive(c, lambda cc, t, p=case.packet: cc.send_raw(t, gid, p))
        s.world.run_for(PROBE_SETTLE)
        got = Counter(
            r.domain
            for r in cl.received[start:]
            if isinstance(r, DomainStatusReceived) and r.resource == UNKNOWN_RESOURCE
        )
        bad = [
            r
            for r in cl.received[start:]
            if isinstance(r, DomainStatusReceived)
            and r.resource == UNKNOWN_RESOURCE
            and r.status != "Inactive"
        ]
        want = Counter(case.domain for case in cases if case.verdict == "reply")
        malformed = sum(case.verdict == "malformed" for case in cases)
        counted = s.gw.gateway.stats().get(key, 0) - before
        s.coverage["event:control_edge"] += len(cases)
        lossy = s.model.lossy
        ok_replies = (got <= want) if lossy else (got == want)
        ok_count = (counted <= malformed) if lossy else (counted == malformed)
        if bad or not ok_replies or not ok_count:
            raise InvariantError(
                f"client-{c} control packets {[x.what for x in cases]}: expected Inactive for {dict(want)} "
                f"and {malformed} counted malformed, got {dict(got)} {bad} and {counted}"
            )
        if s.gw.client_ids[c] not in s.gw.gateway.peers.clients:  # no case is a goodbye
            raise InvariantError(
                f"client-{c} control packets {[x.what for x in cases]}: the gateway forgot it"
            )


DROP_KEYS = ("drop.filtered", "drop.not_authorized")


class DropReasonCheck:
    """Why the gateway refused a probe, not only that it did: a packet the model predicts ``prohibited``
    towards the CIDR resource's network counts ``drop.filtered`` when a resource the gateway holds for the
    client covers the destination (its filters refuse the packet) and ``drop.not_authorized`` when none
    does (expired, revoked, moved, never granted). Checked for single probes in worlds without loss
    (:meth:`Traffic.run <sim.stateful.traffic.Traffic.run>`); a train or a lossy world is not counted."""

    def __init__(self, scene: Scene) -> None:
        self.s = scene

    def before(self, p: object) -> dict[str, int] | None:
        from sim.stateful.probes import Probe

        s, m = self.s, self.s.model
        if not isinstance(p, Probe) or p.raw or m.lossy or len(p.pred.alternatives) != 1:
            return None
        if p.pred.alternatives[0].outcome.value != "prohibited" or m.client_route(p.c, p.dst) != "web":
            return None
        stats = s.gw.gateway.stats()
        return {k: stats.get(k, 0) for k in DROP_KEYS}

    def after(self, p: object, before: dict[str, int] | None) -> None:
        from sim.stateful.probes import Probe

        if before is None or not isinstance(p, Probe):
            return
        s, m = self.s, self.s.model
        net = m.web_network()
        now = s.world.now
        covered = (
            m.live(p.c, "web", now) and "web" not in m.moved and p.dst.version == net.version and p.dst in net
        ) or (m.live(p.c, "inet", now) and "inet" not in m.moved)
        want = "drop.filtered" if covered else "drop.not_authorized"
        stats = s.gw.gateway.stats()
        got = {k: stats.get(k, 0) - before[k] for k in DROP_KEYS}
        if got != {k: int(k == want) for k in DROP_KEYS}:
            raise InvariantError(f"{p.what}: refused, expected one {want}, got {got}")
        s.coverage[f"event:{want.removeprefix('drop.')}_counted"] += 1


def _answers(r: object, dst: IPAddress, sport: int) -> bool:
    """Whether client record ``r`` answers a probe to ``dst`` from ``sport``."""
    if isinstance(r, UdpReceived | TcpReceived):
        return r.src == dst and r.dport == sport
    if isinstance(r, IcmpErrorReceived):
        return r.inner_dst == dst and r.inner_sport == sport
    return False


FILTER_SETS: tuple[tuple[int, int], ...] = (
    (21, 58),  # udp/81, udp/79: a gap of one port
    (1, 0),  # udp/7-9, udp/9-1009, udp/53-54: overlapping and contained ranges
    (1, 56),  # tcp/7-8, tcp/443, tcp/9-19: adjacent ranges
    (25, 20),  # tcp/81-83, udp/9-109, tcp/79: a gap of one TCP port
    (1, 12),  # no filter: permit all
    (1, 2),  # udp/65535: the last port
    (1, 5),  # tcp/80-81, icmp
    (7, 39),  # udp/65535, tcp/65535, icmp
    (0, 0),  # back to the world's filters
)
"""``update_filters`` arguments whose drawn filter sets (:func:`sim.stateful.access.random_filters`) have
the shapes a filter table gets wrong: each is followed by probes at its edges."""


def edge_programs() -> dict[str, Program]:
    """One program per edge kind that walks its whole table: one client holding the CIDR resource (so it
    has a connection), then the kind's steps (``flow_edges``: see :mod:`sim.stateful.flow_edges`;
    ``nat_edges``: :mod:`sim.stateful.nat_edges`)."""
    from sim.stateful.expiry_edges import expiry_program
    from sim.stateful.flow_edges import flow_program
    from sim.stateful.flowlog_edges import flowlog_program
    from sim.stateful.nat_edge_cases import nat_program
    from sim.stateful.nested_edges import nested_program

    grant = [Step(StepKind.GRANT, 0, 0)]
    n = -(-(len(CONTROL_CASES) + len(CONTROL_CASES_EDGE_ONLY)) // CASES_PER_STEP)
    return {
        "control_edge": Program(
            WorldSpec(5, 1, 1), grant + [Step(StepKind.CONTROL_EDGE, 0, i, WHOLE_TABLE) for i in range(n)]
        ),
        "filter_edges": Program(
            WorldSpec(7, 1, 1),
            grant
            + [
                s
                for a, b in FILTER_SETS
                for s in [Step(StepKind.UPDATE_FILTERS, 0, a, b)]
                + [Step(StepKind.TCP_CIDR, 0, 0, i) for i in range(4)]
                + [Step(StepKind.UDP_CIDR, 0, 0, i) for i in range(4)]
            ],
        ),
        "nat_collision": Program(
            WorldSpec(6, 1, 1),
            grant + [Step(StepKind.GRANT, 0, 1)] + [Step(StepKind.NAT_COLLISION, 0, i, i) for i in range(4)],
        ),
        "flow_edges": flow_program(),
        "nat_edges": nat_program(),
        "expiry_edges": expiry_program(),
        "nested_cidr": nested_program(),
        "flow_logs": flowlog_program(),
        # Packets to the other client's tunnel address (each family), from a client holding the Internet
        # resource (whose filters would let them through: only the gateway's client-to-client rule refuses
        # them, decision 0054) and from one holding the CIDR resource.
        "client_to_client": Program(
            WorldSpec(11, 2, 1),
            [Step(StepKind.GRANT, 0, 0), Step(StepKind.GRANT, 0, 2), Step(StepKind.GRANT, 1, 0)]
            + [Step(StepKind.PROBE_FOREIGN, c, 2, v6) for c in (0, 1) for v6 in (0, 1)],
        ),
    }
