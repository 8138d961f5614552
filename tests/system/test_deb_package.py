"""System test of the Debian package (``make deb``, ``scripts/build-deb.sh``; root, as CI runs).

The package is built once for the module. ``lintian`` must report no error. It is then installed into a
scratch root with ``dpkg --root`` (maintainer scripts run chrootless with ``DPKG_ROOT`` set, so postinst
creates the user, the directories, the settings template and the preset ID inside the scratch root), and
run inside a private mount namespace in which an overlay puts the scratch root's ``/usr`` over the host's:
there ``firezone-gateway --help`` runs from the package's own environment and ``systemd-analyze verify``
checks the installed unit against the installed commands. Nothing outside the scratch root is written;
the overlay disappears with the namespace.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.system]

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 600
"""Seconds the build may take (about a minute: pip installs the dependencies from its cache)."""


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run(
        [str(REPO / "scripts" / "build-deb.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def root(tmp_path: Path, deb: Path) -> Iterator[Path]:
    r = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"):
        (r / d).mkdir(parents=True)
    (r / "var/lib/dpkg/status").touch()
    res = subprocess.run(
        ["dpkg", f"--root={r}", "--force-script-chrootless", "--force-depends", "-i", str(deb)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    try:
        yield r
    finally:
        shutil.rmtree(r, ignore_errors=True)


def _in_overlay(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a private mount namespace whose ``/usr`` is the package's over the host's."""
    mount = f"mount -t overlay fz-deb-test -o lowerdir={root}/usr:/usr /usr"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", f"{mount}\n{script}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lintian_reports_no_error(deb: Path) -> None:
    res = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)], capture_output=True, text=True, timeout=600
    )
    errors = [line for line in res.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], "\n".join(errors)
    assert "firezone-gateway-py" in res.stdout or res.returncode == 0  # lintian ran on the package


def test_control_fields(deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Depends: python3 \(>= 3\.\d+\), python3 \(<< 3\.\d+\),.*iptables", info, re.M)
    for field in ("Conflicts", "Replaces", "Provides"):
        assert re.search(rf"^{field}: firezone-gateway$", info, re.M), field


def test_installed_into_a_scratch_root_it_runs_and_the_unit_verifies(root: Path) -> None:
    # postinst ran: user, directories, settings template, preset ID, byte code.
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^firezone:x:\d+:\d+:.*:/usr/sbin/nologin$", passwd, re.M)
    assert (root / "var/lib/firezone").is_dir()
    assert (root / "etc/firezone/gateway-env").read_text() == (
        REPO / "packaging/gateway-env.example"
    ).read_text()
    assert re.search(
        r"^FIREZONE_ID=[0-9a-f]{32}$", (root / "etc/firezone/gateway-preset-env").read_text(), re.M
    )
    assert any((root / "usr/lib/firezone-gateway/lib").rglob("__pycache__"))
    token = root / "etc/firezone/gateway-token"
    assert token.exists() and token.stat().st_mode & 0o777 == 0o400

    unit = root / "lib/systemd/system/firezone-gateway.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(unit)
    assert parser["Service"]["ExecStart"] == "/usr/bin/firezone-gateway"
    assert parser["Service"]["CapabilityBoundingSet"] == "CAP_NET_ADMIN"

    res = _in_overlay(
        root,
        "readlink -f /usr/bin/firezone-gateway\n"
        "firezone-gateway --help\n"
        "firezone-gateway --no-check </dev/null && exit 9 || echo exit=$?\n"
        f"systemd-analyze verify {unit}\n"
        "echo verified",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "/usr/lib/firezone-gateway/bin/firezone-gateway" in out
    assert "--validate-checksums" in out
    assert "FIREZONE_TOKEN: not set" in out and "exit=2" in out  # configuration error: one line, exit 2
    assert [line for line in out.splitlines() if "firezone-gateway.service" in line] == []
    assert res.stdout.rstrip().endswith("verified")


def test_removal_leaves_the_operators_files(root: Path, deb: Path) -> None:
    (root / "etc/firezone/gateway-env").write_text("FIREZONE_NAME=kept\n")
    subprocess.run(
        [
            "dpkg",
            f"--root={root}",
            "--force-script-chrootless",
            "--force-depends",
            "--purge",
            "firezone-gateway-py",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert not (root / "usr/lib/firezone-gateway").exists()
    assert not (root / "usr/bin/firezone-gateway").exists()
    assert (root / "etc/firezone/gateway-env").read_text() == "FIREZONE_NAME=kept\n"
