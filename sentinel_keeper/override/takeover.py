"""gateway.takeover in one step: what ``apply-override`` (the keeper's ExecStartPre= and
ExecReload=, as root) does around Ollama's drop-in so that ``systemctl reload
sentinel-keeper`` moves Ollama's address to the gateway and back.

Taking over (the policy says takeover, the socket unit does not run): the drop-in moves
Ollama to ``gateway.upstream`` and restarts it (:mod:`.apply`); once Ollama has let go of its
address, ``systemctl enable --now sentinel-keeper-gateway.socket`` holds it, and the gateway
is restarted onto the socket (``--no-block``: the old one drains its streams meanwhile).

Giving back (the socket unit runs, the policy no longer says takeover): before the drop-in
changes, the socket unit is stopped and disabled and the gateway re-executed (it lets go of
the passed socket, and listens at ``gateway.listen`` if the policy still has one) or stopped
(no gateway any more); once the address is free, the drop-in's change restarts Ollama there.

Besides, a policy with a gateway starts (and enables) the gateway's unit when it does not
run, or has it read the policy again (SIGHUP) when it does; a policy without one stops (and
disables) it. Every wait is bounded
(:data:`FREE_SECONDS`); a step that fails is reported and the others still run.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from sentinel_keeper.errors import SystemdError
from sentinel_keeper.policy import Policy
from sentinel_keeper.systemd.systemctl import GATEWAY_SERVICE, GATEWAY_SOCKET
from sentinel_keeper.values.listen import ListenAddress, parse_listen

FREE_SECONDS = 30.0  # how long Ollama (or the gateway) may take to let go of an address
FREE_POLL = 0.2


class TakeoverControl(Protocol):
    """What the takeover needs of systemd (:class:`sentinel_keeper.systemd.systemctl.Systemctl`)."""

    def installed(self, unit: str) -> bool: ...

    def active(self, unit: str) -> bool: ...

    def enabled(self, unit: str) -> bool: ...

    def run(self, *args: str) -> tuple[str, ...]: ...


@dataclass
class Steps:
    """What was done (the argv of each systemctl call), and what went wrong."""

    calls: list[tuple[str, ...]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def run(self, control: TakeoverControl, *args: str) -> bool:
        try:
            self.calls.append(control.run(*args))
        except SystemdError as exc:
            self.problems.append(str(exc))
            return False
        return True


def address_free(address: ListenAddress) -> bool:
    """Whether nothing listens at ``address`` (a bind there would succeed)."""
    host = "127.0.0.1" if address.host == "localhost" else address.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, address.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def wait_free(
    address: ListenAddress,
    *,
    free: Callable[[ListenAddress], bool] = address_free,
    timeout: float = FREE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> bool:
    deadline = monotonic() + timeout
    while not free(address):
        if monotonic() > deadline:
            return False
        sleep(FREE_POLL)
    return True


def url_address(url: str) -> ListenAddress | None:
    """The address an http:// URL of Ollama's names (None: a host name, or no port)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        return parse_listen(f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}")
    except ValueError:
        return None


def taken_address(part: Policy) -> ListenAddress | None:
    """The address the gateway takes over on this instance (None: no takeover here)."""
    return part.gateway.address if part.takeover is not None else None


def before_dropin(
    part: Policy,
    control: TakeoverControl,
    *,
    free: Callable[[ListenAddress], bool] = address_free,
    timeout: float = FREE_SECONDS,
) -> Steps:
    """Give Ollama's address back when the policy no longer takes it over: the socket unit
    off, the gateway off it; then wait until the address is free (Ollama's restart, which
    the drop-in's change makes next, listens there)."""
    steps = Steps()
    if taken_address(part) is not None or not control.installed(GATEWAY_SOCKET):
        return steps
    if not (control.active(GATEWAY_SOCKET) or control.enabled(GATEWAY_SOCKET)):
        return steps
    steps.run(control, "disable", "--now", GATEWAY_SOCKET)
    if control.active(GATEWAY_SERVICE):
        if part.gateway_instance is None:
            steps.run(control, "disable", "--now", "--no-block", GATEWAY_SERVICE)
        else:
            # a new process, which lets go of the passed socket; the old one drains
            steps.run(control, "reload", "--no-block", GATEWAY_SERVICE)
    ollama = url_address(part.ollama.url)
    if ollama is not None and not wait_free(ollama, free=free, timeout=timeout):
        steps.problems.append(
            f"{ollama} is still taken {timeout:g} s after {GATEWAY_SOCKET} stopped: Ollama "
            "cannot listen there until the gateway lets go of it"
        )
    return steps


def after_dropin(
    part: Policy,
    control: TakeoverControl,
    *,
    free: Callable[[ListenAddress], bool] = address_free,
    timeout: float = FREE_SECONDS,
) -> Steps:
    """Take Ollama's address when the policy says takeover and the socket unit does not
    hold it yet; start or stop the gateway's unit as the policy has a gateway or not."""
    steps = Steps()
    if not control.installed(GATEWAY_SERVICE):
        return steps
    wanted = taken_address(part)
    if (
        wanted is not None
        and control.installed(GATEWAY_SOCKET)
        and not control.active(GATEWAY_SOCKET)
    ):
        if not wait_free(wanted, free=free, timeout=timeout):
            steps.problems.append(
                f"{wanted} is still taken {timeout:g} s after Ollama's restart (is Ollama "
                f"running with the drop-in's OLLAMA_HOST?): {GATEWAY_SOCKET} not started"
            )
            return steps
        if steps.run(control, "enable", "--now", GATEWAY_SOCKET):
            steps.run(control, "enable", GATEWAY_SERVICE)
            # onto the socket; --no-block: the old process drains its streams meanwhile
            steps.run(control, "restart", "--no-block", GATEWAY_SERVICE)
        return steps
    if part.gateway_instance is not None and not control.active(GATEWAY_SERVICE):
        steps.run(control, "enable", "--now", "--no-block", GATEWAY_SERVICE)
    elif part.gateway_instance is not None:
        # the policy may have changed: the gateway reads it again, in place (SIGHUP)
        steps.run(control, "kill", "--signal=HUP", "--kill-who=main", GATEWAY_SERVICE)
    elif part.gateway_instance is None and (
        control.active(GATEWAY_SERVICE) or control.enabled(GATEWAY_SERVICE)
    ):
        steps.run(control, "disable", "--now", "--no-block", GATEWAY_SERVICE)
    return steps
