"""A listen address, ``host:port``: one rule for every socket the policy names (the metrics
endpoint, the gateway and the address it takes over from Ollama), for the servers that bind them
and for `status` (which reads the running daemon's figures from the metrics endpoint). Pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sentinel_keeper.values.text import show

DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True)
class ListenAddress:
    host: str  # an IP literal (IPv6 without brackets) or "localhost"
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Reachable from this host only."""
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback

    @property
    def connect_host(self) -> str:
        """Where a client on this host connects to reach it (a wildcard address listens on
        loopback too)."""
        if self.host == "localhost":
            return "127.0.0.1"
        address = ipaddress.ip_address(self.host)
        if address.is_unspecified:
            return "::1" if address.version == 6 else "127.0.0.1"
        return self.host

    @property
    def url(self) -> str:
        """The metrics URL a client on this host scrapes."""
        host = self.connect_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/metrics"


def parse_listen(value: object) -> ListenAddress:
    """``127.0.0.1:9464``, ``[::1]:9464``, ``localhost:9464`` or ``0.0.0.0:9464``: an IP
    literal (or localhost) and a port. ValueError, with a message for the user, otherwise.
    Host names other than localhost are refused: what they resolve to can change under a
    running daemon, and the loopback rule (allow_remote) must be decidable from the file."""
    expected = 'must be "host:port" with an IP address or localhost, such as "127.0.0.1:9464"'
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {show(value)}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{expected}, got {show(value)}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(
                f"{expected} (an IPv6 address goes in brackets: [::1]:9464), got {show(value)}"
            )
    if host != "localhost":
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"{expected}, got {show(value)}") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"has no port between 1 and 65535, got {show(value)}")
    return ListenAddress(host, int(port_text))
