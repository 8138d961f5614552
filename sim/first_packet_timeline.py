"""The time line of one first-packet measurement (:mod:`sim.first_packet`, decision 0175).

Theory of operation: :func:`timeline` runs :func:`sim.first_packet.run` with a kept trace and turns it
into :class:`Step` s, every time counted from the instant the portal sent ``authorize_flow``:

- the gateway's portal frames (``authorize_flow``, ``flow_authorized``, ``broadcast_ice_candidates``,
  ``ice_candidates``, ...), each send matched with its arrival on the same WebSocket stream;
- the client's side of the portal (:class:`sim.client_portal.ClientSignalling`, one fixed hop): the
  grant (``flow_created``), the gateway's candidates to the client and the client's candidates to the
  portal, from the signalling log;
- every datagram between the client, the gateway and the relay, by what it carries: a STUN method and
  class (``USE-CANDIDATE`` marked), a WireGuard message type, ChannelData with what it wraps; TURN
  allocation refreshes are left out. A datagram the network dropped is a step with ``dropped`` set;
- the echo's arrival at the web host, which ends the time line.

``python -m sim.first_packet_timeline LATENCY_MS [--relayed] [--firezone-order]`` prints it; the sim
test asserts on the steps which message gates the first packet.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from gateway_core.clock import Duration
from gateway_core.errors import DecodeError
from gateway_core.wire import stun, turn
from gateway_core.wireguard import messages as wg
from sim.first_packet import FirstPacket, run
from sim.trace import Trace

_METHODS: dict[int, str] = {
    stun.Method.BINDING: "binding",
    stun.Method.ALLOCATE: "allocate",
    stun.Method.REFRESH: "refresh",
    stun.Method.CREATE_PERMISSION: "create-permission",
    stun.Method.CHANNEL_BIND: "channel-bind",
}
_CLASSES = {
    stun.Class.REQUEST: "request",
    stun.Class.SUCCESS: "success",
    stun.Class.ERROR: "error",
    stun.Class.INDICATION: "indication",
}
_WG = {
    wg.MSG_INITIATION: "wg initiation",
    wg.MSG_RESPONSE: "wg response",
    wg.MSG_COOKIE_REPLY: "wg cookie",
    wg.MSG_DATA: "wg data",
}
_LEFT_OUT = ("allocate ", "refresh ")
"""TURN allocation traffic: both ends allocated during the warm-up; refreshes are not on the path."""


@dataclass(frozen=True, slots=True)
class Step:
    """One message: sent at ``sent`` by ``src``, arrived at ``at`` at ``dst`` (or dropped then)."""

    sent: Duration
    at: Duration
    src: str
    dst: str
    what: str
    """``authorize_flow`` ..., ``binding request``, ``binding request use-candidate``, ``binding success``,
    ``channel-bind request``, ``wg initiation``, ``wg response``, ``wg data``, ``ip packet``."""
    channel_data: bool = False
    """Wrapped in ChannelData (between an end and the relay)."""
    dropped: str = ""
    """The network's drop reason, or empty."""


def describe(payload: bytes) -> tuple[str, bool]:
    """What a datagram carries, and whether it is ChannelData."""
    kind = turn.classify(payload)
    if kind is turn.Kind.CHANNEL_DATA:
        try:
            _, inner = turn.decode_channel_data(payload, exact=False)
        except DecodeError:
            return "malformed channel data", True
        return describe(inner)[0], True
    if kind is turn.Kind.WIREGUARD:
        try:
            return _WG[wg.message_type(payload)], False
        except DecodeError:
            return "malformed wireguard", False
    if kind is turn.Kind.STUN:
        try:
            m = stun.decode(payload)
        except DecodeError:
            return "malformed stun", False
        what = f"{_METHODS.get(m.method, str(int(m.method)))} {_CLASSES[m.cls]}"
        return what + (" use-candidate" if m.has(stun.Attr.USE_CANDIDATE) else ""), False
    return "unknown", False


def _frame_event(text: object) -> str:
    try:
        msg = json.loads(str(text))
    except ValueError:
        return "frame"
    if isinstance(msg, dict):
        return str(msg.get("event", "frame"))
    if isinstance(msg, list) and len(msg) > 3:
        return str(msg[3])  # Phoenix V2 array frames: [join_ref, ref, topic, event, payload]
    return "frame"


