"""Ollama's address as the policy gives it and the client uses it: one rule (OLLAMA_HOST's)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from sentinel_keeper.values.text import show

OLLAMA_DEFAULT_PORT = 11434
DEFAULT_OLLAMA_URL = f"http://127.0.0.1:{OLLAMA_DEFAULT_PORT}"


def _bare_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def normalize_ollama_url(value: object) -> str:
    """``scheme://host[:port][/path]`` by OLLAMA_HOST's rules: a bare host (or host:port, or a
    bare IPv6 address) gets http:// and port 11434; a URL with a scheme and no port keeps the
    scheme's own port (80 or 443). ValueError, with a message for the user, otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'must be a URL such as "http://127.0.0.1:11434", got {show(value)}')
    text = value.strip()
    if any(ord(c) < 0x21 or c.isspace() or c in "\"'<>\\`" for c in text):
        raise ValueError(
            f"must be a URL without spaces, quotes or control characters, got {show(value)}"
        )
    has_scheme = "://" in text
    if not has_scheme and _bare_ipv6(text):
        text = f"[{text}]"  # as Go's OLLAMA_HOST parsing reads it: the default port
    parts = urlsplit(text if has_scheme else f"http://{text}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port, got {show(value)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL or a host[:port], got {show(value)}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"must not carry a query, fragment or credentials, got {show(value)}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is None and not has_scheme:
        port = OLLAMA_DEFAULT_PORT
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
