"""Domain pattern matching of DNS resources (Firezone's ``rust/connlib/tunnel/src/dns.rs``).

Firezone matches a domain against a resource's address pattern with the Rust ``glob`` crate (0.3.3):
both strings have ``.`` replaced by ``/`` so that labels become path components, and the match is
case-insensitive (ASCII only) with ``require_literal_separator``:

- ``?`` matches exactly one character within a label;
- ``*`` matches any run of characters within one label;
- ``**`` forming a whole label matches zero or more whole labels (at the end of a pattern: any
  remainder at all); ``**`` glued to other characters, or
  three stars, make the pattern invalid;
- ``[abc]``, ``[a-z]``, ``[!abc]`` are character classes (never matching a label separator); an
  unterminated ``[`` makes the pattern invalid.

Special rule: a pattern ``*.rest`` also matches ``rest`` itself, by a plain case-sensitive comparison
(``dns.rs:579-583``). An invalid pattern never matches (a warning is logged once per pattern).

Patterns are compiled once into a regular expression over the slash form and cached. Names are given in
presentation form; one trailing dot is ignored.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

log = logging.getLogger("gateway_core.dns.patterns")

PATTERN_CACHE_SIZE = 4096
"""Compiled patterns kept (one per DNS resource address; a gateway has far fewer)."""


class PatternError(ValueError):
    """The pattern is not a valid glob (the reference logs and never matches)."""


def _char_regex(c: str) -> str:
    """One literal pattern character; ASCII letters match either case."""
    if c.isascii() and c.isalpha():
        return f"[{c.lower()}{c.upper()}]"
    return re.escape(c)


def _class_regex(spec: str, negate: bool) -> str:
    """A glob character class as a regex class that never matches ``/``."""
    parts: list[str] = []
    i = 0
    while i < len(spec):
        if i + 3 <= len(spec) and spec[i + 1] == "-":
            lo, hi = spec[i], spec[i + 2]
            if lo <= hi:
                parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
            # glob: ASCII ranges between two letters also match the other case.
            llo, lhi = lo.lower(), hi.lower()
            if lo.isascii() and hi.isascii() and llo.upper() != llo and lhi.upper() != lhi and llo <= lhi:
                parts.append(f"{llo}-{lhi}{llo.upper()}-{lhi.upper()}")
            i += 3
        else:
            c = spec[i]
            parts.append(re.escape(c))
            if c.isascii() and c.isalpha():
                parts.append(c.swapcase())
            i += 1
    body = "".join(parts)
    if negate:
        return f"[^/{body}]"
    return f"(?!/)[{body}]" if body else "(?!)"


_REC = "(?:.*/)?"


def _compile(pattern: str) -> re.Pattern[str]:
    """The slash-form glob ``pattern`` as an anchored regex (raises :class:`PatternError`)."""
    chars = pattern
    n = len(chars)
    out: list[str] = []
    i = 0
    while i < n:
        c = chars[i]
        if c == "?":
            out.append("[^/]")
            i += 1
        elif c == "*":
            start = i
            while i < n and chars[i] == "*":
                i += 1
            count = i - start
            if count > 2:
                raise PatternError("wildcards are either regular `*` or recursive `**`")
            if count == 1:
                out.append("[^/]*")
                continue
            if not (start == 0 or chars[start - 1] == "/"):
                raise PatternError("recursive wildcards must form a single path component")
            if i < n and chars[i] == "/":
                i += 1
            elif i != n:
                raise PatternError("recursive wildcards must form a single path component")
            # ``**`` consumes whole labels; as the last token it consumes whatever remains (glob's
            # matcher falls through to the end of the pattern once the input is exhausted).
            out.append(_REC)
        elif c == "[":
            if i + 4 <= n and chars[i + 1] == "!":
                j = chars.find("]", i + 3)
                if j >= 0:
                    out.append(_class_regex(chars[i + 2 : j], negate=True))
                    i = j + 1
                    continue
            elif i + 3 <= n and chars[i + 1] != "!":
                j = chars.find("]", i + 2)
                if j >= 0:
                    out.append(_class_regex(chars[i + 1 : j], negate=False))
                    i = j + 1
                    continue
            raise PatternError("invalid range pattern")
        else:
            out.append(_char_regex(c))
            i += 1
    if out and out[-1] is _REC:
        out[-1] = ".*"
    return re.compile("".join(out), re.DOTALL)


@lru_cache(maxsize=PATTERN_CACHE_SIZE)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return _compile(pattern.replace(".", "/"))
    except PatternError as e:
        log.warning("unable to parse domain pattern %r: %s; it matches nothing", pattern, e)
        return None


def is_valid_pattern(pattern: str) -> bool:
    """Whether ``pattern`` compiles (an invalid one never matches)."""
    return _compiled(pattern) is not None


def _candidate(name: str) -> str:
    if len(name) > 1 and name.endswith("."):
        name = name[:-1]
    return name.replace(".", "/")


def is_subdomain(name: str, pattern: str) -> bool:
    """Whether the domain ``name`` matches the DNS resource address ``pattern``, as Firezone decides."""
    rx = _compiled(pattern)
    if rx is None:
        return False
    candidate = _candidate(name)
    slashed = pattern.replace(".", "/")
    if slashed.startswith("*/") and candidate == slashed[2:]:
        return True
    return rx.fullmatch(candidate) is not None
