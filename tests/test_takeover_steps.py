"""gateway.takeover in one reload: the systemctl calls apply-override makes around Ollama's
drop-in, in order, against a fake systemd whose units have a state; and the bounded wait for
an address to be let go of."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest

from sentinel_keeper.errors import SystemdError
from sentinel_keeper.override.takeover import (
    address_free,
    after_dropin,
    before_dropin,
    url_address,
    wait_free,
)
from sentinel_keeper.policy import Policy
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.systemd.systemctl import GATEWAY_SERVICE, GATEWAY_SOCKET
from sentinel_keeper.values.listen import ListenAddress

TAKEOVER = "gateway: {takeover: true}\nmodels: []\n"
LISTEN = "gateway: {listen: 127.0.0.1:11435}\nmodels: []\n"
OFF = "models: []\n"


@dataclass
class FakeSystemd:
    installed_units: set[str] = field(default_factory=lambda: {GATEWAY_SERVICE, GATEWAY_SOCKET})
    active_units: set[str] = field(default_factory=set)
    enabled_units: set[str] = field(default_factory=set)
    fail: str | None = None  # a systemctl verb that fails
    calls: list[str] = field(default_factory=list)

    def installed(self, unit: str) -> bool:
        return unit in self.installed_units

    def active(self, unit: str) -> bool:
        return unit in self.active_units

    def enabled(self, unit: str) -> bool:
        return unit in self.enabled_units

    def run(self, *args: str) -> tuple[str, ...]:
        line = " ".join(args)
        self.calls.append(line)
        if args[0] == self.fail:
            raise SystemdError(f"`systemctl {line}` failed with exit status 1: no")
        unit = args[-1]
        if args[0] == "enable":
            self.enabled_units.add(unit)
        if args[0] == "disable":
            self.enabled_units.discard(unit)
        if "--now" in args or args[0] in ("restart", "start"):
            (self.active_units.add if args[0] != "disable" else self.active_units.discard)(unit)
        return ("systemctl", *args)


def part(text: str) -> Policy:
    policy = parse_policy(text, "p.yaml")
    return policy.split()[0]


def free_after(n: int) -> tuple[list[ListenAddress], object]:
    """A probe that finds the address taken ``n`` times, then free."""
    asked: list[ListenAddress] = []

    def probe(address: ListenAddress) -> bool:
        asked.append(address)
        return len(asked) > n

    return asked, probe


def test_takeover_on_waits_for_ollama_to_let_go_then_holds_the_address() -> None:
    systemd = FakeSystemd(active_units={GATEWAY_SERVICE})
    asked, probe = free_after(2)
    steps = after_dropin(part(TAKEOVER), systemd, free=probe, timeout=5)  # type: ignore[arg-type]
    assert steps.problems == []
    assert [str(a) for a in asked] == ["127.0.0.1:11434"] * 3
    assert systemd.calls == [
        f"enable --now {GATEWAY_SOCKET}",
        f"enable {GATEWAY_SERVICE}",
        f"restart --no-block {GATEWAY_SERVICE}",
    ]
    # the next reload: already held; the gateway reads the policy again
    systemd.calls.clear()
    assert before_dropin(part(TAKEOVER), systemd).calls == []
    after_dropin(part(TAKEOVER), systemd)
    assert systemd.calls == [f"kill --signal=HUP --kill-who=main {GATEWAY_SERVICE}"]


def test_an_address_ollama_keeps_is_reported_and_the_socket_not_started() -> None:
    systemd = FakeSystemd()
    steps = after_dropin(part(TAKEOVER), systemd, free=lambda _a: False, timeout=0.3)
    assert systemd.calls == []
    assert "127.0.0.1:11434 is still taken" in steps.problems[0]
    assert "OLLAMA_HOST" in steps.problems[0]


def test_takeover_off_gives_the_address_back_before_ollama_restarts() -> None:
    systemd = FakeSystemd(
        active_units={GATEWAY_SERVICE, GATEWAY_SOCKET},
        enabled_units={GATEWAY_SERVICE, GATEWAY_SOCKET},
    )
    asked, probe = free_after(1)
    steps = before_dropin(part(LISTEN), systemd, free=probe, timeout=5)  # type: ignore[arg-type]
    assert steps.problems == []
    # the gateway stays (gateway.listen): a new process lets go of the socket
    assert systemd.calls == [
        f"disable --now {GATEWAY_SOCKET}",
        f"reload --no-block {GATEWAY_SERVICE}",
    ]
    assert [str(a) for a in asked] == ["127.0.0.1:11434", "127.0.0.1:11434"]  # Ollama's address
    systemd.calls.clear()
    # the gateway runs already: it reads the policy again
    after_dropin(part(LISTEN), systemd)
    assert systemd.calls == [f"kill --signal=HUP --kill-who=main {GATEWAY_SERVICE}"]


def test_no_gateway_at_all_stops_its_units() -> None:
    systemd = FakeSystemd(
        active_units={GATEWAY_SERVICE, GATEWAY_SOCKET},
        enabled_units={GATEWAY_SERVICE, GATEWAY_SOCKET},
    )
    before_dropin(part(OFF), systemd, free=lambda _a: True)
    assert systemd.calls == [
        f"disable --now {GATEWAY_SOCKET}",
        f"disable --now --no-block {GATEWAY_SERVICE}",
    ]
    systemd.calls.clear()
    systemd.active_units = {GATEWAY_SERVICE}
    systemd.enabled_units = {GATEWAY_SERVICE}
    after_dropin(part(OFF), systemd)
    assert systemd.calls == [f"disable --now --no-block {GATEWAY_SERVICE}"]


def test_a_gateway_added_to_the_policy_starts_its_unit() -> None:
    systemd = FakeSystemd()
    assert after_dropin(part(LISTEN), systemd).problems == []
    assert systemd.calls == [f"enable --now --no-block {GATEWAY_SERVICE}"]


def test_without_the_gateway_s_units_installed_nothing_is_called() -> None:
    systemd = FakeSystemd(installed_units=set())
    assert before_dropin(part(OFF), systemd).calls == []
    assert after_dropin(part(TAKEOVER), systemd).calls == []
    assert systemd.calls == []


def test_a_failing_call_is_reported_and_the_rest_skipped_only_where_it_must() -> None:
    systemd = FakeSystemd(fail="enable")
    steps = after_dropin(part(TAKEOVER), systemd, free=lambda _a: True)
    assert systemd.calls == [f"enable --now {GATEWAY_SOCKET}"]  # no restart onto no socket
    assert "failed with exit status 1" in steps.problems[0]


def test_the_address_probe_and_its_bounded_wait() -> None:
    held = socket.create_server(("127.0.0.1", 0))
    address = ListenAddress("127.0.0.1", held.getsockname()[1])
    try:
        assert not address_free(address)
        ticks = iter(range(1000))
        assert not wait_free(
            address, timeout=3, sleep=lambda _s: None, monotonic=lambda: float(next(ticks))
        )
    finally:
        held.close()
    assert address_free(address)
    assert wait_free(address, timeout=0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:11434", "127.0.0.1:11434"),
        ("http://[::1]:11434", "[::1]:11434"),
        ("http://localhost:11434", "localhost:11434"),
        ("http://ollama.lan:11434", None),
    ],
)
def test_ollama_s_address_from_its_url(url: str, expected: str | None) -> None:
    got = url_address(url)
    assert (None if got is None else str(got)) == expected


def test_systemctl_is_run_only_on_the_gateway_s_own_units(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sentinel_keeper.systemd import systemctl as systemd

    ran: list[tuple[str, ...]] = []

    def recorded(*args: str) -> tuple[str, ...]:
        ran.append(args)
        return ("systemctl", *args)

    monkeypatch.setattr(systemd, "_systemctl", recorded)
    control = systemd.Systemctl()
    control.run("enable", "--now", GATEWAY_SOCKET)
    control.run("restart", "--no-block", GATEWAY_SERVICE)
    for bad in (("restart", "ollama.service"), ("stop", GATEWAY_SOCKET, "x.service"), ("start",)):
        with pytest.raises(SystemdError, match="not one of"):
            control.run(*bad)
    assert ran == [("enable", "--now", GATEWAY_SOCKET), ("restart", "--no-block", GATEWAY_SERVICE)]
