"""Wheels repacked from the distributions installed in the running environment (offline installs).

:func:`repack` writes, for each named distribution and everything it requires (its markers evaluated
for this interpreter, no extras), a wheel made of the files its ``RECORD`` lists under site-packages, with
its own ``WHEEL`` tags and a fresh ``RECORD``. Console scripts are not copied (the installer makes them from
``entry_points.txt``); nor are byte code, ``INSTALLER``, ``REQUESTED`` and ``direct_url.json``. Editable
installs are refused (they hold no files): build those from their sources.

A test can then install with ``pip --no-index --find-links <dir>`` and use no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_SKIPPED = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and all they require, each once, sorted by name."""
    env = {**default_environment(), "extra": ""}
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return [seen[n] for n in sorted(seen)]


def _tag(wheel_text: str) -> str:
    """The compressed tag set of a ``WHEEL`` file (``py3-none-any``, ``cp311-cp311-manylinux_..``)."""
    parts: list[list[str]] = [[], [], []]
    for line in wheel_text.splitlines():
        if line.startswith("Tag:"):
            for i, p in enumerate(line.split(":", 1)[1].strip().split("-")):
                if p not in parts[i]:
                    parts[i].append(p)
    if not parts[0]:
        raise ValueError("WHEEL file without Tag")
    return "-".join(".".join(p) for p in parts)


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack_one(dist: metadata.Distribution, out: Path) -> Path:
    """One installed distribution as a wheel in ``out``; its path."""
    if dist.read_text("direct_url.json") and '"editable": true' in (dist.read_text("direct_url.json") or ""):
        raise ValueError(f"{dist.metadata['Name']} is an editable install: build it from its sources")
    wheel_text = dist.read_text("WHEEL")
    if wheel_text is None:
        raise ValueError(f"{dist.metadata['Name']} has no WHEEL file (not installed from a wheel)")
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = out / f"{name}-{dist.version}-{_tag(wheel_text)}.whl"
    records: list[str] = []
    dist_info = ""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(dist.files or [], key=str):
            parts = f.parts
            if not parts or parts[0] == ".." or "__pycache__" in parts or f.suffix == ".pyc":
                continue
            if parts[0].endswith(".dist-info"):
                dist_info = parts[0]
                if f.name in _SKIPPED:
                    continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            arc = "/".join(parts)
            zf.writestr(arc, data)
            records.append(f"{arc},{_digest(data)},{len(data)}")
        if not dist_info:
            raise ValueError(f"{dist.metadata['Name']}: no .dist-info in its RECORD")
        records.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    return path


def repack(names: list[str], out: Path) -> list[Path]:
    """Wheels of ``names`` and everything they require, in ``out``."""
    return [repack_one(d, out) for d in closure(names)]
