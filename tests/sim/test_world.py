"""The event loop: ordering, delivery paths, drops, streams, exit and livelock."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Command, Transmit, WriteTun
from gateway_core.errors import UsageError
from gateway_core.wire.ip import build_icmp_echo, build_udp_packet, parse_ip, parse_udp
from sim.host import Host, StreamClosed, StreamEvent, StreamFrame, StreamOpened
from sim.net import PERFECT, LinkProfile
from sim.trace import Record, Trace
from sim.world import SimError, World
from tests.sim.toys import Bouncer, DatagramSink, Sender, Sink, Ticker

A4, B4, C4 = IPv4Address("203.0.113.1"), IPv4Address("203.0.113.2"), IPv4Address("203.0.113.3")
A6 = IPv6Address("2001:db8::1")


def _traced(seed: int = 1) -> World:
    return World(seed, trace=Trace(keep=True))


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    world = World(1)
    seen: list[tuple[int, str]] = []
    for label, t in [("c", 30), ("a", 10), ("b1", 20), ("b2", 20), ("b3", 20), ("z", 0)]:
        world.at(Instant(t), lambda label=label: seen.append((world.now, label)))
    world.run_until(Instant(25))
    assert seen == [(0, "z"), (10, "a"), (20, "b1"), (20, "b2"), (20, "b3")]
    assert world.now == 25 and world.next_event_at() == 30
    world.run_until(Instant(100))
    assert seen[-1] == (30, "c")
    with pytest.raises(UsageError):
        world.at(Instant(99), lambda: None)


def test_actions_scheduled_while_running_at_the_same_instant_run_after_the_current_one() -> None:
    world = World(1)
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        world.after(0, lambda: seen.append("nested"))

    world.at(Instant(5), first)
    world.at(Instant(5), lambda: seen.append("second"))
    world.run_until(Instant(5))
    assert seen == ["first", "second", "nested"]


def test_run_until_idle_stops_when_nothing_is_left_or_at_the_budget() -> None:
    world = World(1)
    world.add_host(Host("t", Ticker(millis(3), millis(7), 4), ipv4=A4))
    assert world.run_until_idle(secs(20)) is True
    assert world.now == millis(24)  # the last tick, not the budget
    world.add_host(Host("u", Ticker(millis(100), secs(30), 2), ipv4=B4))
    assert world.run_until_idle(secs(20)) is False
    assert world.now == millis(100) and world.next_event_at() == millis(100) + secs(30)


def test_deadlines_are_served_exactly_and_traced() -> None:
    world = _traced()
    comp = Ticker(millis(3), millis(7), 4)
    world.add_host(Host("t", comp, ipv4=A4))
    world.run_until(Instant(secs(1)))
    assert comp.fired == [millis(3), millis(10), millis(17), millis(24)]
    timeouts = [r for r in world.trace.records if r["ev"] == "timeout"]
    assert [(r["t"], r["host"], r["reason"]) for r in timeouts] == [(t, "t", "tick") for t in comp.fired]


def test_udp_delivery_with_source_chosen_by_the_host() -> None:
    world = _traced()
    sink = Sink()
    world.add_host(Host("sink", sink, ipv4=B4, udp_ports=(7,), link=LinkProfile(latency=millis(20))))
    sender = Sender(SocketAddr(B4, 7), millis(1), millis(1), 2)
    world.add_host(Host("sender", sender, ipv4=A4, udp_ports=(5555,), link=LinkProfile(latency=millis(10))))
    world.run_until(Instant(secs(1)))
    assert sink.datagrams == [
        (millis(31), SocketAddr(B4, 7), SocketAddr(A4, 5555), b"msg0"),
        (millis(32), SocketAddr(B4, 7), SocketAddr(A4, 5555), b"msg1"),
    ]
    delivered = [r for r in world.trace.records if r["ev"] == "deliver"]
    assert [(r["from"], r["to"], r["src"], r["dst"], r["payload"]) for r in delivered][0] == (
        "sender",
        "sink",
        "203.0.113.1:5555",
        "203.0.113.2:7",
        b"msg0".hex(),
    )
    assert world.stats.counters["sent"] == 2 and world.stats.counters["delivered"] == 2


def _drops(world: World) -> list[object]:
    return [r["reason"] for r in world.trace.records if r["ev"] == "drop"]


def test_drop_reasons() -> None:
    world = _traced()
    sink = DatagramSink()
    world.add_host(Host("sink", sink, ipv4=B4, udp_ports=(7,)))
    only6 = world.add_host(Host("only6", Sink(), ipv6=A6))
    other = world.add_host(Host("other", Sink(), ipv4=A4, udp_ports=(1,)))
    world.send_udp(other, None, SocketAddr(B4, 8), b"closed port")
    world.send_udp(other, None, SocketAddr(C4, 7), b"nobody")
    world.send_udp(only6, None, SocketAddr(B4, 7), b"no v4 source")
    world.send_udp(other, SocketAddr(C4, 1), SocketAddr(B4, 7), b"spoofed")
    world.send_ip(other, b"\x45\x00")
    world.send_ip(other, build_icmp_echo(A4, B4, 1, 1, b""))  # sink takes no raw packets and it is no UDP
    world.run_until(Instant(secs(1)))
    assert _drops(world) == [
        "unroutable",
        "no_source_address",
        "not_own_address",
        "malformed_ip",
        "no_socket",
        "no_handler",
    ]
    assert sink.datagrams == []


def test_partition_drops_at_send_and_in_flight_then_heals() -> None:
    world = _traced()
    sink = Sink()
    world.add_host(Host("sink", sink, ipv4=B4, udp_ports=(7,), link=LinkProfile(latency=millis(50))))
    src = world.add_host(Host("src", Sink(), ipv4=A4, udp_ports=(1,), link=LinkProfile(latency=millis(50))))
    world.send_udp(src, None, SocketAddr(B4, 7), b"in flight")  # arrives at 100 ms
    world.at(Instant(millis(60)), lambda: world.partition(["src"], ["sink"]))
    world.at(Instant(millis(70)), lambda: world.send_udp(src, None, SocketAddr(B4, 7), b"cut"))
    world.at(Instant(millis(200)), lambda: world.heal())
    world.at(Instant(millis(210)), lambda: world.send_udp(src, None, SocketAddr(B4, 7), b"healed"))
    world.run_until(Instant(secs(1)))
    assert [d[3] for d in sink.datagrams] == [b"healed"]
    assert _drops(world) == ["partition", "partition"]
    actions = [r["what"] for r in world.trace.records if r["ev"] == "action"]
    assert actions == ["partition src | sink", "heal all"]


def test_raw_ip_packets_and_their_conversion_to_datagrams() -> None:
    world = _traced()
    raw = Sink()
    world.add_host(Host("raw", raw, ipv4=B4, udp_ports=(7,)))  # takes both: datagrams go to sockets
    dgram_only = DatagramSink()
    world.add_host(Host("dgram", dgram_only, ipv4=C4, udp_ports=(9,)))
    src = world.add_host(Host("src", Sink(), ipv4=A4, udp_ports=(1,)))
    echo = build_icmp_echo(A4, B4, 1, 2, b"ping")
    world.send_ip(src, echo)
    world.send_udp(src, None, SocketAddr(B4, 7), b"to socket")
    world.send_ip(src, build_udp_packet(A4, C4, 1, 9, b"raw udp"))  # to a host without a raw handler
    world.run_until(Instant(secs(1)))
    assert [p for _, p in raw.packets] == [echo]
    assert [d[3] for d in raw.datagrams] == [b"to socket"]
    assert [(d[1], d[2], d[3]) for d in dgram_only.datagrams] == [
        (SocketAddr(C4, 9), SocketAddr(A4, 1), b"raw udp")
    ]


class Tun(Sink):
    """A gateway-like component: packets for its tunnel range come in as raw IP."""


def test_prefix_route_delivers_datagrams_as_ip_packets_to_a_tun_host() -> None:
    world = _traced()
    tun = Tun()
    gw = world.add_host(Host("gw", tun, ipv4=B4, udp_ports=(52625,)))
    world.network.add_route(IPv4Network("100.64.0.0/11"), "gw")
    lan = world.add_host(Host("lan", Sink(), ipv4=A4, udp_ports=(53,)))
    world.send_udp(lan, None, SocketAddr(IPv4Address("100.64.0.2"), 4000), b"reply")
    world.run_until(Instant(secs(1)))
    assert len(tun.packets) == 1
    ip = parse_ip(tun.packets[0][1])
    udp = parse_udp(ip.payload)
    assert (ip.src, ip.dst, udp.sport, udp.dport, udp.payload) == (
        A4,
        IPv4Address("100.64.0.2"),
        53,
        4000,
        b"reply",
    )
    assert gw.component is tun


class Replier(Sink):
    """Returns results directly, like the gateway's data plane (R3)."""

    def handle_datagram(self, now: Instant, local: SocketAddr, remote: SocketAddr, payload: bytes) -> bytes:
        super().handle_datagram(now, local, remote, payload)
        return build_udp_packet(local.ip, IPv4Address("198.51.100.9"), 1, 2, payload)

    def handle_tun_packet(self, now: Instant, packet: bytes) -> Transmit:
        super().handle_tun_packet(now, packet)
        return Transmit(None, SocketAddr(A4, 1), b"encapsulated")


