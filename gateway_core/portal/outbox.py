"""The portal channel's outbox: application frames waiting to be written, and pushes waiting for a reply.

Theory of operation. Every frame the gateway creates gets its ref from one counter (:meth:`Outbox.new_ref`,
as Firezone: joins, heartbeats and pushes share it). An application push is queued (:meth:`Outbox.queue`)
until the channel is joined, in a FIFO that survives reconnects; the channel empties it when a push finds
it over its limit. When the channel writes the queue out (:meth:`Outbox.take`), each frame's ref is
remembered with its event name until the portal's reply comes (:meth:`Outbox.answered`), so that an error
reply can name the push it refuses; at most ``max_in_flight`` are remembered (the oldest are forgotten).
A frame whose write failed goes back to the head of the queue as text only (:meth:`Outbox.requeue`); its
ref and event are read back from the text when it is taken again.

The outbox has no clock and sends nothing itself: the channel (:mod:`gateway_core.portal.channel`) owns it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from gateway_core.errors import DecodeError
from gateway_core.portal import phoenix


@dataclass(slots=True)
class _Queued:
    ref: int
    event: str
    text: str


class Outbox:
    """See the module docstring."""

    __slots__ = ("_in_flight", "_max_in_flight", "_next_ref", "_queue")

    def __init__(self, max_in_flight: int) -> None:
        self._max_in_flight = max_in_flight
        self._next_ref = 0
        self._queue: deque[_Queued] = deque()
        self._in_flight: OrderedDict[int, str] = OrderedDict()

    def new_ref(self) -> int:
        """The next frame ref (0, 1, 2, ...)."""
        ref = self._next_ref
        self._next_ref += 1
        return ref

    def __len__(self) -> int:
        """Frames waiting to be written."""
        return len(self._queue)

    def queue(self, ref: int, event: str, text: str) -> None:
        """A push to write once joined (its frame ``text`` carries ``ref``)."""
        self._queue.append(_Queued(ref, event, text))

    def requeue(self, text: str) -> None:
        """A frame whose write failed: first in line again."""
        self._queue.appendleft(_Queued(-1, "", text))

    def discard_queue(self) -> None:
        self._queue.clear()

    def take(self) -> list[str]:
        """Every queued frame, in order, to write now; each push is remembered until its reply."""
        texts: list[str] = []
        limit = self._max_in_flight
        while self._queue:
            q = self._queue.popleft()
            ref, event = q.ref, q.event
            if ref < 0:  # re-queued after a failed write: recover its ref and event
                try:
                    f = phoenix.decode_frame(q.text)
                    ref, event = (f.ref if f.ref is not None else -1), f.event
                except DecodeError:
                    pass
            if ref >= 0:
                self.expect_reply(ref, event)
                while len(self._in_flight) > limit:
                    self._in_flight.popitem(last=False)
            texts.append(q.text)
        return texts

    def expect_reply(self, ref: int, event: str) -> None:
        """Remember that frame ``ref`` (an ``event``) was written and is waiting for its reply."""
        self._in_flight[ref] = event

    def answered(self, ref: int) -> str | None:
        """The event of the push that reply ``ref`` answers (forgotten now), or ``None``."""
        return self._in_flight.pop(ref, None)

    def forget_replies(self) -> None:
        """The connection is gone: no reply will come for what was written on it."""
        self._in_flight.clear()
