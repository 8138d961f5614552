"""A real OTLP/gRPC metrics receiver for the system tests: the ``MetricsService`` of opentelemetry-proto on
grpcio, writing every export it receives as one JSON line (``MessageToDict`` of the request).

``python -m tests.system.otlp_receiver HOST:PORT OUT.jsonl`` (run inside the gateway's namespace); it prints
``listening`` once bound and serves until killed. :func:`points` flattens the exports for assertions.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.lock = threading.Lock()

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        line = json.dumps(MessageToDict(request))
        with self.lock, self.out.open("a") as f:
            f.write(line + "\n")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def _attrs(kvs: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for kv in kvs:
        value = kv.get("value", {})
        out[kv["key"]] = str(next(iter(value.values()), "")) if value else ""
    return out


def exports(path: Path) -> list[dict[str, Any]]:
    """Every request received so far (a line being written is skipped)."""
    found = []
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def points(export: dict[str, Any]) -> Iterator[tuple[str, dict[str, str], int, dict[str, str]]]:
    """``(metric name, attributes, value, resource attributes)`` for every data point of one export."""
    for rm in export.get("resourceMetrics", []):
        resource = _attrs(rm.get("resource", {}).get("attributes", []))
        for sm in rm.get("scopeMetrics", []):
            for m in sm.get("metrics", []):
                data = m.get("sum") or m.get("gauge") or {}
                for p in data.get("dataPoints", []):
                    value = int(p.get("asInt", p.get("asDouble", 0)))
                    yield m["name"], _attrs(p.get("attributes", [])), value, resource


def main() -> None:
    host_port, out = sys.argv[1], Path(sys.argv[2])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Receiver(out), server)
    if server.add_insecure_port(host_port) == 0:
        raise SystemExit(f"cannot bind {host_port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