def timeline(
    latency_ms: int, relayed: bool, *, firezone_order: bool = False
) -> tuple[FirstPacket, list[Step]]:
    """Measure once and return the measurement with its time line, in time order (module docstring)."""
    trace = Trace(keep=True)
    m, gw = run(latency_ms, relayed, firezone_order=firezone_order, trace=trace)
    recs = trace.records
    start = next(
        _int(r["t"]) for r in recs if r["ev"] == "stream_send" and _frame_event(r["text"]) == "authorize_flow"
    )
    steps: list[Step] = []
    sends: defaultdict[tuple[int, str], deque[tuple[int, str]]] = defaultdict(deque)
    for r in recs:
        t = _int(r["t"])
        if t < start:
            continue
        ev = r["ev"]
        if ev == "stream_send":
            sends[(_int(r["stream"]), str(r["text"]))].append((t, str(r["host"])))
        elif ev == "stream_frame":
            queued = sends[(_int(r["stream"]), str(r["text"]))]
            if queued:
                sent, src = queued.popleft()
                steps.append(
                    Step(
                        Duration(sent - start),
                        Duration(t - start),
                        src,
                        str(r["host"]),
                        _frame_event(r["text"]),
                    )
                )
        elif ev in ("deliver", "drop") and r.get("proto") == "udp":
            sent = _int(r["sent"]) if ev == "deliver" else t
            what, wrapped = describe(bytes.fromhex(str(r.get("payload", ""))))
            if ev == "drop":
                what, wrapped = "datagram", False
            if what.startswith(_LEFT_OUT):
                continue
            reason = str(r["reason"]) if ev == "drop" else ""
            steps.append(
                Step(
                    Duration(sent - start),
                    Duration(t - start),
                    str(r["from"]),
                    str(r["to"]),
                    what,
                    wrapped,
                    reason,
                )
            )
        elif ev == "deliver" and r.get("to") == "web":
            steps.append(
                Step(
                    Duration(_int(r["sent"]) - start), Duration(t - start), str(r["from"]), "web", "ip packet"
                )
            )
    steps += _client_hops(gw.signalling.log, gw.signalling.delay, gw.client_hosts[0].name, start, m.granted)
    steps.sort(key=lambda s: (s.at, s.sent))
    return m, steps


def _client_hops(
    log: Sequence[tuple[int, str]], delay: int, client: str, start: int, granted: Duration
) -> list[Step]:
    """The client's portal hop from :attr:`ClientSignalling.log` (``(when sent, what)``; its first word
    names the message: ``flow_created`` and ``broadcast_*`` go to the client, ``*ice_candidates`` from it).
    The grant arrived at ``granted`` (later than the log says when measured in Firezone's portal order)."""
    out = []
    for t, what in log:
        if t < start:
            continue
        word = what.split(" ", 1)[0]
        if word.startswith("broadcast_"):
            src, dst, word = "portal", client, word.removeprefix("broadcast_")
        elif word.endswith("ice_candidates"):
            src, dst = client, "portal"
        else:
            src, dst = "portal", client
        at = Duration(t + delay - start)
        if word == "flow_created":
            at = granted
        out.append(Step(Duration(at - delay), at, src, dst, word))
    return out


def _int(v: object) -> int:
    assert isinstance(v, int)
    return v


def render(m: FirstPacket, steps: list[Step]) -> str:
    path = "relayed" if m.relayed else "direct"
    unit = "relayed RTT" if m.relayed else "RTT"
    order = ", Firezone's portal order" if m.firezone_order else ""
    lines = [
        f"{m.latency_ms} ms links, {path}{order}: first packet {m.elapsed / 1e6:.1f} ms"
        f" = {m.rtts:.2f} {unit} + 30 ms ({m.rtts_from_grant:.2f} {unit} from the client's grant)",
        "arrived   sent      from       to         message",
    ]
    for s in steps:
        what = s.what + (" (in channel data)" if s.channel_data else "")
        if s.dropped:
            what += f" DROPPED ({s.dropped})"
        lines.append(f"{s.at / 1e6:7.1f}  {s.sent / 1e6:7.1f}   {s.src:<10} {s.dst:<10} {what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m sim.first_packet_timeline", description=__doc__.split("\n")[0]
    )
    ap.add_argument("latency_ms", type=int, help="one-way latency of every link (ms)")
    ap.add_argument("--relayed", action="store_true", help="partition the client from the gateway")
    ap.add_argument("--firezone-order", action="store_true", help="flow_created after flow_authorized")
    a = ap.parse_args(argv)
    print(render(*timeline(a.latency_ms, a.relayed, firezone_order=a.firezone_order)))


if __name__ == "__main__":
    main()
