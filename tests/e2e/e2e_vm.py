"""Host side of the end-to-end test: a real systemd in a QEMU virtual machine.

1. The VM image (Debian bookworm, systemd as PID 1, python3 and python3-venv, a kernel and a
   small initrd) is built by ``build-image.sh`` and cached under
   ``${XDG_CACHE_HOME:-~/.cache}/sentinel-keeper-e2e``, keyed on a hash of what goes into it.
   The checkout is not in the image, so changing the code needs no rebuild.
2. The dependencies' wheels (for the guest's CPython 3.11 on x86_64) are fetched on the host,
   where the package registry is reachable, and cached the same way, keyed on pyproject.toml's
   dependencies. The guest installs offline: ``install.sh --wheels``.
3. A 9p share holds a copy of the checkout, the wheels, ``entry.sh`` and ``results/``. QEMU
   boots with ``snapshot=on`` (the image stays pristine) under TCG; a runner unit in the image
   runs ``entry.sh`` (``guest/guest_checks.py``), writes the output, the checks and the exit
   status into ``results/``, and powers off. Every wait is bounded; QEMU is killed on a
   time-out.

Needs root, qemu-system-x86_64, debootstrap, and network access to the Debian mirror and the
package registry for a cold build. Run it alone (as root)::

    python3 tests/e2e/e2e_vm.py
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONSTRAINTS = REPO / "constraints.txt"  # the tested versions, as install.sh installs them
BUILD_SCRIPT = HERE / "build-image.sh"
IMAGE_FILES = HERE / "image"

# Bounds of each stage (seconds). The whole stage stays within about 13 minutes on 2 cores.
LOCK_TIMEOUT = 900.0  # another run building the same cache
BUILD_TIMEOUT = 420.0  # debootstrap, kernel, mkfs: about 80 s
WHEELS_TIMEOUT = 240.0  # pip download: seconds with a warm pip cache
# the checks: 220-290 s seen (install.sh twice under emulation, 40-100 s waiting for a time
# window to open, a second Ollama instance...)
GUEST_TIMEOUT = 1800
BOOT_ALLOWANCE = 120.0  # boot to the runner unit, and the power-off after it
POWEROFF_GRACE = 60.0
REBOOT_ALLOWANCE = 300.0  # the guest checks' own reboot: shutdown and boot again

# The checks guest_checks.py must report as passed: a check that silently went missing fails.
EXPECTED_CHECKS = (
    "ollama-unit",
    "install",
    "active-pinned-resident",
    "ollama-environment-dropin",
    "journal-shows-loads",
    "unprivileged",
    "ollama-restart",
    "metrics-endpoint",
    "journal-priorities",
    "reload-new-policy",
    "reload-broken-policy",
    "watchdog-restarts-frozen",
    "upgrade-rerun",
    "ollama-gpu1-unit",
    "instances-reload",
    "instance-restart-isolated",
    "window-opens",
    "gateway-takeover",
    "gateway-keeper-killed",
    "gateway-restart-drains",
    "gateway-reload-hands-over",
    "gateway-broken-policy",
    "guest-reboot",
    "gateway-takeover-off",
    "stop-clean",
    "uninstall",
    "purge",
)

# The guest's interpreter (Debian bookworm): wheels are fetched for it, not for the host's.
GUEST_PYTHON = "3.11"
GUEST_ABI = "cp311"
GUEST_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "linux_x86_64")
# Distributions published only as source: built into (pure Python) wheels on the host.
SOURCE_ONLY = ("sdnotify",)
BUILD_REQUIREMENTS = ("wheel",)  # besides pyproject's build-system.requires

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --- prerequisites and cache --------------------------------------------------------------


def missing_prerequisites() -> list[str]:
    """What this host lacks to run the VM test, in words; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (debootstrap and the image's file ownership)")
    for tool, package in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    return missing


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sentinel-keeper-e2e"


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def image_key() -> str:
    """Changes whenever something that goes into the image changes."""
    parts = [b"image-v1", os.environ.get("SK_E2E_MIRROR", "").encode(), BUILD_SCRIPT.read_bytes()]
    for path in sorted(IMAGE_FILES.iterdir()):
        parts += [path.name.encode(), path.read_bytes()]
    return _digest(parts)


def _pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def dependency_lists() -> tuple[list[str], list[str]]:
    """(binary requirements, source-only requirements) of the project and its build."""
    data = _pyproject()
    requirements = [
        *data["project"]["dependencies"],
        *data["build-system"]["requires"],
        *BUILD_REQUIREMENTS,
    ]
    source = [r for r in requirements if _name(r) in SOURCE_ONLY]
    binary = [r for r in requirements if _name(r) not in SOURCE_ONLY]
    return binary, source


def _name(requirement: str) -> str:
    for i, ch in enumerate(requirement):
        if not (ch.isalnum() or ch in "-_."):
            return requirement[:i].lower()
    return requirement.lower()


def wheels_key() -> str:
    binary, source = dependency_lists()
    parts = [b"wheels-v1", GUEST_ABI.encode(), *(r.encode() for r in binary + ["|"] + source)]
    return _digest([*parts, CONSTRAINTS.read_bytes()])


@contextlib.contextmanager
def _locked(directory: Path, timeout: float) -> Iterator[None]:
    """One run at a time builds into the cache (two test runs may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{directory} stayed locked for {timeout:g}s") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(root: Path, prefix: str, keep: Path) -> None:
    for entry in root.glob(f"{prefix}*"):
        if entry != keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


@dataclass(frozen=True)
class Image:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "image.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"


def ensure_image(log: Log = _quiet) -> tuple[Image, bool]:
    """The cached image for the current key, built first if needed; (image, built)."""
    root = cache_root()
    target = root / f"image-{image_key()}"
    with _locked(root, LOCK_TIMEOUT):
        if (target / "complete").exists():
            log(f"e2e: cached image {target}")
            return Image(target), False
        log(f"e2e: building the VM image into {target} (debootstrap, about 80 s)")
        work = root / f"build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            done = subprocess.run(
                ["bash", str(BUILD_SCRIPT), str(work)],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"build-image.sh did not finish within {BUILD_TIMEOUT:g}s") from None
        if done.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(
                f"build-image.sh failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        for line in done.stdout.splitlines():
            log(f"e2e: {line}")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        (target / "complete").write_text(image_key() + "\n")
        _prune(root, "image-", target)
        _prune(root, "build-", target)
        return Image(target), True


def ensure_wheels(log: Log = _quiet) -> tuple[Path, bool]:
    """Wheels of every dependency for the guest's Python, cached; (directory, built)."""
    root = cache_root()
    target = root / f"wheels-{wheels_key()}"
    with _locked(root, LOCK_TIMEOUT):
        if (target / "complete").exists():
            return target, False
        binary, source = dependency_lists()
        work = root / f"wheels-build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        platforms = [arg for p in GUEST_PLATFORMS for arg in ("--platform", p)]
        commands = [
            [
                *pip,
                "download",
                "--only-binary=:all:",
                "--constraint",
                str(CONSTRAINTS),
                "--python-version",
                GUEST_PYTHON,
                "--implementation",
                "cp",
                "--abi",
                GUEST_ABI,
                "--abi",
                "abi3",
                "--abi",
                "none",
                *platforms,
                "-d",
                str(work),
                *binary,
            ],
            [*pip, "wheel", "--no-deps", "-c", str(CONSTRAINTS), "-w", str(work), *source],
        ]
        log(f"e2e: fetching wheels for the guest into {target}")
        for command in commands:
            try:
                done = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=WHEELS_TIMEOUT,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                shutil.rmtree(work, ignore_errors=True)
                raise RuntimeError(f"pip did not finish within {WHEELS_TIMEOUT:g}s") from None
            if done.returncode != 0:
                shutil.rmtree(work, ignore_errors=True)
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        (target / "complete").write_text(wheels_key() + "\n")
        _prune(root, "wheels-", target)
        return target, True


# --- the share and the boot ---------------------------------------------------------------


def checkout_files() -> list[Path]:
    """The checkout's files as git sees them (tracked and new, not ignored), relative."""
    try:
        done = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "build", "__pycache__", ".mypy_cache", ".ruff_cache"}
        return [
            p.relative_to(REPO)
            for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts)
        ]
    names = [n for n in done.stdout.decode().split("\0") if n]
    return [Path(n) for n in names if (REPO / n).is_file()]


