"""The cases of the ``nat_edge`` step (:mod:`sim.stateful.nat_edges`, whose docstring states the model
they predict from) and the edge program that walks them."""

from __future__ import annotations

from collections.abc import Callable

from gateway_core.addr import IPAddress
from gateway_core.clock import Instant
from gateway_core.policy.client import FORWARD
from gateway_core.wire.ip import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_PSH,
    TCP_RST,
    build_icmp_echo,
    build_tcp_packet,
    build_udp_packet,
)
from sim.gateway_world import APP_V4, APP_V6, WEB_V4
from sim.stateful.nat_edges import (
    APP,
    BOUND,
    ECHO,
    MARGIN,
    TCP_TTL,
    TOMBSTONE_TTL,
    UDP_TTL,
    V4ONLY,
    WEB,
    Expect,
    NatEdges,
)
from sim.stateful.program import Program, Step, StepKind, WorldSpec
from sim.stateful.scene import InvariantError


def _icmp(version: int) -> int:
    return PROTO_ICMPV6 if version == 6 else PROTO_ICMP


def _real(version: int) -> IPAddress:
    return APP_V6 if version == 6 else APP_V4


ACK_DATA = TCP_ACK | TCP_PSH


def case_echo_identifiers(e: NatEdges, c: int, v: int) -> None:
    """Echo identifiers kept through the NAT (bytes of the identifier, the value 0); two requests of one
    session in flight at once; a duplicate reply; an echo and a UDP datagram without payload; an ICMP
    error quoting a live echo session (re-addressed to the client, from the proxy IP)."""
    p = e.proxies(c, APP, v)[0]
    real, tun, icmp = _real(v), e.tun(c, v), _icmp(v)
    for ident, seq in ((0x1234, 0x5601), (0, 0x5602)):
        e.exchange(
            f"echo id {ident:#x} to {p}",
            Expect([(icmp, tun, real, ident, seq)], {c: [("echo", p, ident, seq)]}),
            {c: [e.echo(c, p, ident, seq)]},
        )
    e.exchange(
        "two echo requests of one session at once",
        Expect(
            [(icmp, tun, real, 0x1234, 0x5603), (icmp, tun, real, 0x1234, 0x5604)],
            {c: [("echo", p, 0x1234, 0x5603), ("echo", p, 0x1234, 0x5604)]},
        ),
        {c: [e.echo(c, p, 0x1234, 0x5603), e.echo(c, p, 0x1234, 0x5604)]},
    )
    e.exchange(
        "a duplicate echo reply",
        Expect([], {c: [("echo", p, 0x1234, 0x5604)]}),
        app=[e.echo_reply(c, real, 0x1234, 0x5604)],
    )
    e.exchange(
        "an echo request and a UDP datagram without payload (8-byte headers)",
        Expect(
            [(icmp, tun, real, 0x1234, 0x5606), (PROTO_UDP, tun, real, 30000, ECHO)],
            {c: [("echo", p, 0x1234, 0x5606), ("udp", p, ECHO, 30000, b"")]},
        ),
        {c: [e.echo(c, p, 0x1234, 0x5606, b""), e.udp(c, p, 30000, b"")]},
    )
    quoted = build_icmp_echo(tun, real, 0x1234, 0x5605, b"nat-edge")
    e.exchange(
        "an ICMP error quoting a live echo session",
        Expect([], {c: [("icmp", p, 3 if v == 4 else 1, 1 if v == 4 else 3, p, 0x1234)]}),
        app=[e.error_from_app(quoted)],
    )


def case_echo_collisions(e: NatEdges, c: int, v: int) -> None:
    """One echo identifier to proxy IPs of two names with the same real address: the first session keeps
    it, the next take the next free values; another client's identical identifier is its own."""
    pa = e.proxies(c, APP, 4)
    pb = e.proxies(c, V4ONLY, 4)
    other = (c + 1) % e.s.spec.clients
    tun = e.tun(c, 4)
    x = 0x2345
    for i, dst in enumerate((pa[0], pb[0], pa[1])):
        e.exchange(
            f"echo id {x:#x} to {dst}, colliding {i} times",
            Expect([(PROTO_ICMP, tun, APP_V4, x + i, 0x100 + i)], {c: [("echo", dst, x, 0x100 + i)]}),
            {c: [e.echo(c, dst, x, 0x100 + i)]},
        )
    if other != c and (other, "app") in e.s.model.routes:
        q = e.proxies(other, APP, 4)[0]
        e.exchange(
            f"client-{other}: echo id {x:#x} to {q}",
            Expect([(PROTO_ICMP, e.tun(other, 4), APP_V4, x, 0x110)], {other: [("echo", q, x, 0x110)]}),
            {other: [e.echo(other, q, x, 0x110)]},
        )


