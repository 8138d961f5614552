"""A trace of a simulated run as JSON lines.

Every record is one JSON object on one line with sorted keys, no spaces, integer times (ns) and payloads in
hex, so two runs with the same seed produce byte-identical files. Records (field ``ev``):

- ``send``: a packet left a host (``id``, ``host``, ``proto``, ``src``, ``dst``, ``len``).
- ``deliver``: a copy of a packet reached its receiver (``sent``, ``copy`` = 0 first, 1 duplicate,
  ``payload`` in hex).
- ``drop``: the network dropped a packet (``reason``, a :class:`sim.net.NetDrop` value).
- ``timeout``: a component's deadline was served (``host``, ``reason``, ``at``).
- ``stream_*``: the reliable byte-stream events (open, frame, close) used for the portal.
- ``action``: a scenario action (partition, heal, ...) with a human-readable ``what``.
- ``exit``: a component reported :class:`~gateway_core.commands.Exit`.

``proto`` is ``udp`` for a datagram (``src``/``dst`` are socket addresses) or ``ip`` for a raw IP packet
(``src``/``dst`` are addresses, ``l4`` is the IP protocol number).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import IO

TraceValue = int | str | bool | None
Record = dict[str, TraceValue]


def encode(record: Record) -> str:
    """One record as its canonical JSON line (without the newline)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class Trace:
    """Collects records; writes them to ``sink`` (a text file) and hands them to listeners as they happen."""

    __slots__ = ("keep", "listeners", "records", "sink")

    def __init__(self, sink: IO[str] | None = None, keep: bool = False) -> None:
        self.sink = sink
        self.keep = keep
        self.records: list[Record] = []
        self.listeners: list[Callable[[Record], None]] = []

    def emit(self, record: Record) -> None:
        for key, value in record.items():
            # Floats would make traces drift; bytes would not serialise deterministically.
            assert value is None or isinstance(value, int | str), f"trace field {key} has {type(value)}"
        if self.sink is not None:
            self.sink.write(encode(record))
            self.sink.write("\n")
        if self.keep:
            self.records.append(record)
        for listener in self.listeners:
            listener(record)