def prepare_share(share: Path, wheels: Path) -> None:
    src = share / "src"
    for rel in checkout_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    (share / "wheels").mkdir(parents=True)
    for wheel in wheels.glob("*.whl"):
        try:
            os.link(wheel, share / "wheels" / wheel.name)
        except OSError:
            shutil.copy2(wheel, share / "wheels" / wheel.name)
    (share / "results").mkdir()
    (share / "entry.sh").write_text(
        "#!/bin/bash\n"
        "# Written by tests/e2e/e2e_vm.py; run by the image's sk-e2e-runner unit.\n"
        f"exec timeout --kill-after=10 {GUEST_TIMEOUT} "
        "python3 /mnt/e2e/src/tests/e2e/guest/guest_checks.py --share /mnt/e2e\n"
    )


def qemu_command(image: Image, share: Path, console: Path) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",  # /dev/kvm here runs only specially built kernels
        "-cpu",
        "qemu64",
        "-smp",
        "2",
        "-m",
        "2048",
        "-nodefaults",
        "-display",
        "none",
        "-nic",
        "none",
        "-serial",
        f"file:{console}",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        "root=/dev/vda rw console=ttyS0,115200 mitigations=off",
        "-drive",
        f"file={image.disk},format=raw,if=virtio,cache=unsafe,snapshot=on",
        "-fsdev",
        f"local,id=s0,path={share},security_model=none",
        "-device",
        "virtio-9p-pci,fsdev=s0,mount_tag=hostshare",
    ]


