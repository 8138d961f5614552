"""Daemon configuration: Firezone's settings, one-line errors naming the setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_io.config import ConfigError, load


def env(**kw: str) -> dict[str, str]:
    base = {"FIREZONE_TOKEN": "tok", "FIREZONE_ID": "gw-1"}
    base.update(kw)
    return base


def test_defaults(tmp_path: Path) -> None:
    c = load([], env(), id_file=tmp_path / "id")
    assert c.token == "tok"
    assert c.firezone_id == "gw-1"
    assert c.api_url == "wss://api.firezone.dev"
    assert c.health_check_addr == ("0.0.0.0", 8080)
    assert c.log_format == "human"
    assert c.dns_client_qps == 100
    assert load([], env(FIREZONE_DNS_CLIENT_QPS="0"), id_file=tmp_path / "id").dns_client_qps == 0


def test_cli_overrides_env(tmp_path: Path) -> None:
    c = load(["other", "-i", "x", "-u", "ws://127.0.0.1:4000", "-n", "gw"], env(), id_file=tmp_path / "id")
    assert (c.token, c.firezone_id, c.api_url, c.name) == ("other", "x", "ws://127.0.0.1:4000", "gw")


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        ({"FIREZONE_API_URL": "ftp://x"}, "FIREZONE_API_URL"),
        ({"FIREZONE_API_URL": "wss://"}, "FIREZONE_API_URL"),
        ({"FIREZONE_LOG_FORMAT": "xml"}, "FIREZONE_LOG_FORMAT"),
        ({"FIREZONE_DNS_CLIENT_QPS": "-1"}, "FIREZONE_DNS_CLIENT_QPS"),
        ({"FIREZONE_DNS_CLIENT_QPS": "lots"}, "FIREZONE_DNS_CLIENT_QPS"),
        ({"HEALTH_CHECK_ADDR": "nope"}, "HEALTH_CHECK_ADDR"),
        ({"HEALTH_CHECK_ADDR": "0.0.0.0:99999"}, "HEALTH_CHECK_ADDR"),
        ({"FIREZONE_NO_TELEMETRY": "maybe"}, "FIREZONE_NO_TELEMETRY"),
        ({"FIREZONE_TOKEN": ""}, "FIREZONE_TOKEN"),
    ],
)
def test_bad_setting_names_itself(tmp_path: Path, extra: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as e:
        load([], env(**extra), id_file=tmp_path / "id")
    msg = str(e.value)
    assert msg.startswith(setting + ":")
    assert "\n" not in msg


def test_token_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "FIREZONE_TOKEN").write_text("  secret\n")
    c = load([], {"FIREZONE_ID": "a", "CREDENTIALS_DIRECTORY": str(tmp_path)}, id_file=tmp_path / "id")
    assert c.token == "secret"


def test_id_file_created_then_parsed_as_json(tmp_path: Path) -> None:
    id_file = tmp_path / "sub" / "gateway_id"
    first = load([], {"FIREZONE_TOKEN": "t"}, id_file=id_file)
    assert len(first.firezone_id) == 64
    assert json.loads(id_file.read_text()) == {"id": first.firezone_id}
    second = load([], {"FIREZONE_TOKEN": "t"}, id_file=id_file)
    assert second.firezone_id == first.firezone_id  # HEAD behaviour, not the reference's raw-text quirk


def test_daemon_exits_with_one_line_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gateway_io"],
        env={"FIREZONE_ID": "x", "FIREZONE_API_URL": "ftp://bad", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "FIREZONE_API_URL" in lines[0]


# --- metrics and flow logs ------------------------------------------------------------------------


def test_metrics_settings_take_the_reference_values(tmp_path: Path) -> None:
    idf = tmp_path / "id"
    c = load([], env(), id_file=idf)
    assert (c.metrics, c.otlp_grpc_endpoint, c.flow_logs) == (None, None, False)
    c = load([], env(FIREZONE_METRICS="otel-collector", OTLP_GRPC_ENDPOINT="collector:4317"), id_file=idf)
    assert (c.metrics, c.otlp_grpc_endpoint) == ("otel-collector", "collector:4317")
    c = load(["--metrics", "stdout", "--otlp-grpc-endpoint", "http://[::1]:4317"], env(), id_file=idf)
    assert (c.metrics, c.otlp_grpc_endpoint) == ("stdout", "[::1]:4317")
    assert load([], env(FIREZONE_METRICS=""), id_file=idf).metrics is None  # empty: unset


def test_flow_logs_by_flag_env_or_the_reference_directive(tmp_path: Path) -> None:
    idf = tmp_path / "id"
    assert load(["--flow-logs"], env(), id_file=idf).flow_logs
    assert load([], env(FIREZONE_FLOW_LOGS="true"), id_file=idf).flow_logs
    assert load([], env(RUST_LOG="info,flow_logs=trace"), id_file=idf).flow_logs
    assert not load([], env(RUST_LOG="info,flow_logs=debug"), id_file=idf).flow_logs


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        ({"FIREZONE_METRICS": "prometheus"}, "FIREZONE_METRICS"),
        ({"FIREZONE_METRICS": "otel_collector"}, "FIREZONE_METRICS"),
        ({"OTLP_GRPC_ENDPOINT": "collector"}, "OTLP_GRPC_ENDPOINT"),
        ({"OTLP_GRPC_ENDPOINT": "collector:0"}, "OTLP_GRPC_ENDPOINT"),
        ({"OTLP_GRPC_ENDPOINT": "https://collector:4317/v1"}, "OTLP_GRPC_ENDPOINT"),
        ({"FIREZONE_FLOW_LOGS": "sometimes"}, "FIREZONE_FLOW_LOGS"),
    ],
)
def test_bad_metrics_setting_names_itself(tmp_path: Path, extra: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as e:
        load([], env(**extra), id_file=tmp_path / "id")
    assert str(e.value).startswith(setting + ":") and "\n" not in str(e.value)


def test_help_lists_the_metrics_flags_and_a_bad_value_stops_the_daemon() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gateway_io", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    for flag in ("--metrics", "--otlp-grpc-endpoint", "--flow-logs"):
        assert flag in r.stdout, r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "gateway_io", "--no-check"],
        env={
            "FIREZONE_ID": "x",
            "FIREZONE_TOKEN": "t",
            "FIREZONE_METRICS": "graphite",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("firezone-gateway: FIREZONE_METRICS:"), r.stderr
