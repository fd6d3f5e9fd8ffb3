"""A request's target read as Ollama's server routes it. Pure: no I/O, no aiohttp.

Ollama serves with Go's net/http, its gin router mounted at ``/`` on http.DefaultServeMux:

- Go parses an origin-form target with url.ParseRequestURI: the query starts at the first
  ``?``, a ``#`` is part of the path, a ``%`` not followed by two hex digits is a 400;
  URL.Path is the target's path with its escapes decoded.
- ServeMux (Go 1.22 and later) answers 301 to the cleaned path (``//``, ``.`` and ``..``
  segments removed, path.Clean on the escaped path, a trailing slash kept) when the escaped
  path is not clean: ``//api/generate``, ``/api/./generate`` and ``/x/../api/generate``
  never reach a handler (a client that follows the redirect asks again, at the clean path).
- gin routes on URL.Path, decoded (UseRawPath is off): ``/api/%67enerate`` and
  ``/api%2Fgenerate`` are /api/generate's handler. A trailing slash gets gin's redirect.

The gateway relays only origin-form targets (``/...``), to the configured Ollama, and reads
the body of a request whose Go path is one of the rules' endpoints; anything it cannot read
as Go does is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# url.shouldEscape(c, encodePath) is false for these; validEncoded also accepts the second set
_UNRESERVED = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~$&+,/:;=@"
)
_VALID_ENCODED = _UNRESERVED | frozenset(b"!$&'()*+,;=:@[]%")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Refused:
    """The gateway answers ``status`` itself and closes the connection."""

    status: int
    error: str


@dataclass(frozen=True)
class Redirect:
    """Ollama's server would answer 301 to ``location`` without running a handler."""

    location: str


@dataclass(frozen=True)
class Routed:
    """Ollama routes the request by ``path`` (URL.Path, decoded; undecodable bytes as
    U+DC80-U+DCFF); ``target`` is the request target to send it, as it came."""

    path: str
    target: str


Route = Refused | Redirect | Routed


def route(method: str, target: str) -> Route:
    """How Ollama's server takes a request with ``method`` and request-target ``target``
    (aiohttp's raw target: bytes as UTF-8, undecodable ones as surrogate escapes)."""
    if method.upper() == "CONNECT":
        return Refused(405, "CONNECT is not served: the gateway relays to Ollama only")
    if not target.startswith("/"):
        return Refused(
            400,
            f"request target {_shown(target)} is not a path: the gateway relays to Ollama "
            "only, and takes requests of the form METHOD /path HTTP/1.1",
        )
    raw = target.encode("utf-8", "surrogateescape")
    if any(b < 0x20 or b == 0x7F for b in raw):
        return Refused(400, "net/url: invalid control character in URL")
    raw_path, _, query = raw.partition(b"?")
    bad = _BAD_ESCAPE.search(raw_path)
    if bad is not None:
        shown = raw_path[bad.start() : bad.start() + 3].decode("utf-8", "replace")
        return Refused(400, f'invalid URL escape "{shown}"')
    path = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw_path)
    escaped = raw_path if all(b in _VALID_ENCODED for b in raw_path) else _escape(path)
    clean = _clean(escaped)
    if clean != escaped:
        # as ServeMux builds it: the cleaned escaped path taken as a path and escaped again
        location = _clean(_escape(clean))
        if query:
            location += b"?" + query
        return Redirect(location.decode("latin-1"))
    return Routed(path.decode("utf-8", "surrogateescape"), target)


def _escape(path: bytes) -> bytes:
    return b"".join(bytes([b]) if b in _UNRESERVED else b"%%%02X" % b for b in path)


def _clean(path: bytes) -> bytes:
    """net/http's cleanPath: path.Clean, rooted, with a trailing slash kept."""
    if not path:
        return b"/"
    if not path.startswith(b"/"):
        path = b"/" + path
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = b"/" + b"/".join(parts)
    if path.endswith(b"/") and cleaned != b"/":
        cleaned += b"/"
    return cleaned


def _shown(target: str, limit: int = 80) -> str:
    text = target.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")