def test_direct_results_of_the_data_plane_are_sent() -> None:
    world = _traced()
    world.add_host(Host("gw", Replier(), ipv4=B4, udp_ports=(52625,)))
    lan = Sink()
    lan_ip = IPv4Address("198.51.100.9")
    lan_host = world.add_host(Host("lan", lan, ipv4=lan_ip))
    peer = Sink()
    p = world.add_host(Host("peer", peer, ipv4=A4, udp_ports=(1,)))
    world.send_udp(p, None, SocketAddr(B4, 52625), b"decrypted")
    world.send_ip(lan_host, build_udp_packet(lan_ip, B4, 80, 4000, b"from the lan"))
    world.run_until(Instant(secs(1)))
    # handle_datagram's returned packet went onto the network ...
    assert len(lan.packets) == 1 and parse_udp(parse_ip(lan.packets[0][1]).payload).payload == b"decrypted"
    # ... and handle_tun_packet's returned Transmit was sent.
    assert [d[3] for d in peer.datagrams] == [b"encapsulated"]


def test_write_tun_and_exit_commands() -> None:
    world = _traced()
    lan = Sink()
    world.add_host(Host("lan", lan, ipv4=B4, udp_ports=(7,)))
    sender = Sender(SocketAddr(B4, 7), millis(1), millis(1), 1, exit_after=True)
    host = world.add_host(Host("s", sender, ipv4=A4))
    sender.out.append(WriteTun(build_icmp_echo(A4, B4, 9, 9, b"")))
    world.drive(host, lambda now: None)
    world.run_until(Instant(secs(1)))
    assert len(lan.packets) == 1 and [d[3] for d in lan.datagrams] == [b"msg0"]
    assert host.exited is not None and host.exited.reason == "done"
    assert [r["ev"] for r in world.trace.records].count("exit") == 1
    assert host.sending_port() == 49152  # bound on demand from the ephemeral range


