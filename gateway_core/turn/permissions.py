"""The permissions one TURN allocation asked for and refreshes (RFC 8656 §9), with kept refresh deadlines.

Theory of operation: a permission is keyed by the peer's IP (``str``), holds the peer address and when it
was last installed; it is refreshed :data:`PERMISSION_REFRESH` after that. The refresh deadlines are kept
in a :class:`~gateway_core.contract.TimerHeap` (decision 0140), so the allocation neither walks every
permission on each ``poll_timeout`` nor sorts them on each ``handle_timeout``: a gateway with thousands of
clients behind one relay holds a permission per client address. Due permissions come out in key order
(deterministic traces); a refreshed one is parked an hour ahead until the answer installs it again.
"""

from __future__ import annotations

from gateway_core.addr import SocketAddr
from gateway_core.clock import Instant, secs
from gateway_core.contract import Deadline, TimerHeap

PERMISSION_REFRESH = secs(240)
"""RFC 8656 permissions last 300 s; explicitly requested ones are refreshed after 240 s."""
AWAIT_ANSWER = secs(3600)
"""A permission whose refresh was sent waits this long for the answer before it is due again (in practice
the answer, or the allocation's end, comes first)."""


class Permissions:
    """See the module docstring."""

    __slots__ = ("_by_ip", "_due")

    def __init__(self) -> None:
        self._by_ip: dict[str, tuple[SocketAddr, Instant]] = {}
        self._due: TimerHeap[str] = TimerHeap()

    def __len__(self) -> int:
        return len(self._by_ip)

    def _set(self, key: str, peer: SocketAddr, at: Instant) -> None:
        self._by_ip[key] = (peer, at)
        self._due.set(key, at + PERMISSION_REFRESH)

    def installed(self, peer: SocketAddr, now: Instant) -> None:
        """The relay confirmed a permission for ``peer``'s IP at ``now``."""
        self._set(str(peer.ip), peer, now)

    def clear(self) -> None:
        self._by_ip.clear()
        self._due = TimerHeap()

    def due(self, now: Instant) -> list[SocketAddr]:
        """The permissions to refresh now, in key order; each is parked until its answer arrives."""
        out = []
        for key in sorted(self._due.pop_due(now)):
            got = self._by_ip.get(key)
            if got is None:
                continue
            peer, at = got
            if now >= at + PERMISSION_REFRESH:
                self._set(key, peer, Instant(now + AWAIT_ANSWER))
                out.append(peer)
            else:
                self._due.schedule(key, at + PERMISSION_REFRESH)
        return out

    def _deadline(self, key: str) -> Deadline | None:
        got = self._by_ip.get(key)
        return (
            None if got is None else Deadline(Instant(got[1] + PERMISSION_REFRESH), "turn permission refresh")
        )

    def deadline(self) -> Deadline | None:
        """The earliest refresh deadline (from the kept deadlines; pure)."""
        return self._due.earliest_exact(self._deadline)
