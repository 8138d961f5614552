"""Domain pattern matching (Firezone's ``rust/connlib/tunnel/src/dns.rs``): documented examples, the
reference's test cases, and a property test against a direct model of the Rust ``glob`` crate's backtracking
matcher."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_core.dns.patterns import is_subdomain, is_valid_pattern

MATCHES = [
    ("**.example.com", "example.com"),
    ("**.example.com", "a.b.example.com"),
    ("**.example.com", "foo.example.com"),
    ("app.**.example.com", "app.bar.foo.example.com"),
    ("*.example.com", "foo.example.com"),
    ("*.example.com", "example.com"),
    ("foo.*.example.com", "foo.bar.example.com"),
    ("app.*.*.example.com", "app.foo.bar.example.com"),
    ("app.f??.example.com", "app.foo.example.com"),
    ("app.example.com", "app.example.com"),
    ("*?*.example.com", "app.example.com"),
    ("app.**.web.**.example.com", "app.web.example.com"),
    ("app.**.web.**.example.com", "app.x.web.y.z.example.com"),
    ("APP.Example.COM", "app.example.com"),
    ("app.example.com", "APP.EXAMPLE.COM"),
    ("*.example.com", "Foo.Example.Com"),
    ("[a-c]pp.example.com", "bpp.example.com"),
    ("[A-C]pp.example.com", "bpp.example.com"),
    ("[!x]pp.example.com", "app.example.com"),
    ("app.example.com", "app.example.com."),
    ("example.**", "example.com"),  # a trailing `**` takes any remainder
    ("example.**", "example.a.b"),
]

NON_MATCHES = [
    ("app.*.example.com", "app.a.b.example.com"),
    ("app.*.example.com", "app.foo.bar.example.com"),
    ("app.*com", "app.foo.com"),
    ("app?com", "app.com"),
    ("*.Example.com", "example.com"),  # the `*.rest` rule is a case-sensitive comparison
    ("*.*.example.com", "x.example.com"),  # ... without glob interpretation of `rest`
    ("*.example.com", "a.b.example.com"),
    ("foo.example.com", "bar.example.com"),
    ("[!a]pp.example.com", "app.example.com"),
    ("[!a]pp.example.com", "App.example.com"),
    ("a[.]b", "a.b"),  # classes never match the label separator
    ("example.com", "example.co"),
    ("example.**", "example"),
]


@pytest.mark.parametrize(("pattern", "name"), MATCHES)
def test_matches(pattern: str, name: str) -> None:
    assert is_subdomain(name, pattern)


@pytest.mark.parametrize(("pattern", "name"), NON_MATCHES)
def test_does_not_match(pattern: str, name: str) -> None:
    assert not is_subdomain(name, pattern)


@pytest.mark.parametrize("pattern", ["app.**com", "**app.com", "a***.com", "a.[bc", "a.[!", "a.[]", "*.**x"])
def test_invalid_patterns_never_match(pattern: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway_core.dns.patterns"):
        assert not is_valid_pattern(pattern)
        assert not is_subdomain("app.com", pattern)
        assert not is_subdomain("x", pattern)
    assert not is_subdomain(pattern.replace("*.", "", 1), pattern)


# --- a direct model of glob 0.3.3 Pattern::new / matches_from ------------------------------------


def _model_tokens(p: str) -> list[tuple[str, object]] | None:
    toks: list[tuple[str, object]] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "?":
            toks.append(("any", None))
            i += 1
        elif c == "*":
            old = i
            while i < n and p[i] == "*":
                i += 1
            cnt = i - old
            if cnt > 2:
                return None
            if cnt == 1:
                toks.append(("seq", None))
                continue
            if i == 2 or p[old - 1] == "/":
                if i < n and p[i] == "/":
                    i += 1
                elif i != n:
                    return None
            else:
                return None
            if not (len(toks) > 1 and toks[-1][0] == "rec"):
                toks.append(("rec", None))
        elif c == "[":
            if i + 4 <= n and p[i + 1] == "!":
                j = p.find("]", i + 3)
                if j >= 0:
                    toks.append(("except", _model_specs(p[i + 2 : j])))
                    i = j + 1
                    continue
            elif i + 3 <= n and p[i + 1] != "!":
                j = p.find("]", i + 2)
                if j >= 0:
                    toks.append(("within", _model_specs(p[i + 1 : j])))
                    i = j + 1
                    continue
            return None
        else:
            toks.append(("char", c))
            i += 1
    return toks


def _model_specs(s: str) -> list[tuple[bool, str, str]]:
    out, i = [], 0
    while i < len(s):
        if i + 3 <= len(s) and s[i + 1] == "-":
            out.append((True, s[i], s[i + 2]))
            i += 3
        else:
            out.append((False, s[i], s[i]))
            i += 1
    return out


def _eq(a: str, b: str) -> bool:
    return a.lower() == b.lower() if a.isascii() and b.isascii() else a == b


def _in_specs(specs: list[tuple[bool, str, str]], c: str) -> bool:
    for is_range, lo, hi in specs:
        if not is_range:
            if _eq(c, lo):
                return True
            continue
        if c.isascii() and lo.isascii() and hi.isascii():
            sl, el = lo.lower(), hi.lower()
            if sl != sl.upper() and el != el.upper() and sl <= c.lower() <= el:
                return True
        if lo <= c <= hi:
            return True
    return False


def _model_match(toks: list[tuple[str, object]], s: str, ti: int, si: int, follows_sep: bool) -> int:
    """0 = match, 1 = sub-pattern doesn't match, 2 = entire pattern doesn't match."""
    while ti < len(toks):
        kind, arg = toks[ti]
        if kind in ("seq", "rec"):
            r = _model_match(toks, s, ti + 1, si, follows_sep)
            if r != 1:
                return r
            while si < len(s):
                c = s[si]
                si += 1
                follows_sep = c == "/"
                if kind == "rec" and not follows_sep:
                    continue
                if kind == "seq" and follows_sep:
                    return 1
                r = _model_match(toks, s, ti + 1, si, follows_sep)
                if r != 1:
                    return r
            ti += 1  # input exhausted: the remaining tokens see an empty input
            continue
        if si >= len(s):
            return 2
        c = s[si]
        si += 1
        is_sep = c == "/"
        if kind in ("any", "within", "except") and is_sep:
            return 1
        if kind == "char":
            ok = _eq(c, str(arg))
        elif kind == "any":
            ok = True
        elif kind == "within":
            ok = _in_specs(arg, c)  # type: ignore[arg-type]
        else:
            ok = not _in_specs(arg, c)  # type: ignore[arg-type]
        if not ok:
            return 1
        follows_sep = is_sep
        ti += 1
    return 0 if si == len(s) else 1


def model_is_subdomain(name: str, pattern: str) -> bool:
    slashed = pattern.replace(".", "/")
    toks = _model_tokens(slashed)
    if toks is None:
        return False
    cand = name.replace(".", "/")
    if slashed.startswith("*/") and cand == slashed[2:]:
        return True
    return _model_match(toks, cand, 0, 0, True) == 0


label = st.text(alphabet="abAB", min_size=1, max_size=3)
names = st.lists(label, min_size=1, max_size=4).map(".".join)
pattern_labels = st.one_of(
    label,
    st.sampled_from(["*", "**", "?", "a*", "*b", "?a", "[ab]", "[!a]", "[a-b]", "[A-B]*", "a?*", "*?*"]),
)
patterns = st.lists(pattern_labels, min_size=1, max_size=4).map(".".join)


@settings(max_examples=400)
@given(patterns, names)
def test_agrees_with_glob_model(pattern: str, name: str) -> None:
    assert is_subdomain(name, pattern) == model_is_subdomain(name, pattern)


def test_model_agrees_on_the_spec_examples() -> None:
    for p, n in MATCHES:
        assert model_is_subdomain(n.rstrip("."), p)
    for p, n in NON_MATCHES:
        assert not model_is_subdomain(n, p)
