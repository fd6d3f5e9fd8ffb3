"""The end-to-end checks, run as root inside the test VM under a real systemd (PID 1).

Standard library only: it runs on the guest's own python3 before sentinel-keeper exists.
It sets up an ``ollama.service`` (the project's Ollama double) with an administrator's
``override.conf``, runs ``install.sh`` from a copy of the checkout with offline wheels, then
drives the product as its users do: systemctl, journalctl, the policy file. Each check prints
one ``PASS name: detail`` or ``FAIL name: detail`` line; a check whose prerequisite failed is
``SKIP``. Results also go to ``RESULTS/checks.json``; the exit status is 0 only if every check
passed. Every wait is bounded.

    python3 guest_checks.py --share /mnt/e2e
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

UNIT = "sentinel-keeper.service"
OLLAMA = "ollama.service"
OLLAMA_URL = "http://127.0.0.1:11434"
UNIT_DIR = Path("/etc/systemd/system")
OLLAMA_DROPINS = UNIT_DIR / "ollama.service.d"
OVERRIDE = OLLAMA_DROPINS / "override.conf"
OUR_DROPIN = OLLAMA_DROPINS / "zz-sentinel-keeper.conf"
POLICY = Path("/etc/sentinel/policy.yaml")
STATE_DIR = Path("/var/lib/private/sentinel-keeper")
CHECKOUT = Path("/root/sentinel-keeper")
DOUBLE_DIR = Path("/opt/ollama-double")
DOUBLE_CONFIG = Path("/etc/ollama-double")
UNIT_SEARCH_PATH = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/run/systemd/transient",
    "/run/systemd/generator",
    "/run/systemd/generator.late",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
# The daemon stops within a few seconds; the unit's TimeoutStopSec=15s would SIGKILL it.
STOP_LIMIT = 10.0
LLAMA = "llama3.2:1b"
EMBED = "nomic-embed-text:latest"

# The policy after the first edit: a second pinned model (embedding only), another num_ctx,
# a finite OLLAMA_KEEP_ALIVE and a shorter interval.
EDITED_POLICY = """\
ollama:
  url: http://127.0.0.1:11434
  unit: ollama.service
  keep_alive: 24h
  restart: if-changed
interval: 5s
models:
  - name: llama3.2:1b
    options: {num_ctx: 4096}
  - name: nomic-embed-text
"""
# Broken at line 9, column 24: num_ctx must be a positive integer.
BROKEN_POLICY = EDITED_POLICY.replace("{num_ctx: 4096}", "{num_ctx: big}")


class Failed(Exception):
    """A check's verdict, with what was seen."""


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    seconds: float


# --- running things ----------------------------------------------------------------------


def run(
    *args: str, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"`{' '.join(args)}` did not finish within {timeout:g}s") from exc


