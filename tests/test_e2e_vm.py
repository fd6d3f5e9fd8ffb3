"""The product under a real systemd: install.sh, the unit, reloads, the watchdog, in a VM.

tests/e2e/e2e_vm.py builds (or reuses) a Debian bookworm image, boots it under QEMU and runs
tests/e2e/guest/guest_checks.py inside; see those files. The VM test needs root,
qemu-system-x86_64 and debootstrap. Without them it is skipped with the reason, unless
SENTINEL_E2E=require (CI sets it), where a missing tool fails it; SENTINEL_E2E=0 skips it.
It takes minutes: run the quick loop with ``-m "not slow"`` or ``-m "not e2e"``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest

from sentinel_keeper.ollama_env import format_keep_alive
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.policy.windows import in_force
from tests.e2e import e2e_vm
from tests.support.ollama_double import load_models_file


def _mode() -> str:
    return os.environ.get("SENTINEL_E2E", "auto").strip().lower()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(3600)  # above the sum of its own limits (lock, build, wheels, guest)
def test_install_and_operate_under_a_real_systemd(tmp_path: Path) -> None:
    mode = _mode()
    if mode in {"0", "no", "off", "skip"}:
        pytest.skip("SENTINEL_E2E=0: the VM test is switched off")
    missing = e2e_vm.missing_prerequisites()
    if missing:
        reason = "the VM test needs " + "; ".join(missing)
        if mode == "require":
            pytest.fail(f"SENTINEL_E2E=require, but {reason}")
        pytest.skip(reason)
    lines: list[str] = []
    outcome = e2e_vm.run_e2e(tmp_path / "share", log=lines.append)
    report = "\n".join(lines) + "\n" + outcome.describe()
    print(report)
    assert outcome.ok(), report


# The host-side helpers, without a VM.


def test_image_key_follows_what_goes_into_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tmp_path / "image"
    files.mkdir()
    script = tmp_path / "build-image.sh"
    script.write_text("echo build\n")
    (files / "runner").write_text("one\n")
    monkeypatch.setattr(e2e_vm, "BUILD_SCRIPT", script)
    monkeypatch.setattr(e2e_vm, "IMAGE_FILES", files)
    first = e2e_vm.image_key()
    assert e2e_vm.image_key() == first
    (files / "runner").write_text("two\n")
    second = e2e_vm.image_key()
    assert second != first
    script.write_text("echo build again\n")
    assert e2e_vm.image_key() not in {first, second}


def test_wheels_cover_every_dependency_and_the_build_backend() -> None:
    binary, source = e2e_vm.dependency_lists()
    names = {e2e_vm._name(r) for r in binary + source}
    assert {"httpx", "pydantic", "sdnotify", "setuptools"} <= names
    assert [e2e_vm._name(r) for r in source] == ["sdnotify"]


def test_share_holds_the_checkout_not_its_virtualenv(tmp_path: Path) -> None:
    files = {str(p) for p in e2e_vm.checkout_files()}
    assert {"install.sh", "pyproject.toml", "tests/e2e/guest/guest_checks.py"} <= files
    assert not [f for f in files if f.startswith((".venv/", ".git/")) or "__pycache__" in f]
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    share = tmp_path / "share"
    share.mkdir()
    e2e_vm.prepare_share(share, wheels)
    assert (share / "src" / "install.sh").read_bytes() == (e2e_vm.REPO / "install.sh").read_bytes()
    assert (share / "wheels" / "x-1-py3-none-any.whl").exists()
    assert "guest_checks.py --share /mnt/e2e" in (share / "entry.sh").read_text()


def test_the_vm_boots_a_throwaway_copy_under_emulation(tmp_path: Path) -> None:
    image = e2e_vm.Image(tmp_path)
    command = e2e_vm.qemu_command(image, tmp_path / "share", tmp_path / "console.log")
    joined = " ".join(command)
    assert "snapshot=on" in joined
    assert "tcg" in joined
    assert "-no-reboot" not in command  # the guest reboots once: a reset, the disk kept
    assert "mount_tag=hostshare" in joined


# The guest's scenario, without a VM: what it can get wrong on its own.


def _guest() -> ModuleType:
    """guest_checks.py (a script, not a package module), imported once."""
    name = "sk_e2e_guest_checks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, e2e_vm.HERE / "guest" / "guest_checks.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_every_guest_check_is_expected_in_order() -> None:
    guest = _guest()
    names = [name for name, _, _ in guest.steps(guest.Scenario(Path("/nonexistent")))]
    assert tuple(names) == e2e_vm.EXPECTED_CHECKS
    for index, (_, _, needs) in enumerate(guest.steps(guest.Scenario(Path("/nonexistent")))):
        assert set(needs) <= set(names[:index])


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        ("2026-03-10 10:00:00", "2026-03-10 10:02:00"),  # 70 s ahead: the next minute is too close
        ("2026-03-10 10:00:50", "2026-03-10 10:02:00"),  # exactly 40 s before its pass
        ("2026-03-10 10:00:50.5", "2026-03-10 10:03:00"),
        ("2026-03-10 10:58:45", "2026-03-10 11:00:00"),  # the hour rolls over
        ("2026-03-10 23:59:30", "2026-03-11 00:01:00"),  # the day
        ("2026-12-31 23:58:40", "2027-01-01 00:00:00"),  # the year; its pass is the day before
    ],
)
def test_the_window_opens_at_the_first_minute_far_enough_ahead(now: str, opens: str) -> None:
    guest = _guest()
    zone = ZoneInfo("Asia/Kolkata")
    start = datetime.fromisoformat(now).replace(tzinfo=zone)
    got, due = guest.next_window(start)
    assert got == datetime.fromisoformat(opens).replace(tzinfo=zone)
    assert due == got - timedelta(seconds=guest.WARM_BEFORE)
    assert guest.WINDOW_LEAD <= (due - start).total_seconds() < guest.WINDOW_LEAD + 60


def test_the_guest_policies_are_what_the_checks_expect() -> None:
    guest = _guest()
    gpu0, gpu1 = parse_policy(guest.INSTANCES_POLICY, "policy.yaml").split()
    assert (gpu0.instance, gpu0.ollama.unit, gpu0.ollama.url) == (
        "gpu0",
        "ollama.service",
        guest.OLLAMA_URL,
    )
    assert (gpu1.instance, gpu1.ollama.unit, gpu1.ollama.url) == (
        "gpu1",
        guest.OLLAMA_GPU1,
        guest.GPU1_URL,
    )
    assert format_keep_alive(gpu0.ollama.keep_alive) == "-1"
    assert format_keep_alive(gpu1.ollama.keep_alive) == "45m"
    assert gpu1.ollama.environment == {"OLLAMA_MAX_LOADED_MODELS": "3"}
    assert [m.name for m in gpu0.models] == [guest.LLAMA, guest.EMBED]
    assert [m.name for m in gpu1.models] == [guest.QWEN]
    # the second Ollama listens where the policy looks, and has the models gpu1 keeps
    unit = (e2e_vm.HERE / "guest" / guest.OLLAMA_GPU1).read_text()
    assert f"OLLAMA_HOST={guest.GPU1_URL.removeprefix('http://')}" in unit
    offered = {m.name for m in load_models_file(str(e2e_vm.HERE / "guest" / "models-gpu1.json"))}
    assert offered == {guest.QWEN, guest.SMOL}


def test_the_window_model_is_in_force_from_its_pass_on() -> None:
    """The product, given the guest's window policy, agrees on when the model is due."""
    guest = _guest()
    zone = ZoneInfo("Asia/Kolkata")
    opens, due = guest.next_window(datetime(2026, 12, 31, 23, 58, 40, tzinfo=zone))
    policy = parse_policy(guest.window_policy(opens), "policy.yaml")
    assert policy.interval == 600
    _, gpu1 = policy.split()
    (smol,) = [m for m in gpu1.models if m.name == guest.SMOL]
    assert smol.windows == ["00:00-00:10"]

    def due_now(at: datetime) -> bool:
        active, _ = in_force([smol], zone, at)
        return bool(active)

    assert not due_now(due - timedelta(seconds=1))
    assert due_now(due)
    assert due_now(opens + timedelta(minutes=guest.WINDOW_MINUTES - 1))
    assert not due_now(opens + timedelta(minutes=guest.WINDOW_MINUTES))