class Weird(Command):
    pass


def test_unknown_command_is_an_error_naming_the_host() -> None:
    world = World(1)
    comp = Sink()
    host = world.add_host(Host("odd", comp, ipv4=A4))
    comp.out.append(Weird())
    with pytest.raises(TypeError, match="odd"):
        world.drive(host, lambda now: None)


def test_zero_delay_ping_pong_is_caught_as_a_livelock() -> None:
    world = World(1, max_events_per_instant=1000)
    world.add_host(Host("a", Bouncer(), ipv4=A4, udp_ports=(7,), link=PERFECT))
    b = world.add_host(Host("b", Bouncer(), ipv4=B4, udp_ports=(7,), link=PERFECT))
    world.send_udp(b, None, SocketAddr(A4, 7), b"ball")
    with pytest.raises(SimError, match="livelock"):
        world.run_until(Instant(secs(1)))


class StreamPeer(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, StreamEvent]] = []

    def handle_stream_event(self, now: Instant, event: StreamEvent) -> None:
        self.events.append((now, event))


def test_streams_open_carry_ordered_frames_and_close() -> None:
    world = _traced()
    portal, client = StreamPeer(), StreamPeer()
    srv = world.add_host(
        Host("portal", portal, ipv4=B4, stream_ports=(443,), link=LinkProfile(latency=millis(10)))
    )
    cli = world.add_host(
        Host("client", client, ipv4=A4, link=LinkProfile(latency=millis(10), jitter=millis(40)))
    )
    sid = world.stream_connect(cli, SocketAddr(B4, 443))
    world.run_until(Instant(millis(100)))
    assert client.events == [(millis(40), StreamOpened(sid, SocketAddr(A4, 49152), SocketAddr(B4, 443)))]
    assert portal.events == [(millis(20), StreamOpened(sid, SocketAddr(B4, 443), SocketAddr(A4, 49152)))]
    for i in range(20):
        world.stream_send(cli, sid, f"frame {i}")
    world.stream_send(srv, sid, "reply")
    world.stream_close(cli, sid)
    world.run_until(Instant(secs(1)))
    got = [e.text for _, e in portal.events if isinstance(e, StreamFrame)]
    assert got == [f"frame {i}" for i in range(20)]  # in order despite the jitter
    assert isinstance(portal.events[-1][1], StreamClosed)
    assert [e for _, e in client.events if isinstance(e, StreamFrame)] == [StreamFrame(sid, "reply")]


