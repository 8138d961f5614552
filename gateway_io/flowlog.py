"""Flow logs: one structured log record per completed TCP/UDP flow, as Firezone's gateway writes them
(``rust/connlib/tunnel/src/gateway.rs``, targets ``flow_logs::tcp`` and ``flow_logs::udp`` at TRACE).

The core's flow tracker (:mod:`gateway_core.policy.flows`) is on when the configuration asks for flow logs
(``--flow-logs``/``FIREZONE_FLOW_LOGS``, or ``RUST_LOG`` containing ``flow_logs=trace``, the reference's
switch); :class:`FlowLog` is a driver observer (it runs in the driver's loop, R1) that drains its completed
flows and writes each as a record on the ``flow_logs.tcp`` or ``flow_logs.udp`` logger with the
reference's field names. Under ``--log-format json`` the fields are the JSON object's keys; the human
format appends them as ``key=value``. Fields the reference leaves out when unknown (client version, device
and identity details, the domain) are left out here too.

Directions are the reference's: ``tx`` is client -> resource (what the gateway sends towards the
resource), ``rx`` resource -> client; bytes are transport payload bytes (TCP or UDP payload, no headers).
Times are RFC 3339 UTC with nanoseconds.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from gateway_core.policy.flows import CompletedFlow
from gateway_io.logging import TRACE

LOGGERS = {"tcp": logging.getLogger("flow_logs.tcp"), "udp": logging.getLogger("flow_logs.udp")}
"""The reference's targets ``flow_logs::tcp``/``flow_logs::udp`` (``::`` is ``.`` here)."""

MESSAGES = {"tcp": "TCP flow completed", "udp": "UDP flow completed"}

MAX_PER_DRAIN = 10_000
"""Records written per observer call; the rest wait for the next (a burst of completions cannot stall the
loop for long: the tracker keeps up to 65,536 completed flows)."""

_CLIENT_FIELDS = (
    ("client_version", "version"),
    ("device_os_name", "device_os_name"),
    ("device_os_version", "device_os_version"),
    ("device_serial", "device_serial"),
    ("device_uuid", "device_uuid"),
    ("device_identifier_for_vendor", "identifier_for_vendor"),
    ("device_firebase_installation_id", "firebase_installation_id"),
    ("identity_id", "identity_id"),
    ("identity_name", "identity_name"),
    ("actor_id", "actor_id"),
    ("actor_email", "actor_email"),
)
"""Record field -> ``ClientProperties`` attribute (the reference's field names)."""


def rfc3339(ns: int) -> str:
    """``2026-01-02T03:04:05.123456789Z`` from nanoseconds since the Unix epoch."""
    secs, frac = divmod(ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(secs, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def fields(flow: CompletedFlow) -> dict[str, object]:
    """The record's fields, in the reference's order (``gateway.rs:486-571``)."""
    out: dict[str, object] = {"client_id": str(flow.client_id)}
    for name, attr in _CLIENT_FIELDS:
        value = getattr(flow.client, attr)
        if value is not None:
            out[name] = value
    out.update(
        resource_id=str(flow.resource_id),
        resource_name=flow.resource_name,
        resource_address=flow.resource_address,
        start=rfc3339(flow.start),
        end=rfc3339(flow.end),
        last_packet=rfc3339(flow.last_packet),
        inner_src_ip=str(flow.inner_src_ip),
        inner_dst_ip=str(flow.inner_dst_ip),
        inner_src_port=flow.inner_src_port,
        inner_dst_port=flow.inner_dst_port,
    )
    if flow.inner_domain is not None:
        out["inner_domain"] = flow.inner_domain
    out.update(
        outer_src_ip=str(flow.outer.src_ip),
        outer_dst_ip=str(flow.outer.dst_ip),
        outer_src_port=flow.outer.src_port,
        outer_dst_port=flow.outer.dst_port,
        rx_packets=flow.rx_packets,
        tx_packets=flow.tx_packets,
        rx_bytes=flow.rx_bytes,
        tx_bytes=flow.tx_bytes,
    )
    return out


class FlowLog:
    """Drains ``poll_flow`` (the core's completed flows) into log records; counts what it wrote."""

    def __init__(self, poll_flow: Callable[[], CompletedFlow | None]) -> None:
        self._poll = poll_flow
        self.records = 0

    def drain(self, _now: int = 0) -> None:
        """Write every completed flow (up to :data:`MAX_PER_DRAIN`); a driver observer."""
        for _ in range(MAX_PER_DRAIN):
            flow = self._poll()
            if flow is None:
                return
            self.records += 1
            logger = LOGGERS[flow.protocol]
            if logger.isEnabledFor(TRACE):
                logger.log(TRACE, MESSAGES[flow.protocol], extra=fields(flow))
