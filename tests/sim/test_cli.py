"""The simulator CLI: determinism across processes, the pcap decoded by the real tshark, the demo."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sim.cli import main, parse_duration
from sim.pcap import LINKTYPE_RAW, read_pcap

ROOT = Path(__file__).resolve().parents[2]


def _sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "random"},
    )


def test_same_seed_gives_byte_identical_traces_in_separate_processes(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    out1 = _sim("run", "--seed", "7", "--trace", "a.jsonl", "--pcap", "a.pcap", cwd=tmp_path / "1")
    out2 = _sim("run", "--seed", "7", "--trace", "a.jsonl", "--pcap", "a.pcap", cwd=tmp_path / "2")
    a = (tmp_path / "1" / "a.jsonl").read_bytes()
    b = (tmp_path / "2" / "a.jsonl").read_bytes()
    assert len(a) > 10_000
    assert a == b
    assert (tmp_path / "1" / "a.pcap").read_bytes() == (tmp_path / "2" / "a.pcap").read_bytes()
    assert out1.stdout == out2.stdout
    _sim("run", "--seed", "8", "--trace", "b.jsonl", cwd=tmp_path / "1")
    assert (tmp_path / "1" / "b.jsonl").read_bytes() != a


def test_trace_lines_are_canonical_json(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    assert main(["run", "--seed", "3", "--duration", "2", "--trace", str(trace)]) == 0
    lines = trace.read_text().splitlines()
    events = Counter()
    last_t = 0
    for line in lines:
        rec = json.loads(line)
        assert json.dumps(rec, sort_keys=True, separators=(",", ":")) == line
        assert isinstance(rec["t"], int) and rec["t"] >= last_t
        last_t = rec["t"]
        events[rec["ev"]] += 1
    assert events["send"] > 0 and events["deliver"] > 0 and events["timeout"] > 0 and events["drop"] > 0
    assert last_t <= 2_000_000_000


def _tshark_fields(pcap: Path, *fields: str) -> list[list[str]]:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is missing: it is in scripts/debian-packages.txt (make deps installs it)"
    cmd = [
        tshark,
        "-n",
        "-r",
        str(pcap),
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return [line.split("|") for line in res.stdout.splitlines()]


def test_tshark_decodes_a_simulated_run(tmp_path: Path) -> None:
    pcap, trace = tmp_path / "run.pcap", tmp_path / "run.jsonl"
    assert main(["run", "--seed", "7", "--pcap", str(pcap), "--trace", str(trace)]) == 0
    delivered = [r for r in map(json.loads, trace.read_text().splitlines()) if r["ev"] == "deliver"]
    expect = Counter((r["l4"], r["src"], r["dst"]) for r in delivered)
    n_udp = sum(1 for r in delivered if r["l4"] == 17)
    n_icmp = sum(1 for r in delivered if r["l4"] == 1)
    n_icmp6 = sum(1 for r in delivered if r["l4"] == 58)
    assert n_udp and n_icmp and n_icmp6

    records = read_pcap(pcap.read_bytes())
    assert len(records) == len(delivered)

    rows = _tshark_fields(
        pcap,
        "frame.protocols",
        "ip.src",
        "ip.dst",
        "ipv6.src",
        "ipv6.dst",
        "udp.srcport",
        "udp.dstport",
        "ip.checksum.status",
        "udp.checksum.status",
        "icmp.checksum.status",
        "icmpv6.checksum.status",
        "icmp.type",
        "icmpv6.type",
        "_ws.malformed",
        "_ws.expert.severity",
        "frame.time_epoch",
    )
    assert len(rows) == len(delivered)
    got: Counter[tuple[int, str, str]] = Counter()
    for row, rec in zip(rows, delivered, strict=True):
        (
            protos,
            s4,
            d4,
            s6,
            d6,
            sport,
            dport,
            ipck,
            udpck,
            icmpck,
            icmp6ck,
            t4,
            t6,
            malformed,
            severity,
            epoch,
        ) = row
        assert malformed == "" and severity == "", row
        assert protos.startswith("raw:ip"), row
        src, dst = (s4, d4) if s4 else (s6, d6)
        if "udp" in protos.split(":"):
            l4 = 17
            src, dst = (
                (f"{src}:{sport}", f"{dst}:{dport}") if s4 else (f"[{src}]:{sport}", f"[{dst}]:{dport}")
            )
            assert udpck == "1", row  # 1: good
        elif "icmpv6" in protos.split(":"):
            l4 = 58
            assert icmp6ck == "1" and t6 in ("128", "129"), row
        else:
            assert "icmp" in protos.split(":"), row
            l4 = 1
            assert icmpck == "1" and t4 in ("0", "8"), row
        if s4:
            assert ipck == "1", row
        got[(l4, src, dst)] += 1
        assert epoch.replace(".", "").lstrip("0") == str(1_762_214_400_000_000_000 + rec["t"]), row
    assert got == expect


def test_pcap_header_is_nanosecond_raw_ip(tmp_path: Path) -> None:
    pcap = tmp_path / "x.pcap"
    assert main(["run", "--seed", "1", "--duration", "1", "--pcap", str(pcap)]) == 0
    data = pcap.read_bytes()
    assert data[:4] == bytes.fromhex("4d3cb2a1")  # 0xa1b23c4d little-endian
    assert int.from_bytes(data[20:24], "little") == LINKTYPE_RAW
    assert read_pcap(data)


def test_demo_prints_a_play_by_play(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "*** partition alice | server" in out and "*** heal alice | server" in out
    assert "DROPPED: partition" in out
    assert "ICMPv6 echo reply" in out and "UDP" in out
    assert "rtt min/avg/max" in out


def test_run_prints_a_summary_per_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--seed", "7", "--duration", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("server", "carol", "alice", "bob"):
        assert f"\n{name}: " in out
    assert "network: sent" in out and "lost" in out and "duplicates" in out


def test_parse_duration_is_exact() -> None:
    assert parse_duration("2.5") == 2_500_000_000
    assert parse_duration("0.000000001") == 1
    assert parse_duration("10") == 10_000_000_000
    for bad in ("-1", "abc", "0.0000000001", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