def must(*args: str, timeout: float = 60.0) -> str:
    done = run(*args, timeout=timeout)
    if done.returncode != 0:
        raise Failed(
            f"`{' '.join(args)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout


def show(unit: str, *props: str) -> dict[str, str]:
    """``systemctl show UNIT -p A -p B`` as a dict."""
    args = ["systemctl", "show", unit]
    for prop in props:
        args += ["-p", prop]
    out = must(*args)
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None; Failed after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except Failed as exc:
            value, last = None, exc
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last: {last}" if last is not None else ""
            raise Failed(f"{what}: not within {timeout:g}s{seen}")
        time.sleep(every)


def http_json(path: str) -> Any:
    try:
        with urllib.request.urlopen(OLLAMA_URL + path, timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Failed(f"GET {path}: {exc}") from exc


def loaded() -> dict[str, dict[str, Any]]:
    """What /api/ps shows, by model name."""
    return {m["name"]: m for m in http_json("/api/ps").get("models", [])}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main_pid() -> int:
    return int(show(UNIT, "MainPID")["MainPID"])


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return env


# --- the journal -------------------------------------------------------------------------


def cursor() -> float:
    """Now, as a journal position: entries at or after it are ``journal(after=...)``.

    Wall-clock time rather than a journal cursor: journald reads the daemon's stdout stream
    asynchronously, and an entry may land behind a cursor taken after it was written.
    """
    return time.time()


@dataclass(frozen=True)
class Entry:
    priority: int
    message: str


def journal(
    unit: str = UNIT, *, after: float | None = None, priority: str | None = None
) -> list[Entry]:
    args = ["journalctl", "-u", unit, "-o", "json", "--no-pager", "-b"]
    if priority is not None:
        args += ["-p", priority]
    entries: list[Entry] = []
    for line in must(*args).splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        if after is not None and int(data["__REALTIME_TIMESTAMP"]) < after * 1e6:
            continue
        message = data.get("MESSAGE", "")
        if isinstance(message, list):  # journald sends non-UTF-8 messages as byte arrays
            message = bytes(message).decode(errors="replace")
        entries.append(Entry(int(data.get("PRIORITY", 6)), str(message)))
    return entries


def journal_until(
    what: str, after: float, found: Callable[[list[Entry]], list[Entry]], timeout: float = 15.0
) -> list[Entry]:
    """Wait until ``found`` picks something among the unit's entries since ``after``."""

    def probe() -> list[Entry] | None:
        entries = journal(after=after)
        picked = found(entries)
        if not picked:
            raise Failed(f"entries since then: {[e.message for e in entries][-6:]}")
        return picked

    return wait_for(what, probe, timeout)


def events(entries: Sequence[Entry], name: str, *needles: str) -> list[Entry]:
    """Entries of the daemon's event ``name`` (the first word) containing every needle."""
    return [
        e
        for e in entries
        if e.message.split(" ", 1)[0] == name and all(n in e.message for n in needles)
    ]


# --- the runner --------------------------------------------------------------------------


class Checks:
    def __init__(self, results_dir: Path) -> None:
        self.results_dir = results_dir
        self.results: list[Result] = []

    def status(self, name: str) -> str | None:
        for result in self.results:
            if result.name == name:
                return result.status
        return None

    def check(self, name: str, body: Callable[[], str], needs: Sequence[str] = ()) -> bool:
        missing = [n for n in needs if self.status(n) != "PASS"]
        started = time.monotonic()
        if missing:
            result = Result(name, "SKIP", f"needs {', '.join(missing)}", 0.0)
        else:
            try:
                result = Result(name, "PASS", body(), time.monotonic() - started)
            except Failed as exc:
                result = Result(name, "FAIL", str(exc), time.monotonic() - started)
            except Exception as exc:
                trace = traceback.format_exc(limit=3).strip().replace("\n", " | ")
                result = Result(
                    name,
                    "FAIL",
                    f"{type(exc).__name__}: {exc} ({trace})",
                    time.monotonic() - started,
                )
        self.results.append(result)
        print(f"{result.status} {name} ({result.seconds:.1f}s): {result.detail}", flush=True)
        self.save()
        return result.status == "PASS"

    def save(self) -> None:
        data = [asdict(r) for r in self.results]
        (self.results_dir / "checks.json").write_text(json.dumps(data, indent=2) + "\n")

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.status == "PASS" for r in self.results)


def log(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        print(f"    | {line}", flush=True)


# --- the checks --------------------------------------------------------------------------


class Scenario:
    def __init__(self, share: Path) -> None:
        self.share = share
        self.guest = share / "src" / "tests" / "e2e" / "guest"
        self.wheels = share / "wheels"
        self.override_sha = ""
        self.install_output = ""

    # The stand-in Ollama, as an administrator has it: a unit and an override.conf.
    def ollama(self) -> str:
        must("systemctl", "is-system-running", "--wait", timeout=120)
        DOUBLE_DIR.mkdir(parents=True, exist_ok=True)
        DOUBLE_CONFIG.mkdir(parents=True, exist_ok=True)
        OLLAMA_DROPINS.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.share / "src" / "tests" / "support" / "ollama_double.py", DOUBLE_DIR)
        shutil.copy(self.guest / "models.json", DOUBLE_CONFIG / "models.json")
        shutil.copy(self.guest / "ollama.service", UNIT_DIR / OLLAMA)
        shutil.copy(self.guest / "ollama-override.conf", OVERRIDE)
        self.override_sha = sha256(OVERRIDE)
        must("systemctl", "daemon-reload")
        must("systemctl", "enable", "--now", OLLAMA)
        version = wait_for("ollama answers", lambda: http_json("/api/version"), 60)
        return f"ollama.service answers on {OLLAMA_URL}, version {version['version']}"

    def install(self) -> str:
        if CHECKOUT.exists():
            shutil.rmtree(CHECKOUT)
        shutil.copytree(self.share / "src", CHECKOUT, symlinks=True)
        # The test's own `systemctl edit sentinel-keeper`-style drop-in (a shorter watchdog).
        dropins = UNIT_DIR / f"{UNIT}.d"
        dropins.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.guest / "sentinel-keeper-watchdog.conf", dropins / "e2e-watchdog.conf")
        started = time.monotonic()
        done = run("./install.sh", "--wheels", str(self.wheels), timeout=420, cwd=CHECKOUT)
        took = time.monotonic() - started
        log(done.stdout + done.stderr)
        self.install_output = done.stdout
        if done.returncode != 0:
            raise Failed(f"install.sh exited {done.returncode} after {took:.0f}s")
        for needle in ("journalctl -u sentinel-keeper", "/etc/sentinel/policy.yaml", "installed"):
            if needle not in done.stdout:
                raise Failed(f"install.sh's output does not mention {needle!r}")
        for path in (
            Path("/opt/sentinel-keeper/bin/sentinel-keeper"),
            UNIT_DIR / UNIT,
            POLICY,
        ):
            if not path.exists():
                raise Failed(f"{path} is missing after install.sh")
        link = Path("/usr/local/bin/sentinel-keeper")
        if os.readlink(link) != "/opt/sentinel-keeper/bin/sentinel-keeper":
            raise Failed(f"{link} points to {os.readlink(link)}")
        if POLICY.read_bytes() != (CHECKOUT / "etc/sentinel/policy.yaml").read_bytes():
            raise Failed("the installed policy is not the example")
        enabled = run("systemctl", "is-enabled", UNIT).stdout.strip()
        if enabled != "enabled":
            raise Failed(f"{UNIT} is {enabled!r}, not enabled")
        return f"install.sh took {took:.0f}s; unit enabled, example policy installed"

    def wait_resident(self, pinned: str, timeout: float) -> dict[str, str]:
        def probe() -> dict[str, str] | None:
            props = show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
            good = (
                props["ActiveState"] == "active"
                and props["SubState"] == "running"
                and props["StatusText"].startswith(f"{pinned} pinned resident")
            )
            if not good:
                raise Failed(str(props))
            return props

        return wait_for(f"{UNIT} active with {pinned} pinned resident", probe, timeout)

    def running(self) -> str:
        props = self.wait_resident("1/1", 90)
        models = loaded()
        llama = models.get(LLAMA)
        if llama is None:
            raise Failed(f"/api/ps does not show {LLAMA}: {sorted(models)}")
        if llama.get("context_length") != 2048:
            raise Failed(f"{LLAMA} loaded with context_length {llama.get('context_length')}")
        expires = str(llama.get("expires_at", ""))
        if not (expires[:4].isdigit() and int(expires[:4]) > 2200):
            raise Failed(f"{LLAMA} expires at {llama.get('expires_at')}, not forever")
        return f"active/running, StatusText={props['StatusText']!r}; /api/ps: {LLAMA} forever"

    def environment(self) -> str:
        props = show(OLLAMA, "Environment", "DropInPaths", "MainPID")
        env = props["Environment"].split()
        if "OLLAMA_KEEP_ALIVE=-1" not in env:
            raise Failed(f"Environment={props['Environment']!r} lacks OLLAMA_KEEP_ALIVE=-1")
        if "OLLAMA_NUM_PARALLEL=1" not in env:
            raise Failed("override.conf's OLLAMA_NUM_PARALLEL=1 is no longer in force")
        paths = props["DropInPaths"].split()
        if paths != [str(OVERRIDE), str(OUR_DROPIN)]:
            raise Failed(f"DropInPaths={paths}, wanted override.conf then zz-sentinel-keeper.conf")
        if sha256(OVERRIDE) != self.override_sha:
            raise Failed("override.conf changed")

        # The drop-in came after ollama started: apply-override restarted it.
        def restarted() -> str | None:
            pid = int(show(OLLAMA, "MainPID")["MainPID"])
            value = proc_environ(pid).get("OLLAMA_KEEP_ALIVE") if pid else None
            if value != "-1":
                raise Failed(f"ollama's process has OLLAMA_KEEP_ALIVE={value}")
            return value

        wait_for("the running ollama sees OLLAMA_KEEP_ALIVE=-1", restarted, 30)
        return (
            "OLLAMA_KEEP_ALIVE=-1 in ollama's Environment and in its process; drop-ins: "
            f"{', '.join(Path(p).name for p in paths)}; override.conf unchanged"
        )

    def journal_loads(self) -> str:
        entries = journal()
        loads = events(entries, "model_loaded", f"model={LLAMA}")
        if not loads:
            tail = " / ".join(e.message for e in entries[-8:])
            raise Failed(f"no model_loaded model={LLAMA} in the journal; last entries: {tail}")
        if any(e.priority != 6 for e in loads):
            raise Failed(f"model_loaded not at priority info: {[e.priority for e in loads]}")
        return f"{len(loads)} model_loaded line(s), e.g. {loads[0].message!r}"

    def unprivileged(self) -> str:
        pid = main_pid()
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        caps = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
        if "0" in uids:
            raise Failed(f"main process {pid} runs with uids {uids}")
        if int(caps, 16) != 0:
            raise Failed(f"main process has capabilities {caps}")
        state = STATE_DIR / "state.json"

        def written() -> os.stat_result | None:
            return state.stat() if state.exists() else None

        st = wait_for(f"{state} exists", written, 30)
        if str(st.st_uid) != uids[0]:
            raise Failed(f"{state} belongs to uid {st.st_uid}, the daemon runs as {uids[0]}")
        if LLAMA not in state.read_text():
            raise Failed(f"{state} does not remember {LLAMA}")
        link = Path("/var/lib/sentinel-keeper")
        if not link.is_symlink():
            raise Failed(f"{link} is not the DynamicUser symlink")
        return (
            f"pid {pid} runs as uid {uids[0]} with no capabilities; it reached ollama (loads), "
            f"read the policy, wrote {state} (owner uid {st.st_uid}), logs to the journal"
        )

    def ollama_restart(self) -> str:
        mark = cursor()
        started = time.monotonic()
        must("systemctl", "restart", OLLAMA)

        def back() -> float | None:
            if LLAMA not in loaded():
                raise Failed(f"{LLAMA} not loaded")
            return time.monotonic() - started

        # The restart falls between two passes of the 15 s interval; the daemon's watch of
        # /api/ps between passes (every 2 s) sees the model gone and runs a pass at once.
        # (tests/test_faults.py measures that precisely; here emulation makes timings loose.)
        seconds = wait_for(f"{LLAMA} resident after the ollama restart", back, 30)

        found = journal_until(
            "the journal says it loaded the model again",
            mark,
            lambda es: events(es, "model_loaded", f"model={LLAMA}"),
            20,
        )
        self.wait_resident("1/1", 30)
        return (
            f"{LLAMA} resident again {seconds:.1f}s after `systemctl restart ollama`; "
            f"journal: {found[-1].message!r}"
        )

    def metrics(self) -> str:
        """The endpoint at the default 127.0.0.1:9464, inside the unit's sandbox: the figures
        of the run so far, read-only, and `status` reads them back."""
        url = "http://127.0.0.1:9464/metrics"
        resident = f'sentinel_keeper_model_resident{{model="{LLAMA}",tier="pinned"}} 1.0'

        def page() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    text: str = response.read().decode()
            except (urllib.error.URLError, OSError) as exc:
                raise Failed(f"GET {url}: {exc}") from exc
            if resident not in text.splitlines():
                raise Failed(f"no {resident!r} on the page")
            return text

        text = wait_for("the metrics page shows the pinned model resident", page, 30)
        loads = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(f'sentinel_keeper_model_loads_total{{model="{LLAMA}"')
        ]
        if sum(loads) < 2:
            raise Failed(f"{LLAMA}: {sum(loads):g} loads counted, not the restart's reload")
        request = urllib.request.Request(url, data=b"x", method="POST")
        try:
            urllib.request.urlopen(request, timeout=5)
            raise Failed("POST /metrics was accepted")
        except urllib.error.HTTPError as exc:
            if exc.code != 405:
                raise Failed(f"POST /metrics answered {exc.code}, not 405") from exc
        status = run("/usr/local/bin/sentinel-keeper", "status", timeout=60)
        if "daemon figures since it started" not in status.stdout:
            raise Failed(f"status shows no daemon figures: {status.stdout[-400:]}")
        return f"{url}: {LLAMA} resident, {sum(loads):g} loads; POST is 405; status reads it"

    def priorities(self) -> str:
        warnings = journal(priority="warning")
        if not warnings:
            raise Failed("journalctl -p warning shows nothing (nvml_unavailable expected in a VM)")
        worse = [e for e in warnings if e.priority > 4]
        if worse:
            raise Failed(f"-p warning shows entries of priority > 4: {worse[:3]}")
        names = {e.message.split(" ", 1)[0] for e in warnings}
        if "nvml_unavailable" not in names:
            raise Failed(f"no nvml_unavailable among the warnings: {sorted(names)}")
        noise = names & {"model_loaded", "starting", "ready", "pass", "ollama_found"}
        if noise:
            raise Failed(f"info events among the warnings: {sorted(noise)}")
        infos = [e for e in journal() if e.priority == 6]
        if not events(infos, "model_loaded"):
            raise Failed("no model_loaded at priority 6")
        return f"-p warning shows only {sorted(names)} ({len(warnings)} entries); loads are at info"

    def reload_policy(self) -> str:
        mark = cursor()
        pid = main_pid()
        POLICY.write_text(EDITED_POLICY)
        done = run("systemctl", "reload", UNIT, timeout=120)
        if done.returncode != 0:
            raise Failed(f"systemctl reload exited {done.returncode}: {done.stderr.strip()}")
        props = self.wait_resident("2/2", 120)

        def in_force() -> dict[str, dict[str, Any]] | None:
            models = loaded()
            llama, embed = models.get(LLAMA), models.get(EMBED)
            if llama is None or embed is None or llama.get("context_length") != 4096:
                raise Failed(f"/api/ps: {json.dumps(models)[:300]}")
            return models

        wait_for("both pinned models loaded as the new policy says", in_force, 60)
        env = show(OLLAMA, "Environment")["Environment"].split()
        if "OLLAMA_KEEP_ALIVE=24h" not in env:
            raise Failed(f"ollama's Environment is {env}, not OLLAMA_KEEP_ALIVE=24h")
        journal_until("policy_reloaded", mark, lambda es: events(es, "policy_reloaded"))
        if main_pid() != pid:
            raise Failed("the reload restarted the daemon")
        return (
            f"reload ok; StatusText={props['StatusText']!r}; {LLAMA} at num_ctx 4096 and {EMBED} "
            "resident; OLLAMA_KEEP_ALIVE=24h; same main process"
        )

    def broken_policy(self) -> str:
        mark = cursor()
        pid = main_pid()
        dropin = OUR_DROPIN.read_bytes()
        POLICY.write_text(BROKEN_POLICY)
        try:
            done = run("systemctl", "reload", UNIT, timeout=120)
            if done.returncode == 0:
                raise Failed("systemctl reload succeeded with a broken policy")
            # At priority err, so that `journalctl -p warning` says why the reload failed.
            pointer = journal_until(
                "the journal points at policy.yaml:9 at priority err",
                mark,
                lambda es: [
                    e
                    for e in es
                    if "policy.yaml:9:" in e.message and "num_ctx" in e.message and e.priority <= 3
                ],
            )
            props = show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
            if (props["ActiveState"], props["SubState"]) != ("active", "running"):
                raise Failed(f"after the failed reload: {props}")
            if int(props["MainPID"]) != pid or not props["StatusText"].startswith("2/2 pinned"):
                raise Failed(f"the daemon did not keep running on the old policy: {props}")
            if OUR_DROPIN.read_bytes() != dropin:
                raise Failed("the drop-in changed although the policy is broken")
            # A plain SIGHUP reaches the daemon itself, which must refuse the policy too.
            hup = cursor()
            must("systemctl", "kill", "--kill-whom=main", "-s", "HUP", UNIT)

            found = journal_until(
                "the daemon logs policy_rejected", hup, lambda es: events(es, "policy_rejected"), 30
            )
            props = show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID")
            if props["ActiveState"] != "active" or int(props["MainPID"]) != pid:
                raise Failed(f"after SIGHUP with a broken policy: {props}")
            if LLAMA not in loaded() or EMBED not in loaded():
                raise Failed("the pinned models went away")
        finally:
            POLICY.write_text(EDITED_POLICY)
        must("systemctl", "reload", UNIT, timeout=120)
        return (
            f"reload failed (exit {done.returncode}) and the journal says {pointer[0].message!r}; "
            f"same process, still {props['StatusText']!r}; SIGHUP: {found[0].message!r}"
        )

    def watchdog(self) -> str:
        props = show(UNIT, "MainPID", "NRestarts", "WatchdogUSec")
        pid, restarts = int(props["MainPID"]), int(props["NRestarts"])
        mark = cursor()
        started = time.monotonic()
        os.kill(pid, signal.SIGSTOP)  # frozen: neither dead nor pinging

        def replaced() -> dict[str, str] | None:
            now = show(UNIT, "MainPID", "NRestarts", "ActiveState", "SubState")
            if int(now["MainPID"]) in (0, pid) or now["ActiveState"] != "active":
                raise Failed(str(now))
            return now

        now = wait_for("a new main process after the watchdog fired", replaced, 150)
        seconds = time.monotonic() - started
        if int(now["NRestarts"]) != restarts + 1:
            raise Failed(f"NRestarts went from {restarts} to {now['NRestarts']}")
        journal_until(
            "systemd logs a watchdog timeout",
            mark,
            lambda es: [e for e in es if "Watchdog timeout" in e.message],
        )
        self.wait_resident("2/2", 90)
        return (
            f"WatchdogUSec={props['WatchdogUSec']}: pid {pid} frozen, systemd restarted it as "
            f"pid {now['MainPID']} after {seconds:.0f}s; pinned resident again"
        )

    def upgrade(self) -> str:
        before = POLICY.read_bytes()
        pid = main_pid()
        started = time.monotonic()
        done = run("./install.sh", "--wheels", str(self.wheels), timeout=420, cwd=CHECKOUT)
        took = time.monotonic() - started
        log(done.stdout + done.stderr)
        if done.returncode != 0:
            raise Failed(f"the second install.sh exited {done.returncode}")
        if "reinstalled sentinel-keeper" not in done.stdout:
            raise Failed("the second install.sh does not say it reinstalled the same version")
        if POLICY.read_bytes() != before:
            raise Failed("the upgrade changed the policy")
        if not POLICY.with_name("policy.yaml.example").exists():
            raise Failed("no policy.yaml.example beside the edited policy")
        props = self.wait_resident("2/2", 90)
        if int(props["MainPID"]) == pid:
            raise Failed("the running service was not restarted by the upgrade")
        return f"re-run took {took:.0f}s: reinstalled, policy kept, example beside it, restarted"

    def stop(self) -> str:
        mark = cursor()
        started = time.monotonic()
        must("systemctl", "stop", UNIT, timeout=60)
        seconds = time.monotonic() - started
        props = show(UNIT, "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        wanted = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        if any(props[k] != v for k, v in wanted.items()):
            raise Failed(f"after stop: {props}")
        if seconds > STOP_LIMIT:
            raise Failed(f"the stop took {seconds:.1f}s, more than {STOP_LIMIT:g}s")
        journal_until("the daemon logs stopping", mark, lambda es: events(es, "stopping"))
        said = [e.message for e in journal(after=mark)]
        if any("SIGKILL" in m or "timed out" in m.lower() for m in said):
            raise Failed(f"unclean stop: {said}")
        return f"stopped in {seconds:.1f}s, exit status 0, Result=success, no SIGKILL"

    def uninstall(self) -> str:
        # The test's own drop-in for the unit is the administrator's business: remove it first.
        shutil.rmtree(UNIT_DIR / f"{UNIT}.d", ignore_errors=True)
        done = run("./install.sh", "--uninstall", timeout=120, cwd=CHECKOUT)
        log(done.stdout + done.stderr)
        if done.returncode != 0:
            raise Failed(f"install.sh --uninstall exited {done.returncode}")
        leftovers = [
            str(p)
            for p in (
                UNIT_DIR / UNIT,
                OUR_DROPIN,
                Path("/opt/sentinel-keeper"),
                Path("/usr/local/bin/sentinel-keeper"),
            )
            if p.exists() or p.is_symlink()
        ]
        leftovers += [
            str(p)
            for d in UNIT_SEARCH_PATH
            if Path(d).is_dir()
            for p in Path(d).rglob("*sentinel-keeper*")
        ]
        if leftovers:
            raise Failed(f"left behind: {leftovers}")
        load = show(UNIT, "LoadState")["LoadState"]
        if load != "not-found":
            raise Failed(f"{UNIT} LoadState={load}")
        if sha256(OVERRIDE) != self.override_sha:
            raise Failed("override.conf changed")
        props = show(OLLAMA, "Environment", "DropInPaths")
        if "OLLAMA_KEEP_ALIVE" in props["Environment"] or props["DropInPaths"] != str(OVERRIDE):
            raise Failed(f"ollama still has sentinel-keeper's setting: {props}")
        if not POLICY.exists():
            raise Failed("--uninstall removed the policy")
        wait_for("ollama still runs", lambda: http_json("/api/version"), 30)
        return "no unit, no drop-in, no venv or link; override.conf unchanged; policy kept"

    def purge(self) -> str:
        done = run("./install.sh", "--purge", timeout=120, cwd=CHECKOUT)
        log(done.stdout + done.stderr)
        if done.returncode != 0:
            raise Failed(f"install.sh --purge exited {done.returncode}")
        left = [
            str(p)
            for p in (POLICY, POLICY.parent, STATE_DIR, Path("/var/lib/sentinel-keeper"))
            if p.exists() or p.is_symlink()
        ]
        if left:
            raise Failed(f"left behind: {left}")
        return "policy and state removed"


def diagnostics() -> None:
    print("--- diagnostics", flush=True)
    for args in (
        ("systemctl", "status", "--no-pager", "-l", UNIT, OLLAMA),
        ("journalctl", "-u", UNIT, "-b", "--no-pager", "-n", "60"),
    ):
        done = run(*args, timeout=30)
        log(done.stdout + done.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--share", type=Path, required=True)
    args = parser.parse_args(argv)
    results = args.share / "results"
    results.mkdir(parents=True, exist_ok=True)
    scenario = Scenario(args.share)
    checks = Checks(results)
    started = time.monotonic()
    steps: list[tuple[str, Callable[[], str], tuple[str, ...]]] = [
        ("ollama-unit", scenario.ollama, ()),
        ("install", scenario.install, ("ollama-unit",)),
        ("active-pinned-resident", scenario.running, ("install",)),
        ("ollama-environment-dropin", scenario.environment, ("install",)),
        ("journal-shows-loads", scenario.journal_loads, ("active-pinned-resident",)),
        ("unprivileged", scenario.unprivileged, ("active-pinned-resident",)),
        ("ollama-restart", scenario.ollama_restart, ("active-pinned-resident",)),
        ("metrics-endpoint", scenario.metrics, ("ollama-restart",)),
        ("journal-priorities", scenario.priorities, ("active-pinned-resident",)),
        ("reload-new-policy", scenario.reload_policy, ("active-pinned-resident",)),
        ("reload-broken-policy", scenario.broken_policy, ("reload-new-policy",)),
        ("watchdog-restarts-frozen", scenario.watchdog, ("reload-new-policy",)),
        ("upgrade-rerun", scenario.upgrade, ("reload-new-policy",)),
        ("stop-clean", scenario.stop, ("install",)),
        ("uninstall", scenario.uninstall, ("install",)),
        ("purge", scenario.purge, ("uninstall",)),
    ]
    for name, body, needs in steps:
        checks.check(name, body, needs)
    passed = sum(r.status == "PASS" for r in checks.results)
    print(
        f"guest checks: {passed} of {len(checks.results)} passed "
        f"in {time.monotonic() - started:.0f}s",
        flush=True,
    )
    if not checks.ok:
        diagnostics()
    return 0 if checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
