"""Who holds a TCP port on this host: for the messages of a listen address that is taken
(``metrics.listen``, ``gateway.listen``). Best effort, Linux only: the listening socket's inode
from /proc/net/tcp and /proc/net/tcp6, then the process with that socket among its file
descriptors (only processes this user may look into: as root all of them). None when it cannot
tell, never an error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

_LISTEN = "0A"  # the TCP state column of /proc/net/tcp: TCP_LISTEN
_MAX_PROCESSES = 100_000  # a bound on the scan of /proc
_MAX_COMMAND = 120


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """The socket inodes listening on ``port`` (any local address, IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            _, _, port_hex = fields[1].rpartition(":")
            try:
                if int(port_hex, 16) == port:
                    inodes.add(fields[9])
            except ValueError:
                continue
    inodes.discard("0")
    return inodes


def _command(pid_dir: Path) -> str:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        raw = b""
    words = [w.decode("utf-8", "replace") for w in raw.split(b"\0") if w]
    if not words:
        try:
            words = [(pid_dir / "comm").read_text().strip()]
        except OSError:
            words = ["?"]
    text = " ".join(words)
    printable = "".join(c if c.isprintable() else "?" for c in text)
    return printable if len(printable) <= _MAX_COMMAND else printable[: _MAX_COMMAND - 3] + "..."


def port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """``pid N (command line)`` of a process listening on ``port``; ``another process`` when
    the socket is there but its owner cannot be looked into; None when nothing is known."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        entries = os.scandir(proc)
    except OSError:
        return "another process"
    with entries:
        for count, entry in enumerate(entries):
            if count >= _MAX_PROCESSES:
                break
            if not entry.name.isdigit():
                continue
            fd_dir = Path(entry.path) / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target in wanted:
                    return f"pid {entry.name} ({_command(Path(entry.path))})"
    return "another process"


def taken_by(port: int, exc: OSError) -> str:
    """``"; held by pid N (...)"`` for a bind that failed because the port is taken, where
    the holder can be found; else ``""``."""
    if exc.errno != errno.EADDRINUSE:
        return ""
    holder = port_holder(port)
    return f"; held by {holder}" if holder is not None else ""
