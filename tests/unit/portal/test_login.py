"""Login URL and User-Agent (Firezone: ``rust/connlib/phoenix-channel/src/login_url.rs``,
``rust/connlib/phoenix-channel/src/get_user_agent.rs``)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway_core.portal.login import LoginUrlError, external_id, form_encode, login_url, user_agent

KEY = base64.b64decode("OR2dYCLwMEtwqtjOxSm4SU7BbHJDfM8ZCqK7HKXXxDw=")


def test_default_portal_url() -> None:
    u = login_url("wss://api.firezone.dev", ".SFMyNTY.g2gD", "gw-id-1", "gw-eu-1", KEY)
    assert (u.scheme, u.host, u.port, u.tls) == ("wss", "api.firezone.dev", 443, True)
    assert u.path_query == (
        "/gateway/websocket?token=.SFMyNTY.g2gD&external_id=gw-id-1&name=gw-eu-1"
        "&public_key=OR2dYCLwMEtwqtjOxSm4SU7BbHJDfM8ZCqK7HKXXxDw%3D"
    )
    assert u.url.startswith("wss://api.firezone.dev:443/gateway/websocket?")
    assert "SFMyNTY" not in u.redacted() and "token=<redacted>" in u.redacted()


@pytest.mark.parametrize(
    ("api", "scheme", "port", "path"),
    [
        ("https://h/prefix/", "wss", 443, "/prefix/gateway/websocket"),
        ("wss://h/prefix", "wss", 443, "/prefix/gateway/websocket"),
        ("http://h:8081", "ws", 8081, "/gateway/websocket"),
        ("ws://h:80/", "ws", 443, "/gateway/websocket"),  # default port forgotten, 443 dialled (quirk)
        ("ws://h", "ws", 443, "/gateway/websocket"),
        ("wss://h:8443/?x=1&token=old", "wss", 8443, "/gateway/websocket"),
        ("ws://[::1]:8081", "ws", 8081, "/gateway/websocket"),
    ],
)
def test_scheme_port_path(api: str, scheme: str, port: int, path: str) -> None:
    u = login_url(api, "t", "id", "n", KEY)
    assert (u.scheme, u.port) == (scheme, port)
    parts = urlsplit(u.url)
    assert parts.path == path
    assert [k for k, _ in parse_qsl(parts.query)] == ["token", "external_id", "name", "public_key"]


def test_ipv6_host_is_bracketed_in_url() -> None:
    u = login_url("ws://[::1]:8081", "t", "id", "n", KEY)
    assert u.host == "::1" and u.url.startswith("ws://[::1]:8081/")


@pytest.mark.parametrize("api", ["ftp://h", "h:443", "wss://", "wss://h:99999"])
def test_bad_api_urls(api: str) -> None:
    with pytest.raises(LoginUrlError):
        login_url(api, "t", "id", "n", KEY)


def test_key_must_be_32_bytes() -> None:
    with pytest.raises(LoginUrlError):
        login_url("wss://h", "t", "id", "n", b"x" * 31)


@pytest.mark.parametrize(
    "fid",
    [
        "3abd725a-733b-4801-ac16-72f26cd98a24",
        "3ABD725A-733B-4801-AC16-72F26CD98A24",
        "3abd725a733b4801ac1672f26cd98a24",
        "{3abd725a-733b-4801-ac16-72f26cd98a24}",
        "urn:uuid:3abd725a-733b-4801-ac16-72f26cd98a24",
    ],
)
def test_uuid_ids_are_hashed(fid: str) -> None:
    assert external_id(fid) == hashlib.sha256(fid.encode()).hexdigest()


@pytest.mark.parametrize("fid", ["gw-1", "a" * 64, '{"id":"abc"}', "3abd725a-733b-4801-ac16-72f26cd98a2"])
def test_other_ids_verbatim(fid: str) -> None:
    assert external_id(fid) == fid


def test_form_encoding_like_url_crate() -> None:
    assert form_encode([("k", "a b+c/d=e*f-g.h_i~j")]) == "k=a+b%2Bc%2Fd%3De*f-g.h_i%7Ej"
    assert form_encode([("n", "gw é")]) == "n=gw+%C3%A9"


def test_user_agent() -> None:
    assert user_agent("Ubuntu", "22.4.0", "x86_64", "6.8.0-1036-azure") == (
        "Ubuntu/22.4.0 gateway/1.4.18 (x86_64; 6.8.0-1036-azure)"
    )
    assert user_agent("Fedora", "42.0.0", "arm64", "24.1.0", version="1.4.5") == (
        "Fedora/42.0.0 gateway/1.4.5 (arm64; 24.1.0)"
    )
    assert user_agent("Debian", "12", "x86_64", None) == "Debian/12 gateway/1.4.18 (x86_64)"
    assert user_agent("Debian", "12", None, "6.1") == "Debian/12 gateway/1.4.18 (6.1)"
    assert user_agent("Debian", "12", None, None) == "Debian/12 gateway/1.4.18"
    assert user_agent("Débian", "12\n", None, None) == "Dbian/12 gateway/1.4.18"