def case_wrap(e: NatEdges, c: int, v: int) -> None:
    """Outside values at the top of the range: 65535 kept, then wrapped to 1, 2; 65534 kept, then every
    value above and 1, 2 taken: 3. The same for a UDP port (its own key space)."""
    pa = e.proxies(c, APP, 4)
    pb = e.proxies(c, V4ONLY, 4)
    tun = e.tun(c, 4)
    plan = (
        (pa[2], 65535, 65535),
        (pb[1], 65535, 1),
        (pa[3], 65535, 2),
        (pb[2], 65534, 65534),
        (pb[3], 65534, 3),
    )
    for i, (dst, ident, out) in enumerate(plan):
        e.exchange(
            f"echo id {ident} to {dst}: outside {out}",
            Expect([(PROTO_ICMP, tun, APP_V4, out, 0x200 + i)], {c: [("echo", dst, ident, 0x200 + i)]}),
            {c: [e.echo(c, dst, ident, 0x200 + i)]},
        )
    for dst, out in ((pa[2], 65535), (pb[1], 1)):
        e.exchange(
            f"UDP from port 65535 to {dst}: outside {out}",
            Expect([(PROTO_UDP, tun, APP_V4, out, ECHO)], {c: [("udp", dst, ECHO, 65535, b"wrap")]}),
            {c: [e.udp(c, dst, 65535, b"wrap")]},
        )


def case_rst_from_client(e: NatEdges, c: int, v: int) -> None:
    """The client resets a TCP session: the reset passes, later packets of the resource for it are dropped
    as expired (a segment, an ICMP error quoting it, a reset); the client's next segment opens it again
    on the same port."""
    p = e.proxies(c, APP, v)[1]
    real, tun = _real(v), e.tun(c, v)
    sport = e.tcp_flow(c, p)
    e.exchange(
        "the client's reset",
        Expect([(PROTO_TCP, tun, real, sport, WEB)]),
        {c: [e.tcp(c, p, sport, TCP_RST | TCP_ACK)]},
    )
    for what, pkt in (
        ("a late segment", e.tcp_from_app(c, real, sport, ACK_DATA, b"late")),
        (
            "an ICMP error quoting it",
            e.error_from_app(build_tcp_packet(tun, real, sport, WEB, flags=TCP_ACK)),
        ),
        ("a late reset", e.tcp_from_app(c, real, sport, TCP_RST | TCP_ACK)),
    ):
        e.exchange(f"{what} after the client's reset", Expect(drops={"nat_session_expired": 1}), app=[pkt])
    e.exchange(
        "the client's next segment of the flow",
        Expect([(PROTO_TCP, tun, real, sport, WEB)], {c: [("tcp", p, WEB, sport, TCP_ACK, b"re:again")]}),
        {c: [e.tcp(c, p, sport, ACK_DATA, b"again")]},
    )


