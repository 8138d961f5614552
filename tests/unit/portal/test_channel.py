"""The Phoenix channel machine, on virtual time only."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.clock import Instant, millis, secs
from gateway_core.commands import Command
from gateway_core.entropy import SeededEntropy
from gateway_core.errors import DropReason, UsageError
from gateway_core.inputs import ShutdownRequested
from gateway_core.portal.channel import (
    TRANSITIONS,
    ChannelState,
    ClosePortal,
    ConnectPortal,
    FatalKind,
    PortalChannel,
    PortalConnected,
    PortalConnectFailed,
    PortalDisconnected,
    PortalEvent,
    PortalFailed,
    PortalFrameReceived,
    PortalHiccup,
    PortalJoined,
    PortalMessageReceived,
    PortalReplyError,
    PortalSendFailed,
    PortalStopped,
    SendPortalFrame,
    transition_diagram,
)
from gateway_core.portal.login import login_url
from gateway_core.portal.messages import FlowAuthorized, RejectAccess
from tests.unit.portal import spec_fixtures as fx

URL = login_url("wss://portal.test", "tok", "gw-1", "gw", bytes(32))
UA = "Debian/12 gateway/1.4.18 (x86_64)"


class Harness:
    """A channel with a virtual clock; collects commands and events."""

    def __init__(self, seed: int = 1) -> None:
        self.ch = PortalChannel(URL, UA, SeededEntropy(seed))
        self.now = Instant(0)
        self.commands: list[Command] = []
        self.events: list[PortalEvent] = []

    def drain(self) -> None:
        while (c := self.ch.poll_command()) is not None:
            self.commands.append(c)
        while (e := self.ch.poll_event()) is not None:
            self.events.append(e)
        d = self.ch.poll_timeout()
        assert d is None or d.at >= self.now

    def take(self) -> list[Command]:
        out, self.commands = self.commands, []
        return out

    def take_events(self) -> list[PortalEvent]:
        out, self.events = self.events, []
        return out

    def sent(self) -> list[dict[str, object]]:
        return [json.loads(c.text) for c in self.take() if isinstance(c, SendPortalFrame)]

    def advance_to(self, t: int) -> None:
        """Serve every deadline up to ``t`` (as the driver would), then set the clock to ``t``."""
        while (d := self.ch.poll_timeout()) is not None and d.at <= t:
            self.now = Instant(max(self.now, d.at))
            self.ch.handle_timeout(self.now)
            self.drain()
        self.now = Instant(t)
        self.ch.handle_timeout(self.now)
        self.drain()

    def inp(self, i: object) -> None:
        self.ch.handle_input(self.now, i)  # type: ignore[arg-type]
        self.drain()

    def frame(self, text: str) -> None:
        self.inp(PortalFrameReceived(self.ch.conn, text))

    def start_joined(self) -> None:
        self.ch.start(self.now)
        self.drain()
        self.inp(PortalConnected(self.ch.conn))
        join = self.sent()
        assert [f["event"] for f in join] == ["phx_join"]
        self.frame(
            json.dumps(
                {
                    "topic": "gateway",
                    "event": "phx_reply",
                    "ref": join[0]["ref"],
                    "payload": {"status": "ok", "response": {}},
                }
            )
        )
        assert self.ch.state is ChannelState.JOINED
        self.take_events()


def reply(ref: object, status: str = "ok", response: object = None, topic: str = "gateway") -> str:
    return json.dumps(
        {
            "topic": topic,
            "event": "phx_reply",
            "ref": ref,
            "payload": {"status": status, "response": {} if response is None else response},
        }
    )


def test_connect_join_exact_frames_and_flush() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.drain()
    (c,) = h.take()
    assert c == ConnectPortal(1, URL, UA)
    ref = h.ch.push(h.now, "flow_authorized", {"ref": "x"})
    assert h.take() == []  # not joined: held
    h.inp(PortalConnected(1))
    cmds = h.take()
    assert [c.text for c in cmds if isinstance(c, SendPortalFrame)] == [
        '{"topic":"gateway","event":"phx_join","payload":null,"ref":1}'
    ]
    assert ref == 0  # refs count every frame created, from 0
    h.frame(reply(1))
    assert h.take_events() == [PortalJoined()]
    assert h.sent() == [{"topic": "gateway", "event": "flow_authorized", "payload": {"ref": "x"}, "ref": 0}]


def test_no_pipelining_while_join_pending() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnected(1))
    h.take()
    h.ch.send(h.now, FlowAuthorized("a"))
    h.ch.send(h.now, FlowAuthorized("b"))
    h.drain()
    assert h.take() == []
    h.frame(reply(0))
    assert [f["payload"] for f in h.sent()] == [{"ref": "a"}, {"ref": "b"}]


def test_heartbeat_after_30s_idle_and_reset_by_sending() -> None:
    h = Harness()
    h.start_joined()
    t0 = h.now
    assert h.ch.poll_timeout() is not None and h.ch.poll_timeout().at == t0 + secs(30)  # type: ignore[union-attr]
    h.advance_to(t0 + secs(20))
    h.ch.push(h.now, "flow_authorized", {"ref": "x"})
    h.drain()
    assert [f["event"] for f in h.sent()] == ["flow_authorized"]
    h.advance_to(t0 + secs(49))
    assert h.sent() == []
    h.advance_to(t0 + secs(50))
    (hb,) = h.sent()
    assert hb["topic"] == "phoenix" and hb["event"] == "heartbeat" and hb["payload"] == {}
    h.frame(reply(hb["ref"], topic="phoenix"))
    h.advance_to(t0 + secs(80))
    assert [f["event"] for f in h.sent()] == ["heartbeat"]
    assert h.ch.state is ChannelState.JOINED


def test_missed_heartbeat_reply_means_dead_connection() -> None:
    h = Harness()
    h.start_joined()
    t0 = h.now
    h.advance_to(t0 + secs(30))
    (_hb,) = h.sent()
    h.advance_to(t0 + secs(60) - 1)
    assert h.ch.state is ChannelState.JOINED
    h.advance_to(t0 + secs(60))
    cmds = h.take()
    assert ClosePortal(1, graceful=False) in cmds
    assert ConnectPortal(2, URL, UA) in cmds  # first retry is immediate
    assert h.ch.stats.counters["portal.heartbeat_timeouts"] == 1
    assert isinstance(h.take_events()[0], PortalHiccup)


def test_backoff_schedule_and_give_up_after_15_minutes() -> None:
    h = Harness(seed=7)
    h.ch.start(h.now)
    h.drain()
    h.take()
    delays = []
    last_events: list[PortalEvent] = []
    while h.ch.state is not ChannelState.FAILED:
        h.inp(PortalConnectFailed(h.ch.conn, "connection refused"))
        last_events = h.take_events()
        hic = [e for e in last_events if isinstance(e, PortalHiccup)]
        if not hic:
            break
        delays.append(hic[0].delay)
        if h.ch.state is ChannelState.WAITING:
            h.advance_to(h.now + hic[0].delay)
        assert h.ch.state is ChannelState.CONNECTING
        assert len(delays) < 200
    assert delays[0] == 0
    assert millis(250) <= delays[1] <= millis(750)
    assert millis(375) <= delays[2] <= millis(1125)
    assert all(d <= secs(90) for d in delays)
    assert h.ch.state is ChannelState.FAILED
    # Gave up within the 15-minute window, and not long before its end (one max delay at most).
    assert secs(900) - secs(90) <= h.now <= secs(900)
    assert [e.kind for e in last_events if isinstance(e, PortalFailed)] == [FatalKind.MAX_RETRIES]


def test_gives_up_with_max_retries_event() -> None:
    h = Harness(seed=3)
    h.ch.start(h.now)
    h.drain()
    failed: list[PortalFailed] = []
    for _ in range(500):
        h.inp(PortalConnectFailed(h.ch.conn, "refused"))
        failed += [e for e in h.take_events() if isinstance(e, PortalFailed)]
        if failed:
            break
        h.advance_to(h.now + secs(100))
    assert failed and failed[0].kind is FatalKind.MAX_RETRIES and "refused" in failed[0].error
    h.take()
    h.advance_to(h.now + secs(3600))
    assert not [c for c in h.take() if isinstance(c, ConnectPortal)]


def test_successful_upgrade_resets_backoff() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnectFailed(1, "refused"))
    h.inp(PortalConnectFailed(2, "refused"))
    (hic,) = [e for e in h.take_events() if isinstance(e, PortalHiccup) and e.delay > 0]
    h.advance_to(h.now + hic.delay)
    h.inp(PortalConnected(3))
    h.inp(PortalDisconnected(3, "eof"))
    evs = [e for e in h.take_events() if isinstance(e, PortalHiccup)]
    assert evs[-1].delay == 0  # a new window: immediate again
    assert h.ch.state is ChannelState.CONNECTING


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 499])
def test_4xx_is_fatal(status: int) -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnectFailed(1, "refused", status=status))
    assert h.ch.state is ChannelState.FAILED
    (ev,) = h.take_events()
    assert ev == PortalFailed(FatalKind.CLIENT_ERROR, f"HTTP {status}: refused", status)
    h.advance_to(secs(3600))
    assert not [c for c in h.take() if isinstance(c, ConnectPortal) and c.conn > 1]


@pytest.mark.parametrize("status", [301, 500, 502, 503])
def test_other_statuses_are_transient(status: int) -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnectFailed(1, "refused", status=status))
    assert h.ch.state is ChannelState.CONNECTING and h.ch.conn == 2


def test_bad_certificate_is_fatal() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnectFailed(1, "invalid peer certificate", certificate_invalid=True))
    assert h.ch.state is ChannelState.FAILED
    assert h.take_events()[0] == PortalFailed(FatalKind.FATAL_IO, "invalid peer certificate")


def test_join_error_is_fatal() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnected(1))
    h.frame(reply(0, "error", {"reason": "invalid_version"}))
    assert h.ch.state is ChannelState.FAILED
    assert h.take_events()[-1].kind is FatalKind.LOGIN_FAILED  # type: ignore[attr-defined]


def test_join_timeout_reconnects() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnected(1))
    h.take()
    h.advance_to(secs(5) - 1)
    assert h.ch.state is ChannelState.JOINING
    h.advance_to(secs(5))
    assert ConnectPortal(2, URL, UA) in h.take()


def test_connect_timeout() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.take()
    h.advance_to(secs(15))
    cmds = h.take()
    assert ClosePortal(1, graceful=False) in cmds and ConnectPortal(2, URL, UA) in cmds


def test_phx_error_rejoins_and_heartbeats_resume() -> None:
    h = Harness()
    h.start_joined()
    h.frame(fx.PHX_ERROR)  # ref 0 is the join's ref of the *previous* join here (ours was 0 too)
    # Our join had ref 0, so a phx_error carrying it is about the joined channel: rejoin.
    frames = h.sent()
    assert [f["event"] for f in frames] == ["phx_join"]
    assert h.ch.state is ChannelState.JOINING
    h.ch.push(h.now, "flow_authorized", {"ref": "held"})
    h.drain()
    assert h.sent() == []
    h.frame(reply(frames[0]["ref"]))
    assert [f["event"] for f in h.sent()] == ["flow_authorized"]
    t = h.now
    h.advance_to(t + secs(30))
    assert [f["event"] for f in h.sent()] == ["heartbeat"]
    assert h.ch.stats.counters["portal.rejoins"] == 1


def test_unmatched_topic_error_rejoins() -> None:
    h = Harness()
    h.start_joined()
    ref = h.ch.send(h.now, FlowAuthorized("x"))
    h.drain()
    h.take()
    h.frame(reply(ref, "error", {"reason": "unmatched topic"}))
    assert [f["event"] for f in h.sent()] == ["phx_join"]


def test_other_error_reply_reported_with_event() -> None:
    h = Harness()
    h.start_joined()
    ref = h.ch.send(h.now, FlowAuthorized("x"))
    h.drain()
    h.frame(reply(ref, "error", {"reason": "invalid_ref"}))
    assert h.take_events() == [PortalReplyError(ref, "flow_authorized", "invalid_ref")]
    assert h.ch.state is ChannelState.JOINED


def test_phx_close_reconnects() -> None:
    h = Harness()
    h.start_joined()
    h.take()
    h.frame(fx.PHX_CLOSE)
    cmds = h.take()
    assert ClosePortal(1, graceful=False) in cmds and ConnectPortal(2, URL, UA) in cmds


def test_token_expired_is_fatal_other_disconnects_dropped() -> None:
    h = Harness()
    h.start_joined()
    h.frame('{"topic":"gateway","event":"disconnect","payload":{"reason":"bored"},"ref":null}')
    assert h.ch.state is ChannelState.JOINED
    assert h.ch.stats.drops[DropReason.PORTAL_BAD_PAYLOAD] == 1
    h.frame(fx.TOKEN_EXPIRED)
    assert h.ch.state is ChannelState.FAILED
    assert h.take_events()[-1].kind is FatalKind.TOKEN_EXPIRED  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", ["", "   ", '{"topic":"gateway","event":', '{"topic":"gat'])
def test_truncated_json_reconnects(text: str) -> None:
    h = Harness()
    h.start_joined()
    h.take()
    h.frame(text)
    assert ConnectPortal(2, URL, UA) in h.take()


@pytest.mark.parametrize(
    "text",
    [
        "[1,2]",
        '{"topic":"gateway","event":"init","payload":{},"ref":"12"}',
        '{"topic":"gateway","event":"init","payload":{},"ref":-1}',
        '{"topic":"gateway","event":"init","payload":{},"ref":true}',
        '{"topic":1,"event":"init","payload":{},"ref":null}',
        "{nope}",
        '{"a":1} trailing',
    ],
)
def test_malformed_frames_dropped_connection_kept(text: str) -> None:
    h = Harness()
    h.start_joined()
    h.frame(text)
    assert h.ch.state is ChannelState.JOINED
    assert h.ch.stats.drops[DropReason.PORTAL_MALFORMED_FRAME] == 1


def test_unknown_event_and_bad_payload_dropped_any_topic() -> None:
    h = Harness()
    h.start_joined()
    h.frame('{"topic":"gateway","event":"no_relays","payload":{},"ref":null}')
    h.frame('{"topic":"other","event":"reject_access","payload":{"client_id":"x"},"ref":null}')
    h.frame(fx.REJECT_ACCESS.replace('"topic":"gateway"', '"topic":"elsewhere"'))
    assert h.ch.stats.drops[DropReason.PORTAL_UNKNOWN_EVENT] == 1
    assert h.ch.stats.drops[DropReason.PORTAL_BAD_PAYLOAD] == 1
    (ev,) = h.take_events()
    assert isinstance(ev, PortalMessageReceived) and isinstance(ev.message, RejectAccess)


def test_binary_frames_as_utf8_text() -> None:
    h = Harness()
    h.start_joined()
    h.inp(PortalFrameReceived(1, fx.REJECT_ACCESS.encode()))
    h.inp(PortalFrameReceived(1, b"\xff\xfe"))
    assert len(h.take_events()) == 1
    assert h.ch.stats.drops[DropReason.PORTAL_MALFORMED_FRAME] == 1


def test_reply_rules() -> None:
    h = Harness()
    h.start_joined()
    h.frame(reply(None))  # ref null
    assert h.ch.stats.drops[DropReason.PORTAL_UNMATCHED_REPLY] == 1
    h.frame(reply(99, response={"unexpected": 1}))
    assert h.ch.stats.drops[DropReason.PORTAL_BAD_PAYLOAD] == 1
    h.frame('{"topic":"gateway","event":"phx_reply","payload":{"status":"ok","response":null},"ref":98}')
    h.frame(reply(97))
    assert h.ch.stats.drops[DropReason.PORTAL_UNMATCHED_REPLY] == 2
    h.frame('{"topic":"gateway","event":"phx_reply","payload":{"status":"maybe","response":{}},"ref":1}')
    assert h.ch.stats.drops[DropReason.PORTAL_BAD_PAYLOAD] == 2
    assert h.ch.state is ChannelState.JOINED and h.take_events() == []


def test_queue_survives_reconnect_and_limit() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.inp(PortalConnectFailed(1, "refused"))
    for i in range(5):
        h.ch.push(h.now, "flow_authorized", {"ref": str(i)})
    h.inp(PortalConnected(2))
    h.take()
    h.frame(reply(5))
    assert [f["payload"]["ref"] for f in h.sent()] == ["0", "1", "2", "3", "4"]  # type: ignore[index]

    h2 = Harness()
    for i in range(34):
        h2.ch.push(h2.now, "e", {"i": i})
    assert h2.ch.queued == 1  # the 34th push found 33 > 32 queued: all discarded first
    assert h2.ch.stats.drops[DropReason.QUEUE_FULL] == 33


def test_send_failure_requeues_at_head() -> None:
    h = Harness()
    h.start_joined()
    h.ch.push(h.now, "a", {})
    h.ch.push(h.now, "b", {})
    h.drain()
    (_fa, fb) = [c for c in h.take() if isinstance(c, SendPortalFrame)]
    h.inp(PortalSendFailed(1, fb.text, "broken pipe"))
    assert h.ch.queued == 1 and h.ch.conn == 2
    h.inp(PortalConnected(2))
    join = h.sent()
    h.frame(reply(join[0]["ref"]))
    assert [c.text for c in h.take() if isinstance(c, SendPortalFrame)] == [fb.text]


def test_stale_inputs_ignored() -> None:
    h = Harness()
    h.start_joined()
    h.frame(fx.PHX_CLOSE)
    h.inp(PortalConnected(1))
    h.inp(PortalDisconnected(1, "late"))
    h.inp(PortalFrameReceived(1, fx.REJECT_ACCESS))
    assert h.ch.conn == 2 and h.ch.state is ChannelState.CONNECTING
    assert h.ch.stats.counters["portal.stale_inputs"] == 2
    assert not [e for e in h.take_events() if isinstance(e, PortalMessageReceived)]


def test_graceful_close_when_joined() -> None:
    h = Harness()
    h.start_joined()
    h.take()
    h.inp(ShutdownRequested())
    assert h.take() == [ClosePortal(1, graceful=True)]
    assert h.ch.state is ChannelState.CLOSING
    assert h.ch.push(h.now, "x", {}) == -1
    h.inp(PortalDisconnected(1, "closed"))
    assert h.ch.state is ChannelState.CLOSED
    assert h.take_events() == [PortalStopped()]
    assert h.ch.poll_timeout() is None


def test_close_grace_expires() -> None:
    h = Harness()
    h.start_joined()
    h.ch.close(h.now)
    h.drain()
    assert h.take() == [ClosePortal(1, graceful=True)]
    h.advance_to(secs(1))
    assert h.ch.state is ChannelState.CLOSED
    assert h.take() == [ClosePortal(1, graceful=False)]


def test_close_while_waiting_or_connecting() -> None:
    h = Harness()
    h.ch.start(h.now)
    h.drain()
    h.take()
    h.ch.close(h.now)
    h.drain()
    assert h.take() == [ClosePortal(1, graceful=False)]
    assert h.ch.state is ChannelState.CLOSED

    w = Harness()
    w.ch.start(w.now)
    w.inp(PortalConnectFailed(1, "refused"))
    w.inp(PortalConnectFailed(2, "refused"))
    assert w.ch.state is ChannelState.WAITING
    w.take()
    w.inp(ShutdownRequested())
    assert w.take() == [] and w.ch.state is ChannelState.CLOSED
    assert w.take_events()[-1] == PortalStopped()


def test_explicit_reconnect_resets_backoff() -> None:
    h = Harness()
    h.start_joined()
    h.take()
    h.ch.reconnect(h.now)
    h.drain()
    assert h.take() == [ClosePortal(1, graceful=False), ConnectPortal(2, URL, UA)]
    h.ch.reconnect(h.now)  # already connecting: nothing
    h.drain()
    assert h.take() == []


def test_time_must_not_go_backwards() -> None:
    h = Harness()
    h.ch.start(Instant(10))
    with pytest.raises(UsageError):
        h.ch.handle_timeout(Instant(9))


def test_transition_table_is_closed() -> None:
    for src, dsts in TRANSITIONS.items():
        assert set(dsts) <= set(ChannelState), src
        assert all(why for why in dsts.values())
    assert TRANSITIONS[ChannelState.FAILED] == {} and TRANSITIONS[ChannelState.CLOSED] == {}


def test_design_doc_shows_the_transition_table() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "design" / "portal.md"
    assert transition_diagram() in doc.read_text(), "regenerate the diagram in docs/design/portal.md"


def test_same_seed_same_trace() -> None:
    def run(seed: int) -> list[object]:
        h = Harness(seed)
        h.ch.start(h.now)
        trace: list[object] = []
        for _ in range(12):
            h.inp(PortalConnectFailed(h.ch.conn, "x"))
            evs = h.take_events()
            trace += [(h.now, e) for e in evs]
            d = h.ch.poll_timeout()
            if d is not None:
                h.advance_to(d.at)
        return trace

    assert run(5) == run(5)
    assert run(5) != run(6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=80)), max_size=8))
def test_random_frames_never_raise(frames: list[str | bytes]) -> None:
    h = Harness()
    h.start_joined()
    for f in frames:
        h.inp(PortalFrameReceived(h.ch.conn, f))
        h.advance_to(h.now + secs(1))
    assert h.ch.state in (ChannelState.JOINED, ChannelState.CONNECTING, ChannelState.JOINING)


_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "advance",
                "connected",
                "failed",
                "refused",
                "disconnected",
                "frame",
                "send",
                "sendfail",
                "close",
            ]
        ),
        st.integers(min_value=0, max_value=3),  # how far back the conn number is (0 = current)
        st.integers(min_value=0, max_value=40_000),  # ms to advance / a status / a frame choice
    ),
    max_size=40,
)
_FRAMES = [
    fx.JOIN_OK,
    fx.HEARTBEAT_OK,
    fx.PHX_ERROR,
    fx.PHX_CLOSE,
    fx.TOKEN_EXPIRED,
    fx.REJECT_ACCESS,
    fx.INIT_MINIMAL,
    reply(3, "error", {"reason": "unmatched topic"}),
    reply(2, "error", {"reason": "x"}),
    "",
    "{",
    "[]",
]


@settings(max_examples=300, deadline=None)
@given(_ACTIONS)
def test_random_driving_keeps_the_contract(actions: list[tuple[str, int, int]]) -> None:
    """Any sequence of driver reports, stale or not, keeps R2/R4/R5 and never raises."""
    h = Harness(seed=2)
    h.ch.start(h.now)
    h.drain()
    for kind, back, n in actions:
        conn = max(0, h.ch.conn - back)
        match kind:
            case "advance":
                target = h.now + n * 1_000_000
                h.advance_to(target)
                d = h.ch.poll_timeout()
                assert d is None or d.at > h.now  # R5: nothing due is left pending
            case "connected":
                h.inp(PortalConnected(conn))
            case "failed":
                h.inp(PortalConnectFailed(conn, "x"))
            case "refused":
                h.inp(PortalConnectFailed(conn, "x", status=300 + n % 300))
            case "disconnected":
                h.inp(PortalDisconnected(conn, "x"))
            case "frame":
                text = _FRAMES[n % len(_FRAMES)]
                h.inp(PortalFrameReceived(conn, text))
            case "send":
                h.ch.push(h.now, "e", {"n": n})
                h.drain()
            case "sendfail":
                h.inp(PortalSendFailed(conn, '{"topic":"gateway","event":"e","payload":{},"ref":1}', "x"))
            case "close":
                h.inp(ShutdownRequested())
        assert h.ch.queued <= h.ch.config.queue_limit + 2
        # Every command names the current connection or an older one, never a future one.
        for c in h.take():
            assert getattr(c, "conn", 0) <= h.ch.conn
