"""The daemon's configuration, read like Firezone's gateway reads it (``rust/gateway/src/main.rs``,
``rust/bin-shared/src/device_id.rs``).

Bad configuration stops the daemon with one line that names the setting and what is wrong
(:class:`ConfigError`); nothing here is fatal in any other way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway_core.dns.forwarding import CLIENT_RATE

DEFAULT_API_URL = "wss://api.firezone.dev"
DEFAULT_ID_FILE = Path("/var/lib/firezone/gateway_id")
DEFAULT_HEALTH_CHECK_ADDR = "0.0.0.0:8080"
MAX_QPS = 1_000_000
"""Largest ``FIREZONE_DNS_CLIENT_QPS`` (a limit above the gateway's own throughput is no limit)."""


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and says what is wrong."""


@dataclass(frozen=True, slots=True)
class Config:
    token: str
    firezone_id: str
    api_url: str
    name: str
    health_check_addr: tuple[str, int]
    log_format: str
    log_filter: str
    no_check: bool
    validate_checksums: bool
    no_inc_buf: bool = False
    """Do not raise ``net.core.rmem_max``/``wmem_max`` at start-up (``--no-inc-buf``)."""
    dns_client_qps: int = CLIENT_RATE
    """SRV/TXT queries per second one client may forward (``FIREZONE_DNS_CLIENT_QPS``; 0: no limit;
    not a Firezone setting: decision 0111)."""
    # --- metrics and flow logs (docs/operations.md "Metrics and flow logs"; decision 0160) ---
    metrics: str | None = None
    """Where metrics are exported (``--metrics``/``FIREZONE_METRICS``): ``stdout``, ``otel-collector``
    or ``None`` (only ``GET /metrics`` on the health-check listener)."""
    otlp_grpc_endpoint: str | None = None
    """``HOST:PORT`` of the OTLP gRPC collector (``--otlp-grpc-endpoint``/``OTLP_GRPC_ENDPOINT``)."""
    flow_logs: bool = False
    """One record per TCP/UDP flow on the ``flow_logs`` logger (``--flow-logs``/``FIREZONE_FLOW_LOGS``,
    or ``RUST_LOG`` containing ``flow_logs=trace`` as Firezone takes it)."""
    check_deadlines: bool = False
    """Debug mode (``FIREZONE_CHECK_DEADLINES``): every ``poll_timeout`` of the core is compared with the
    deadline recomputed from every connection and client; a stale kept deadline stops the daemon
    (decision 0140). Costs O(clients) per loop turn: for tests and diagnosis only."""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _bool(setting: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{setting}: expected true or false, got {value!r}")


def _count(setting: str, value: str, maximum: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        n = -1
    if not 0 <= n <= maximum:
        raise ConfigError(f"{setting}: expected a whole number from 0 to {maximum}, got {value!r}")
    return n


def _host_port(setting: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{setting}: port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{setting}: port {p} is out of range 0-65535")
    return host, p


METRICS_EXPORTERS = ("stdout", "otel-collector")
"""``FIREZONE_METRICS`` values (Firezone's ``MetricsExporter`` enum, kebab-case as clap spells it)."""

FLOW_LOGS_DIRECTIVE = "flow_logs=trace"
"""The ``RUST_LOG`` text that turns flow logs on in Firezone (``flow_tracker.rs``: ``IS_ENABLED``)."""


def _metrics(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    v = value.strip().lower()
    if v not in METRICS_EXPORTERS:
        raise ConfigError(f"FIREZONE_METRICS: expected one of {', '.join(METRICS_EXPORTERS)}, got {value!r}")
    return v


def _otlp_endpoint(value: str | None) -> str | None:
    """``HOST:PORT`` (Firezone prefixes ``http://``); an ``http://`` prefix given here is accepted too."""
    if value is None or not value.strip():
        return None
    v = value.strip()
    bare = v.removeprefix("http://")
    if "/" in bare:
        raise ConfigError(f"OTLP_GRPC_ENDPOINT: expected HOST:PORT, got {value!r}")
    host, port = _host_port("OTLP_GRPC_ENDPOINT", bare)
    if port == 0:
        raise ConfigError(f"OTLP_GRPC_ENDPOINT: port 0 is not a collector's port, got {value!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _api_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise ConfigError(f"FIREZONE_API_URL: scheme must be wss:// (ws:// for development), got {value!r}")
    if not parts.hostname:
        raise ConfigError(f"FIREZONE_API_URL: no host in {value!r}")
    return value


def _read_token(cli_token: str | None, env: Mapping[str, str]) -> str:
    token = cli_token if cli_token is not None else env.get("FIREZONE_TOKEN")
    if token:
        return token
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / "FIREZONE_TOKEN"
        try:
            token = path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"FIREZONE_TOKEN: not set and {path} unreadable ({e.strerror})") from None
        if token:
            return token
    raise ConfigError("FIREZONE_TOKEN: not set (pass it as argument, in the environment or as a credential)")


def _read_id(cli_id: str | None, env: Mapping[str, str], id_file: Path) -> str:
    """FIREZONE_ID, else the ID file (parsed as JSON, HEAD behaviour), else a new ID written to it."""
    value = cli_id if cli_id is not None else env.get("FIREZONE_ID", "")
    if value:
        return value
    try:
        text = id_file.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise ConfigError(f"FIREZONE_ID: not set and {id_file} unreadable ({e.strerror})") from None
    if text.strip():
        try:
            doc = json.loads(text)
            if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]:
                return str(doc["id"])
        except json.JSONDecodeError:
            pass
        return text  # a raw ID written by hand
    import hashlib
    import uuid

    new_id = hashlib.sha256(str(uuid.uuid4()).encode()).hexdigest()
    try:
        id_file.parent.mkdir(mode=0o770, parents=True, exist_ok=True)
        fd = os.open(id_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as f:
            json.dump({"id": new_id}, f)
    except OSError as e:
        raise ConfigError(
            f"FIREZONE_ID: not set and cannot create {id_file} ({e.strerror}); set FIREZONE_ID"
        ) from None
    return new_id


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firezone-gateway", description="Firezone Gateway (Python)")
    p.add_argument("token", nargs="?", default=None, help="portal token (or FIREZONE_TOKEN)")
    p.add_argument("-u", "--api-url", default=None, help="portal URL (FIREZONE_API_URL)")
    p.add_argument("-n", "--firezone-name", default=None, help="display name (FIREZONE_NAME)")
    p.add_argument("-i", "--firezone-id", default=None, help="gateway identity (FIREZONE_ID)")
    p.add_argument("--no-check", action="store_true", help="skip the CAP_NET_ADMIN check")
    p.add_argument("--health-check-addr", default=None, help="HOST:PORT (HEALTH_CHECK_ADDR)")
    p.add_argument("--log-format", default=None, help="human or json (FIREZONE_LOG_FORMAT)")
    p.add_argument("--no-telemetry", action="store_true", help="accepted for compatibility; no telemetry")
    p.add_argument(
        "--validate-checksums",
        action="store_true",
        help="drop and count packets with a bad IPv4/TCP/UDP checksum (FIREZONE_VALIDATE_CHECKSUMS)",
    )
    p.add_argument(
        "--no-inc-buf", action="store_true", help="don't raise net.core buffer limits (FIREZONE_NO_INC_BUF)"
    )
    # Metrics and flow logs (one block; docs/operations.md "Metrics and flow logs").
    p.add_argument(
        "--metrics",
        default=None,
        metavar="{stdout,otel-collector}",
        help="export metrics to stdout or an OTLP collector (FIREZONE_METRICS)",
    )
    p.add_argument(
        "--otlp-grpc-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="OTLP gRPC collector for --metrics otel-collector (OTLP_GRPC_ENDPOINT)",
    )
    p.add_argument(
        "--flow-logs",
        action="store_true",
        help=f"log one record per TCP/UDP flow (FIREZONE_FLOW_LOGS; or RUST_LOG with {FLOW_LOGS_DIRECTIVE})",
    )
    p.add_argument("-V", "--version", action="version", version="firezone-gateway-py 0.1.0")
    return p


def load(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    id_file: Path = DEFAULT_ID_FILE,
) -> Config:
    """Parse ``argv`` and ``env`` into a :class:`Config` or raise :class:`ConfigError`."""
    env = os.environ if env is None else env
    args = parser().parse_args(argv)
    api_url = _api_url(args.api_url or env.get("FIREZONE_API_URL") or DEFAULT_API_URL)
    log_format = (args.log_format or env.get("FIREZONE_LOG_FORMAT") or "human").lower()
    if log_format not in ("human", "json"):
        raise ConfigError(f"FIREZONE_LOG_FORMAT: expected human or json, got {log_format!r}")
    health = args.health_check_addr or env.get("HEALTH_CHECK_ADDR") or DEFAULT_HEALTH_CHECK_ADDR
    validate = args.validate_checksums or _bool(
        "FIREZONE_VALIDATE_CHECKSUMS", env.get("FIREZONE_VALIDATE_CHECKSUMS", "false")
    )
    _bool("FIREZONE_NO_TELEMETRY", env.get("FIREZONE_NO_TELEMETRY", "false"))
    no_inc_buf = args.no_inc_buf or _bool("FIREZONE_NO_INC_BUF", env.get("FIREZONE_NO_INC_BUF", "false"))
    log_filter = env.get("RUST_LOG", "info")
    metrics = _metrics(args.metrics if args.metrics is not None else env.get("FIREZONE_METRICS"))
    otlp = _otlp_endpoint(
        args.otlp_grpc_endpoint if args.otlp_grpc_endpoint is not None else env.get("OTLP_GRPC_ENDPOINT")
    )
    flow_logs = (
        args.flow_logs
        or _bool("FIREZONE_FLOW_LOGS", env.get("FIREZONE_FLOW_LOGS", "false"))
        or FLOW_LOGS_DIRECTIVE in log_filter
    )
    return Config(
        token=_read_token(args.token, env),
        firezone_id=_read_id(args.firezone_id, env, id_file),
        api_url=api_url,
        name=args.firezone_name or env.get("FIREZONE_NAME") or socket.gethostname(),
        health_check_addr=_host_port("HEALTH_CHECK_ADDR", health),
        log_format=log_format,
        log_filter=log_filter,
        no_check=args.no_check,
        validate_checksums=validate,
        no_inc_buf=no_inc_buf,
        check_deadlines=_bool("FIREZONE_CHECK_DEADLINES", env.get("FIREZONE_CHECK_DEADLINES", "false")),
        dns_client_qps=_count(
            "FIREZONE_DNS_CLIENT_QPS", env.get("FIREZONE_DNS_CLIENT_QPS", str(CLIENT_RATE)), MAX_QPS
        ),
        metrics=metrics,
        otlp_grpc_endpoint=otlp,
        flow_logs=flow_logs,
    )