def case_rst_from_resource(e: NatEdges, c: int, v: int) -> None:
    """The resource resets a TCP session: the reset reaches the client translated, a later segment of the
    resource is dropped as expired, the client's next segment opens the session again on its port. Then
    segments of a live session (whose window has the reset bit's value in its high byte) and a UDP flow
    whose payload has that bit where a TCP header's flags would be: nothing ends them."""
    p = e.proxies(c, APP, v)[2]
    real, tun = _real(v), e.tun(c, v)
    sport = e.tcp_flow(c, p)
    e.exchange(
        "the resource's reset",
        Expect([], {c: [("tcp", p, WEB, sport, TCP_RST | TCP_ACK, b"")]}),
        app=[e.tcp_from_app(c, real, sport, TCP_RST | TCP_ACK)],
    )
    e.exchange(
        "a late segment after the resource's reset",
        Expect(drops={"nat_session_expired": 1}),
        app=[e.tcp_from_app(c, real, sport, ACK_DATA, b"late")],
    )
    e.exchange(
        "the client's next segment of the flow",
        Expect([(PROTO_TCP, tun, real, sport, WEB)], {c: [("tcp", p, WEB, sport, TCP_ACK, b"re:more")]}),
        {c: [e.tcp(c, p, sport, ACK_DATA, b"more")]},
    )
    e.exchange(
        "two more segments of the resource on the live session",
        Expect(
            [], {c: [("tcp", p, WEB, sport, ACK_DATA, b"push1"), ("tcp", p, WEB, sport, ACK_DATA, b"push2")]}
        ),
        app=[
            e.tcp_from_app(c, real, sport, ACK_DATA, b"push1"),
            e.tcp_from_app(c, real, sport, ACK_DATA, b"push2"),
        ],
    )
    flag = b"nat-e\x04dge"  # byte 13 of the UDP header onwards: 0x04 where TCP keeps RST
    for i in range(2):
        e.exchange(
            f"UDP datagram {i} whose payload looks like a reset",
            Expect([(PROTO_UDP, tun, real, 31000, ECHO)], {c: [("udp", p, ECHO, 31000, flag)]}),
            {c: [e.udp(c, p, 31000, flag)]},
        )


