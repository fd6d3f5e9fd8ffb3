"""Sockets systemd passes to the daemon (socket activation, sd_listen_fds(3)): the listening
sockets of sentinel-keeper-gateway.socket, which holds the gateway's address while the
daemon restarts, so that clients' connections wait in its backlog instead of being refused.

systemd sets ``LISTEN_PID`` (the pid they are meant for) and ``LISTEN_FDS`` (how many, from
fd 3 on); both are read once at start and removed from the environment, as
``sd_listen_fds(1)`` does, so that no child takes them for its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import MutableMapping

from sentinel_keeper.values.listen import ListenAddress

SD_LISTEN_FDS_START = 3
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def take_listen_fds(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> tuple[list[socket.socket], list[str]]:
    """The listening sockets passed to this process, and a line for each fd passed that is
    not one (closed). Nothing when ``LISTEN_PID`` names another process."""
    env = os.environ if environ is None else environ
    values = {name: env.pop(name, None) for name in VARIABLES}
    listen_pid, listen_fds = values["LISTEN_PID"], values["LISTEN_FDS"]
    if listen_pid is None or listen_fds is None:
        return [], []
    try:
        count, meant_for = int(listen_fds), int(listen_pid)
    except ValueError:
        return [], [f"LISTEN_FDS={listen_fds!r} LISTEN_PID={listen_pid!r}: not numbers, ignored"]
    if meant_for != (os.getpid() if pid is None else pid) or count <= 0:
        return [], []
    sockets: list[socket.socket] = []
    problems: list[str] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            problems.append(f"fd {fd}: {exc.strerror or exc}; not a socket, closed")
            _close(fd)
            continue
        if sock.type != socket.SOCK_STREAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            problems.append(f"fd {fd}: not a TCP socket, closed")
            sock.close()
            continue
        sockets.append(sock)
    return sockets, problems


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):  # not open: nothing to close
        os.close(fd)


def address_of(sock: socket.socket) -> ListenAddress:
    """Where a passed socket listens."""
    host, port = sock.getsockname()[:2]
    return ListenAddress(str(host), int(port))


def listens_at(sock: socket.socket, address: ListenAddress) -> bool:
    """Whether ``sock`` listens at ``address`` (localhost: 127.0.0.1)."""
    got = address_of(sock)
    host = "127.0.0.1" if address.host == "localhost" else address.host
    return got.port == address.port and ipaddress.ip_address(got.host) == ipaddress.ip_address(host)
