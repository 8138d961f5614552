"""The portal login URL and the User-Agent of the gateway, pure (Firezone:
``rust/connlib/phoenix-channel/src/login_url.rs``, ``rust/connlib/phoenix-channel/src/get_user_agent.rs``).

The IO layer gathers the facts (host name, OS name and version, architecture, kernel release, the
public key); these functions only combine them, so they are tested without touching the machine.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORT = 443
"""Firezone dials 443 when the URL has no port, also for ``ws://`` (``login_url.rs:220-227``)."""

GATEWAY_VERSION = "1.4.18"
"""The Firezone gateway version we speak; the portal routes clients by it
(``elixir/apps/domain/lib/domain/gateways.ex``)."""

_SCHEMES = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_UUID_FORMS = (
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    re.compile(r"[0-9a-f]{32}"),
    re.compile(r"\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}"),
    re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
)
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


class LoginUrlError(ValueError):
    """The API URL cannot be turned into a login URL (bad scheme, no host)."""


@dataclass(frozen=True, slots=True)
class LoginUrl:
    """Where and how to open the portal WebSocket."""

    scheme: str
    """``wss`` (TLS) or ``ws`` (plain, development only)."""
    host: str
    """Host name or IP literal (IPv6 without brackets)."""
    port: int
    """Port to dial: the URL's explicit port, else 443."""
    path_query: str
    """``/gateway/websocket?token=…&external_id=…&name=…&public_key=…``."""

    @property
    def tls(self) -> bool:
        return self.scheme == "wss"

    @property
    def url(self) -> str:
        """The URL to dial, port always explicit (it may differ from the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path_query}"

    def redacted(self) -> str:
        """The URL for logs, with the secret token replaced."""
        return re.sub(r"token=[^&]*", "token=<redacted>", self.url)


def form_encode(pairs: list[tuple[str, str]]) -> str:
    """``application/x-www-form-urlencoded`` as the ``url`` crate writes it (``*-._`` kept, space ``+``)."""
    out = []
    for k, v in pairs:
        parts = []
        for text in (k, v):
            enc = []
            for b in text.encode("utf-8"):
                if b in _FORM_SAFE:
                    enc.append(chr(b))
                elif b == 0x20:
                    enc.append("+")
                else:
                    enc.append(f"%{b:02X}")
            parts.append("".join(enc))
        out.append("=".join(parts))
    return "&".join(out)


def external_id(firezone_id: str) -> str:
    """What is sent as ``external_id``: SHA-256 hex of a UUID-shaped ID, any other ID verbatim."""
    lowered = firezone_id.lower()
    if any(p.fullmatch(lowered) for p in _UUID_FORMS):
        return hashlib.sha256(firezone_id.encode("utf-8")).hexdigest()
    return firezone_id


def login_url(api_url: str, token: str, firezone_id: str, name: str, public_key: bytes) -> LoginUrl:
    """The gateway's login URL (``LoginUrl::gateway`` + the public-key finisher)."""
    if len(public_key) != 32:
        raise LoginUrlError("public key must be 32 bytes")
    try:
        parts = urlsplit(api_url)
        explicit_port = parts.port
    except ValueError as e:
        raise LoginUrlError(f"invalid API URL: {e}") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise LoginUrlError(f"invalid scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise LoginUrlError("API URL has no host")
    if explicit_port == _DEFAULT_PORTS[scheme] or explicit_port is None:
        # The url crate forgets a port equal to the scheme default; Firezone then dials 443.
        port = DEFAULT_PORT
    else:
        port = explicit_port
    segments = parts.path.split("/")[1:] if parts.path else []
    if segments and segments[-1] == "":
        segments.pop()
    path = "/" + "/".join([*segments, "gateway", "websocket"])
    query = form_encode(
        [
            ("token", token),
            ("external_id", external_id(firezone_id)),
            ("name", name),
            ("public_key", base64.b64encode(public_key).decode("ascii")),
        ]
    )
    return LoginUrl(scheme, host, port, f"{path}?{query}")


def user_agent(
    os_type: str,
    os_version: str,
    arch: str | None,
    kernel_release: str | None,
    version: str = GATEWAY_VERSION,
) -> str:
    """``{os_type}/{os_version} gateway/{version}[ ({arch}; {kernel})]``, non-ASCII removed."""
    extra = ""
    if arch and kernel_release:
        extra = f" ({arch}; {kernel_release})"
    elif arch:
        extra = f" ({arch})"
    elif kernel_release:
        extra = f" ({kernel_release})"
    ua = f"{os_type}/{os_version} gateway/{version}{extra}"
    # Control characters would make an invalid header; Firezone only strips non-ASCII.
    return "".join(c for c in ua if c.isascii() and c.isprintable())
