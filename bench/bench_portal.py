"""Decoding portal messages (frame + typed message) and the channel's per-frame cost, next to ``json.loads``.

The reference is ``json.loads`` of the same text: parsing is work any decoder does. Measured in the same
run (timeit, best of several alternating repeats), so the ratio compares across machines: "a typed
``authorize_flow`` costs N plain JSON parses". Cases: the Phoenix frame alone, the frame plus the typed
``authorize_flow`` (UUIDs, keys, IPs, CIDR checked), the same for the full ``init``, and a frame through a
joined :class:`PortalChannel` (decode, dispatch, event queued and drained).
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

from gateway_core.clock import Instant
from gateway_core.entropy import SeededEntropy
from gateway_core.portal import phoenix
from gateway_core.portal.channel import PortalChannel, PortalConnected, PortalFrameReceived
from gateway_core.portal.login import login_url
from gateway_core.portal.messages import decode_inbound

NUMBER = 2_000
"""Iterations per measurement (a few ms to tens of ms each on a small machine)."""
REPEATS = 15
"""Best of this many alternating measurements."""

AUTHORIZE_FLOW = json.dumps(
    {
        "topic": "gateway",
        "event": "authorize_flow",
        "ref": None,
        "payload": {
            "client": {
                "id": "3abd725a-733b-4801-ac16-72f26cd98a24",
                "ipv6": "fd00:2021:1111::f:853b",
                "public_key": "fiAjSBWDgQfD1CFJkTwOf4zg+1QhH0eTT+oLaVIMpH8=",
                "ipv4": "100.93.74.51",
                "preshared_key": "BzPiNE9qszKczZcZzGsyieLYeJ2EQfkfdibls/l3beM=",
            },
            "resource": {
                "id": "c7793628-8579-465b-83e3-1a5d4af4db3b",
                "name": "MyCorp Network",
                "type": "cidr",
                "address": "172.20.0.0/16",
                "filters": [{"protocol": "tcp", "port_range_start": 80, "port_range_end": 443}],
            },
            "ref": "SFMyNTY.g2gDbQAAAkxnMmdH" + "x" * 400,
            "expires_at": 1729813989,
            "client_ice_credentials": {"username": "hgwh", "password": "j2fqufatn7xlrrvv6fsvea"},
            "gateway_ice_credentials": {"username": "ejqt", "password": "zfjrrjdkbci42t2axyd45a"},
        },
    }
)

INIT = json.dumps(
    {
        "topic": "gateway",
        "event": "init",
        "ref": None,
        "payload": {
            "authorizations": [
                {
                    "client_id": "3abd725a-733b-4801-ac16-72f26cd98a24",
                    "resource_id": "c7793628-8579-465b-83e3-1a5d4af4db3b",
                    "expires_at": 1729813989,
                }
            ]
            * 20,
            "account_slug": "mycorp",
            "interface": {"ipv4": "100.115.164.78", "ipv6": "fd00:2021:1111::2c:f6ab"},
            "relays": [
                {
                    "id": "0a133356-7a9e-4b9a-b413-0d95a5720fd8",
                    "type": "turn",
                    "addr": "172.28.0.101:3478",
                    "username": "1719367575:ZQHcVGkdnfgGmcP1",
                    "password": "ZWYiBeFHOJyYq0mcwAXjRpcuXIJJpzWlOXVdxwttrWg",
                    "expires_at": 1719367575,
                }
            ]
            * 4,
            "config": {"ipv4_masquerade_enabled": True, "ipv6_masquerade_enabled": True},
        },
    }
)


def _best(fn: Callable[[], object], ref: Callable[[], object]) -> tuple[float, float]:
    t_fn: list[float] = []
    t_ref: list[float] = []
    for _ in range(REPEATS):
        t_ref.append(timeit.timeit(ref, number=NUMBER) / NUMBER)
        t_fn.append(timeit.timeit(fn, number=NUMBER) / NUMBER)
    return min(t_fn), min(t_ref)


def _typed(text: str) -> Callable[[], object]:
    def run() -> object:
        f = phoenix.decode_frame(text)
        return decode_inbound(f.event, f.payload)

    return run


def _channel() -> Callable[[], object]:
    ch = PortalChannel(login_url("wss://h", "t", "i", "n", bytes(32)), "ua", SeededEntropy(0))
    now = Instant(0)
    ch.start(now)
    ch.handle_input(now, PortalConnected(1))
    ch.handle_input(
        now,
        PortalFrameReceived(
            1, phoenix.encode_frame("gateway", "phx_reply", {"status": "ok", "response": {}}, 0)
        ),
    )
    while ch.poll_command() is not None or ch.poll_event() is not None:
        pass
    inp = PortalFrameReceived(1, AUTHORIZE_FLOW)

    def run() -> object:
        ch.handle_input(now, inp)
        return ch.poll_event()

    return run


def main() -> None:
    cases = [
        ("frame only (authorize_flow)", lambda: phoenix.decode_frame(AUTHORIZE_FLOW), AUTHORIZE_FLOW),
        ("frame + typed authorize_flow", _typed(AUTHORIZE_FLOW), AUTHORIZE_FLOW),
        ("frame + typed init (20 auths, 4 relays)", _typed(INIT), INIT),
        ("channel: authorize_flow frame -> event", _channel(), AUTHORIZE_FLOW),
    ]
    for name, fn, text in cases:
        t, r = _best(fn, lambda text=text: json.loads(text))  # type: ignore[misc]
        print(f"{name:42s} {t * 1e6:8.1f} us   json.loads {r * 1e6:6.1f} us   ratio {t / r:5.1f}x")


if __name__ == "__main__":
    main()
