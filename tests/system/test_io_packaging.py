"""System tests for the packaging: the masquerading script inside a network namespace the test creates
(idempotent, touches only that namespace), the systemd unit checked by ``systemd-analyze verify``, and
the sysusers/tmpfiles snippets applied to a scratch root (root required; CI runs as root)."""

from __future__ import annotations

import configparser
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.io_netns import netns, sh

pytestmark = [pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
SCRIPT = REPO / "scripts" / "setup-masquerade.sh"


@pytest.fixture
def ns() -> Iterator[str]:
    with netns("fzmasq") as name:
        yield name


def root_sysctls() -> list[str]:
    keys = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.src_valid_mark"]
    return [Path("/proc/sys", *k.split(".")).read_text() for k in keys]


def test_masquerade_script_is_idempotent_and_namespace_local(ns: str) -> None:
    before = root_sysctls()
    for _ in range(2):
        sh(str(SCRIPT), ns=ns)
    v4_filter = sh("iptables", "-S", "FORWARD", ns=ns).splitlines()
    v4_nat = sh("iptables", "-t", "nat", "-S", "POSTROUTING", ns=ns).splitlines()
    v6_filter = sh("ip6tables", "-S", "FORWARD", ns=ns).splitlines()
    v6_nat = sh("ip6tables", "-t", "nat", "-S", "POSTROUTING", ns=ns).splitlines()
    for rules in (v4_filter, v6_filter):
        assert rules.count("-A FORWARD -i tun-firezone -j ACCEPT") == 1
        assert rules.count("-A FORWARD -o tun-firezone -j ACCEPT") == 1
    for out in ("e+", "w+"):
        assert v4_nat.count(f"-A POSTROUTING -s 100.64.0.0/11 -o {out} -j MASQUERADE") == 1
        assert v6_nat.count(f"-A POSTROUTING -s fd00:2021:1111::/107 -o {out} -j MASQUERADE") == 1
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.src_valid_mark", "net.ipv6.conf.all.forwarding"):
        assert sh("sysctl", "-n", key, ns=ns).strip() == "1"
    assert root_sysctls() == before  # the root namespace was not touched


def test_masquerade_script_custom_interface(ns: str) -> None:
    env = {**os.environ, "FIREZONE_TUN_INTERFACE": "tun-x", "FIREZONE_MASQUERADE_INTERFACES": "veth+"}
    subprocess.run(
        ["ip", "netns", "exec", ns, str(SCRIPT)], env=env, check=True, capture_output=True, timeout=30
    )
    assert "-A FORWARD -i tun-x -j ACCEPT" in sh("iptables", "-S", "FORWARD", ns=ns)
    nat = sh("iptables", "-t", "nat", "-S", "POSTROUTING", ns=ns)
    assert "-o veth+ -j MASQUERADE" in nat and "-o e+" not in nat


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(PACKAGING / "firezone-gateway.service")
    return parser


def test_unit_hardening_matches_the_reference() -> None:
    service = unit()["Service"]
    assert service["User"] == "firezone" and service["Group"] == "firezone"
    assert service["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert service["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert service["LoadCredential"] == "FIREZONE_TOKEN:/etc/firezone/gateway-token"
    for key, value in {
        "ProtectSystem": "full",
        "ProtectHome": "read-only",
        "NoNewPrivileges": "true",
        "RestrictNamespaces": "yes",
        "MemoryDenyWriteExecute": "true",
        "LockPersonality": "true",
        "PrivateTmp": "true",
        "SystemCallFilter": "@system-service",
        "Restart": "always",
        "RestartSec": "7",
        "LimitNOFILE": "4096",
        "LimitNPROC": "512",
        "LimitCORE": "0",
        "InaccessiblePaths": "/root /home",
    }.items():
        assert service[key] == value, key
    families = service["RestrictAddressFamilies"].split()
    assert set(families) == {"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}  # AF_UNIX: asyncio's self-pipe


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = (PACKAGING / "firezone-gateway.service").read_text()
    text = text.replace("/usr/bin/firezone-gateway-init", "/bin/true").replace(
        "/usr/bin/firezone-gateway", "/bin/true"
    )
    path = tmp_path / "firezone-gateway.service"
    path.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "firezone-gateway.service" in line
    ]
    assert result.returncode == 0 and problems == [], result.stderr


def test_sysusers_and_tmpfiles_create_the_layout() -> None:
    with tempfile.TemporaryDirectory(prefix="fzroot") as root:
        Path(root, "etc").mkdir()
        sysusers = PACKAGING / "firezone-gateway.sysusers"
        subprocess.run(["systemd-sysusers", f"--root={root}", str(sysusers)], check=True, capture_output=True)
        entry = next(
            line for line in Path(root, "etc/passwd").read_text().splitlines() if line.startswith("firezone:")
        )
        uid = int(entry.split(":")[2])
        assert entry.endswith(":/usr/sbin/nologin")
        tmpfiles = PACKAGING / "firezone-gateway.tmpfiles"
        subprocess.run(
            ["systemd-tmpfiles", f"--root={root}", "--create", str(tmpfiles)], check=True, capture_output=True
        )
        expected = {
            "etc/firezone": (0o755, uid),
            "etc/firezone/gateway-env": (0o644, uid),
            "etc/firezone/gateway-preset-env": (0o644, uid),
            "etc/firezone/gateway-token": (0o400, 0),
            "var/lib/firezone": (0o770, uid),
        }
        for rel, (mode, owner) in expected.items():
            st = os.stat(Path(root, rel))
            assert (st.st_mode & 0o7777, st.st_uid) == (mode, owner), rel


def test_example_environment_file_has_no_token() -> None:
    text = (PACKAGING / "gateway-env.example").read_text()
    settings = [
        line.split("=", 1)[0].lstrip("#") for line in text.splitlines() if "=" in line and " " not in line
    ]
    assert "FIREZONE_TOKEN" not in settings
    assert {"RUST_LOG", "FIREZONE_LOG_FORMAT", "FIREZONE_NAME", "HEALTH_CHECK_ADDR"} <= set(settings)