@dataclass
class Outcome:
    """What came back from one run."""

    share: Path
    rc: int | None = None  # the guest checks' exit status; None: no result came back
    timed_out: bool = False
    output: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)
    console_tail: str = ""
    journal_tail: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    built: dict[str, bool] = field(default_factory=dict)

    def passed(self) -> set[str]:
        return {c["name"] for c in self.checks if c.get("status") == "PASS"}

    def ok(self) -> bool:
        return self.rc == 0 and set(EXPECTED_CHECKS) <= self.passed()

    def describe(self) -> str:
        lines = [
            f"guest exit status: {self.rc}"
            + (" (timed out, qemu killed)" if self.timed_out else ""),
            f"timings: {', '.join(f'{k} {v:.0f}s' for k, v in self.seconds.items())}",
            "cache: "
            + ", ".join(f"{k} {'built' if v else 'cached'}" for k, v in self.built.items()),
            f"missing or failed checks: {sorted(set(EXPECTED_CHECKS) - self.passed()) or 'none'}",
            f"share (results, console.log): {self.share}",
            "--- guest output",
            self.output or "(none)",
        ]
        if not self.ok():
            lines += [
                "--- console (tail)",
                self.console_tail,
                "--- journal (tail)",
                self.journal_tail,
            ]
        return "\n".join(lines)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def boot(image: Image, share: Path, outcome: Outcome, log: Log = _quiet) -> None:
    """Boot the VM, follow the check lines on the console, wait for the result file."""
    results = share / "results"
    console = results / "console.log"
    rc_file = results / "rc"
    limit = GUEST_TIMEOUT + BOOT_ALLOWANCE + REBOOT_ALLOWANCE
    started = time.monotonic()
    with (results / "qemu.log").open("wb") as qemu_log:
        process = subprocess.Popen(
            qemu_command(image, share, console),
            stdin=subprocess.DEVNULL,
            stdout=qemu_log,
            stderr=subprocess.STDOUT,
        )
        try:
            shown = 0
            while True:
                shown = _follow(console, shown, log)
                # a result counts only once the guest is past its reboot (the guest
                # checks reboot once, midway: QEMU resets the machine, keeping its disk)
                rebooting = (results / "rebooting.json").exists()
                if rc_file.exists() and rc_file.read_text().strip() and not rebooting:
                    break
                if process.poll() is not None:
                    break
                if time.monotonic() - started > limit:
                    outcome.timed_out = True
                    log(f"e2e: no result within {limit:g}s; killing qemu")
                    break
                time.sleep(1.0)
            if not outcome.timed_out:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=POWEROFF_GRACE)
            _follow(console, shown, log)
        finally:
            _stop(process)
    outcome.seconds["vm"] = time.monotonic() - started
    text = rc_file.read_text().strip() if rc_file.exists() else ""
    outcome.rc = int(text) if text.lstrip("-").isdigit() else None


def _follow(console: Path, shown: int, log: Log) -> int:
    """Log the check lines that appeared on the console since ``shown`` of them."""
    try:
        lines = console.read_text(errors="replace").splitlines()
    except OSError:
        return shown
    picked = [
        line.strip()
        for line in lines
        if line.startswith(("PASS ", "FAIL ", "SKIP ", "guest checks:"))
    ]
    for line in picked[shown:]:
        log(f"e2e: {line}")
    return len(picked)


def run_e2e(share: Path, log: Log = _quiet) -> Outcome:
    """Everything: image, wheels, share, boot, results. ``share`` must not exist yet."""
    outcome = Outcome(share)
    started = time.monotonic()
    image, outcome.built["image"] = ensure_image(log)
    outcome.seconds["image"] = time.monotonic() - started
    mark = time.monotonic()
    wheels, outcome.built["wheels"] = ensure_wheels(log)
    outcome.seconds["wheels"] = time.monotonic() - mark
    share.mkdir(parents=True)
    prepare_share(share, wheels)
    boot(image, share, outcome, log)
    results = share / "results"
    outcome.output = _tail(results / "output.txt", 400)
    outcome.console_tail = _tail(results / "console.log", 60)
    outcome.journal_tail = _tail(results / "journal.txt", 120)
    try:
        outcome.checks = json.loads((results / "checks.json").read_text())
    except (OSError, ValueError):
        outcome.checks = []
    outcome.seconds["total"] = time.monotonic() - started
    return outcome


def main() -> int:
    missing = missing_prerequisites()
    if missing:
        print("e2e: cannot run here, missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    share = Path(os.environ.get("TMPDIR", "/tmp")) / f"sentinel-keeper-e2e-{os.getpid()}"
    outcome = run_e2e(share, log=lambda line: print(line, flush=True))
    print(outcome.describe())
    return 0 if outcome.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