def test_stream_refused_unroutable_and_reset_by_partition() -> None:
    world = World(1)
    portal, client = StreamPeer(), StreamPeer()
    world.add_host(Host("portal", portal, ipv4=B4, stream_ports=(443,)))
    cli = world.add_host(Host("client", client, ipv4=A4))
    refused = world.stream_connect(cli, SocketAddr(B4, 80))
    nowhere = world.stream_connect(cli, SocketAddr(C4, 443))
    ok = world.stream_connect(cli, SocketAddr(B4, 443))
    world.run_until(Instant(secs(1)))
    closed = {e.stream: e.reason for _, e in client.events if isinstance(e, StreamClosed)}
    assert closed == {refused: "refused", nowhere: "unroutable"}
    world.partition(["client"], ["portal"])
    world.stream_send(cli, ok, "lost?")
    world.run_until(Instant(secs(2)))
    assert client.events[-1][1] == StreamClosed(ok, "partition")
    assert portal.events[-1][1] == StreamClosed(ok, "partition")


def test_entropy_forks_are_independent_and_deterministic() -> None:
    w1, w2 = World(9), World(9)
    assert w1.entropy_for("gw").random_bytes(16) == w2.entropy_for("gw").random_bytes(16)
    assert w1.entropy_for("gw").random_bytes(16) != w1.entropy_for("client").random_bytes(16)


def _records(seed: int) -> list[Record]:
    world = World(seed, trace=Trace(keep=True))
    world.add_host(
        Host("b", Bouncer(), ipv4=B4, udp_ports=(7,), link=LinkProfile(millis(5), millis(5), 300_000))
    )
    world.add_host(
        Host(
            "a", Sender(SocketAddr(B4, 7), 0, millis(2), 50), ipv4=A4, link=LinkProfile(millis(5), millis(9))
        )
    )
    world.run_until(Instant(secs(1)))
    return world.trace.records


def test_runs_are_deterministic_in_process() -> None:
    assert _records(3) == _records(3)
    assert _records(3) != _records(4)