def case_expiry(e: NatEdges, c: int, v: int) -> None:
    """Sessions that time out: a UDP session refreshed by a packet of the client (answered by an ICMP
    error, which refreshes nothing) and then by the resource's packets alone (decision 0042),
    then idle past 120 s (expired: the resource's packet and an ICMP error quoting the session's echo
    twin are dropped as expired), then past the tombstone's 120 s (refused by the filters); the client's
    next datagram opens it again. A TCP session lives 2 h: alive at 130 s, expired after 2 h idle, while
    one refreshed at 130 s is still alive."""
    p = e.proxies(c, APP, v)[3]
    real, tun, icmp = _real(v), e.tun(c, v), _icmp(v)
    sport, ident = 32000, 0x3456
    e.exchange(
        "a UDP flow",
        Expect([(PROTO_UDP, tun, real, sport, ECHO)], {c: [("udp", p, ECHO, sport, b"go")]}),
        {c: [e.udp(c, p, sport, b"go")]},
    )
    e.run(UDP_TTL // 2)
    closed = build_udp_packet(tun, p, sport, 9, b"closed")
    e.exchange(
        "the client's datagram to a closed port of the session (an ICMP error answers)",
        Expect(
            [(PROTO_UDP, tun, real, sport, 9)],
            {c: [("icmp", p, 3 if v == 4 else 1, 3 if v == 4 else 4, p, sport)]},
        ),
        {c: [closed]},
    )
    e.run(UDP_TTL // 2 + MARGIN)  # past 120 s after the resource's echo, 2 s after the client's packet
    e.exchange(
        "the resource pushes",
        Expect([], {c: [("udp", p, ECHO, sport, b"push1")]}),
        app=[e.udp_from_app(c, real, sport, b"push1")],
    )
    e.run(UDP_TTL - UDP_TTL // 2)  # past 120 s after the client's last packet
    e.exchange(
        "the resource pushes again; an echo session starts",
        Expect(
            [(icmp, tun, real, ident, 1)], {c: [("udp", p, ECHO, sport, b"push2"), ("echo", p, ident, 1)]}
        ),
        {c: [e.echo(c, p, ident, 1)]},
        app=[e.udp_from_app(c, real, sport, b"push2")],
    )
    e.run(UDP_TTL + MARGIN)
    quoted = build_icmp_echo(tun, real, ident, 2, b"nat-edge")
    e.exchange(
        "the resource's datagram and an ICMP error quoting the echo, both sessions timed out",
        Expect(drops={"nat_session_expired": 2}),
        app=[e.udp_from_app(c, real, sport, b"late"), e.error_from_app(quoted)],
    )
    e.run(TOMBSTONE_TTL + MARGIN)
    e.exchange(
        "the resource's datagram after the tombstone",
        Expect(drops={"not_authorized": 1}),
        app=[e.udp_from_app(c, real, sport, b"later")],
    )
    e.exchange(
        "the client's next datagram",
        Expect([(PROTO_UDP, tun, real, sport, ECHO)], {c: [("udp", p, ECHO, sport, b"again")]}),
        {c: [e.udp(c, p, sport, b"again")]},
    )
    if v == 6:
        return  # (2 h of virtual time once is enough)
    kept = e.tcp_flow(c, p)
    idle = e.tcp_flow(c, p)
    e.run(UDP_TTL + MARGIN)
    e.exchange(
        "a TCP session past 120 s",
        Expect([], {c: [("tcp", p, WEB, kept, ACK_DATA, b"keep")]}),
        app=[e.tcp_from_app(c, real, kept, ACK_DATA, b"keep")],
    )
    e.run(TCP_TTL - UDP_TTL)
    e.exchange(
        "TCP sessions 2 h after their last packets and 2 h minus 120 s",
        Expect([], {c: [("tcp", p, WEB, kept, ACK_DATA, b"alive")]}, {"nat_session_expired": 1}),
        app=[
            e.tcp_from_app(c, real, idle, ACK_DATA, b"gone"),
            e.tcp_from_app(c, real, kept, ACK_DATA, b"alive"),
        ],
    )


def case_renumber_before(e: NatEdges, c: int, v: int) -> None:
    """Before a client restart: flows open to the first proxy IPs of ``app.corp.test`` (a UDP flow, and a
    TCP flow reset by the client and opened again); a repeated set-up of the same name keeps them."""
    pa = e.proxies(c, APP, 4)
    e.proxies(c, V4ONLY, 4)
    tun = e.tun(c, 4)
    udp, tcp = 33000, 33001
    e.exchange(
        "flows before the restart",
        Expect(
            [(PROTO_UDP, tun, APP_V4, udp, ECHO), (PROTO_TCP, tun, APP_V4, tcp, WEB)],
            {c: [("udp", pa[0], ECHO, udp, b"open"), ("tcp", pa[1], WEB, tcp, TCP_ACK, b"re:open")]},
        ),
        {c: [e.udp(c, pa[0], udp, b"open"), e.tcp(c, pa[1], tcp, ACK_DATA, b"open")]},
    )
    e.exchange(
        "the client resets the TCP flow",
        Expect([(PROTO_TCP, tun, APP_V4, tcp, WEB)]),
        {c: [e.tcp(c, pa[1], tcp, TCP_RST | TCP_ACK)]},
    )
    e.exchange(
        "and opens it again",
        Expect([(PROTO_TCP, tun, APP_V4, tcp, WEB)], {c: [("tcp", pa[1], WEB, tcp, TCP_ACK, b"re:reopen")]}),
        {c: [e.tcp(c, pa[1], tcp, ACK_DATA, b"reopen")]},
    )
    e.setup_again(c, APP)  # the client sets the same name up again
    e.exchange(
        "the resource answers after the same name's set-up again",
        Expect([], {c: [("udp", pa[0], ECHO, udp, b"still")]}),
        app=[e.udp_from_app(c, APP_V4, udp, b"still")],
    )
    e._kept = {"udp": udp, "tcp": tcp}


def case_renumber_after(e: NatEdges, c: int, v: int) -> None:
    """After the client restarted: it resolves ``v4only.corp.test`` first, which now gets the proxy IPs
    ``app.corp.test`` had; the gateway forgets their translations and sessions, without tombstones
    (decision 0178): the resource's late packets of the old flows are refused by the filters (the TCP
    flow's tombstone of its earlier reset went when it was opened again), and the same ports to the
    re-numbered proxy IPs open new sessions (outside ports kept). ``app.corp.test`` then takes the proxy
    IPs ``v4only.corp.test`` had: its UDP flow from the same port collides with the one just opened and
    goes out from the next port."""
    if not e._kept:
        e.s.coverage["nat_edge_skipped"] += 1
        return
    e._ready = {k for k in e._ready if k[0] != c}
    pb = e.proxies(c, V4ONLY, 4)
    tun = e.tun(c, 4)
    udp, tcp = e._kept["udp"], e._kept["tcp"]
    e.exchange(
        "the resource's late packets of the forgotten sessions",
        Expect(drops={"not_authorized": 2}),
        app=[e.udp_from_app(c, APP_V4, udp, b"stale"), e.tcp_from_app(c, APP_V4, tcp, ACK_DATA, b"stale")],
    )
    e.exchange(
        "the same ports to the re-numbered proxy IPs",
        Expect(
            [(PROTO_UDP, tun, APP_V4, udp, ECHO), (PROTO_TCP, tun, APP_V4, tcp, WEB)],
            {c: [("udp", pb[0], ECHO, udp, b"new"), ("tcp", pb[1], WEB, tcp, TCP_ACK, b"re:new")]},
        ),
        {c: [e.udp(c, pb[0], udp, b"new"), e.tcp(c, pb[1], tcp, ACK_DATA, b"new")]},
    )
    pa = e.proxies(c, APP, 4)
    e.exchange(
        "the other name on the proxy IPs it takes over",
        Expect([(PROTO_UDP, tun, APP_V4, udp + 1, ECHO)], {c: [("udp", pa[0], ECHO, udp, b"app")]}),
        {c: [e.udp(c, pa[0], udp, b"app")]},
    )
    e._kept = {}


def case_reresolved(e: NatEdges, c: int, v: int) -> None:
    """A name whose address changes (the gateway's resolver now answers the ``web`` host's address): on
    the client's next set-up, the proxy IP with open sessions keeps its real address for new flows too,
    the others take the new one (``setup_nat`` in Firezone's ``client_on_gateway.rs``); once that proxy
    IP's sessions have timed out, the next set-up moves it as well."""
    s = e.s
    pa = e.proxies(c, APP, 4)
    tun = e.tun(c, 4)
    resolver = s.gw.gateway_host.resolver
    if resolver is None or not s.model.live(c, "web", s.world.now):
        s.coverage["nat_edge_skipped"] += 1  # the web host may only be reached holding its resource
        return
    old = resolver.table[APP]
    resolver.table[APP] = (WEB_V4, APP_V6)
    try:
        e.exchange(
            "a flow on the first proxy IP, which keeps it open",
            Expect([(PROTO_UDP, tun, APP_V4, 34000, ECHO)], {c: [("udp", pa[0], ECHO, 34000, b"open")]}),
            {c: [e.udp(c, pa[0], 34000, b"open")]},
        )
        e.setup_again(c, APP)
        e.exchange(
            "after the set-up with the new address",
            Expect(
                [(PROTO_UDP, tun, APP_V4, 34001, ECHO)],
                {c: [("udp", pa[0], ECHO, 34001, b"kept"), ("udp", pa[1], ECHO, 34002, b"moved")]},
                web=[(PROTO_UDP, tun, WEB_V4, 34002, ECHO)],
            ),
            {c: [e.udp(c, pa[0], 34001, b"kept"), e.udp(c, pa[1], 34002, b"moved")]},
        )
        e.run(UDP_TTL + MARGIN)
        e.setup_again(c, APP)
        e.exchange(
            "after the first proxy IP's sessions timed out and another set-up",
            Expect(
                [], {c: [("udp", pa[0], ECHO, 34003, b"now")]}, web=[(PROTO_UDP, tun, WEB_V4, 34003, ECHO)]
            ),
            {c: [e.udp(c, pa[0], 34003, b"now")]},
        )
    finally:
        resolver.table[APP] = old


def case_bound(e: NatEdges, c: int, v: int) -> None:
    """The table's bound: 8,191 UDP sessions opened through the client's policy object, one more through
    the world (the 8,192nd); the next new session is dropped as ``nat_table_full`` while an existing one
    keeps working; after 120 s idle every session has timed out, the oldest one's tombstone is still
    there (8,192 tombstones fit), and new sessions fit again."""
    s = e.s
    p = e.proxies(c, APP, 4)[0]
    tun = e.tun(c, 4)
    policy = s.gw.gateway.peers.client_by_ip(tun)
    if policy is None or len(policy.nat.table):
        # Every earlier session of this client is hours old: timed out, its tombstone gone.
        raise InvariantError(f"client-{c} before the bound: {policy and policy.nat.table.sessions()}")
    first = 40000 - BOUND  # ports 31808-39999: no probe or other case of this client uses them
    last = first + BOUND - 1

    def fill(now: Instant) -> None:
        for port in range(first, last):
            buf = bytearray(e.udp(c, p, port, b"fill"))
            decision = policy.outbound(buf, now)
            if decision[0] is not FORWARD or decision[1] is not buf:
                raise InvariantError(f"filling the NAT table: port {port} refused: {decision}")

    s.world.drive(s.gw.gateway_host, fill)
    e.exchange(
        "the 8,192nd session",
        Expect([(PROTO_UDP, tun, APP_V4, last, ECHO)], {c: [("udp", p, ECHO, last, b"full")]}),
        {c: [e.udp(c, p, last, b"full")]},
    )
    e.exchange(
        "one session more",
        Expect(drops={"nat_table_full": 1}),
        {c: [e.udp(c, p, last + 1, b"over")]},
    )
    e.exchange(
        "an existing session at the bound",
        Expect([(PROTO_UDP, tun, APP_V4, first, ECHO)], {c: [("udp", p, ECHO, first, b"old")]}),
        {c: [e.udp(c, p, first, b"old")]},
    )
    e.run(UDP_TTL + MARGIN)
    # The sessions end in the order they began, but the first one's packet above kept it 3 s longer:
    # the oldest tombstone is the second one's.
    e.exchange(
        "the resource's packet of the oldest ended session",
        Expect(drops={"nat_session_expired": 1}),
        app=[e.udp_from_app(c, APP_V4, first + 1, b"late")],
    )
    e.exchange(
        "a new session after the timeout",
        Expect([(PROTO_UDP, tun, APP_V4, last + 1, ECHO)], {c: [("udp", p, ECHO, last + 1, b"fits")]}),
        {c: [e.udp(c, p, last + 1, b"fits")]},
    )


CASES: tuple[tuple[str, Callable[[NatEdges, int, int], None]], ...] = (
    ("echo_identifiers", case_echo_identifiers),
    ("echo_collisions", case_echo_collisions),
    ("wrap", case_wrap),
    ("rst_from_client", case_rst_from_client),
    ("rst_from_resource", case_rst_from_resource),
    ("expiry", case_expiry),
    ("renumber_before", case_renumber_before),
    ("renumber_after", case_renumber_after),
    ("reresolved", case_reresolved),
    ("bound", case_bound),
)
"""The ``nat_edge`` cases (``step.a`` picks one), each a function of the step's part, the client and the
IP family."""


def nat_program() -> Program:
    """Two clients holding the DNS resource (the first also the CIDR resource, for the re-resolved name);
    every case (IPv4 and IPv6 where the case has both), the client restart between the two halves of the
    re-numbering, the bound last."""
    idx = {name: i for i, (name, _) in enumerate(CASES)}
    grants = [Step(StepKind.GRANT, 0, 1), Step(StepKind.GRANT, 1, 1), Step(StepKind.GRANT, 0, 0)]
    steps = [Step(StepKind.NAT_EDGE, 0, idx["echo_identifiers"], b) for b in (0, 1)]
    steps += [Step(StepKind.NAT_EDGE, 0, idx["echo_collisions"]), Step(StepKind.NAT_EDGE, 0, idx["wrap"])]
    for name in ("rst_from_client", "rst_from_resource", "expiry"):
        steps += [Step(StepKind.NAT_EDGE, 0, idx[name], b) for b in (0, 1)]
    steps += [
        Step(StepKind.NAT_EDGE, 0, idx["renumber_before"]),
        Step(StepKind.RESTART_CLIENT, 0),
        Step(StepKind.NAT_EDGE, 0, idx["renumber_after"]),
        Step(StepKind.NAT_EDGE, 0, idx["reresolved"]),
        Step(StepKind.NAT_EDGE, 1, idx["bound"]),
    ]
    return Program(WorldSpec(13, 2, 1), grants + steps)