def test_metrics_are_read_by_label_whatever_their_order() -> None:
    guest = _guest()
    page = (
        "# HELP sentinel_keeper_model_loads_total Loads\n"
        "# TYPE sentinel_keeper_model_loads_total counter\n"
        'sentinel_keeper_model_loads_total{instance="gpu0",model="llama3.2:1b",cause="start"} 2.0\n'
        'sentinel_keeper_model_loads_total{model="llama3.2:1b",instance="gpu0",cause="gone"} 1.0\n'
        'sentinel_keeper_model_loads_total{instance="gpu1",model="llama3.2:1b",cause="start"} 5.0\n'
        'sentinel_keeper_model_resident{model="a \\"b\\"",tier="pinned"} 1.0 1700000000000\n'
    )
    samples = guest.parse_samples(page)
    assert guest.load_count(samples, "llama3.2:1b", instance="gpu0") == 3.0
    assert guest.load_count(samples, "llama3.2:1b") == 8.0
    (resident,) = guest.pick(samples, "sentinel_keeper_model_resident", tier="pinned")
    assert (resident.labels["model"], resident.value) == ('a "b"', 1.0)


def test_journal_fields_are_matched_exactly() -> None:
    guest = _guest()
    entries = [
        guest.Entry(6, "model_loaded model=qwen2.5:0.5b tier=pinned seconds=0.4 instance=gpu1"),
        guest.Entry(6, "model_loaded model=qwen2.5:0.5b tier=pinned instance=gpu10"),
        guest.Entry(6, 'model_loaded model=x reason="pinned and not loaded" instance=gpu0'),
        guest.Entry(6, "model_loaded_late model=qwen2.5:0.5b instance=gpu1"),
    ]
    assert guest.logged(entries, "model_loaded", instance="gpu1") == entries[:1]
    assert guest.logged(entries, "model_loaded", model="qwen2.5:0.5b") == entries[:2]
    assert entries[2].fields()["reason"] == "pinned and not loaded"
    assert guest.logged(entries, "model_loaded", instance="gpu0") == entries[2:3]
