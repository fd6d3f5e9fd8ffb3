"""What the benchmarks share: the Ollama double's model set and timings, the daemon as a
subprocess with a real NOTIFY_SOCKET, and /proc readings of its memory and CPU.

The benchmarks run from a checkout (``python benchmarks/NAME.py``): the Ollama double is
imported from tests/, sentinel-keeper from the checkout (or the installed package).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import ollama_double  # noqa: E402
from ollama_double import FakeModel, GiB, MiB  # noqa: E402

# The double's timings, after the measurements quoted in the README (a warm first token in
# about 500 ms, cold loads of 1.2 to 15 s growing with the model's size). A load takes
# LOAD_SECONDS + LOAD_SECONDS_PER_GIB * the bytes Ollama predicts for it (weights, KV cache,
# compute graph): 1.3 s for llama3.2:1b at num_ctx 2048, 15.7 s for gemma3:27b at 4096.
LOAD_SECONDS = 0.2
LOAD_SECONDS_PER_GIB = 0.8
FIRST_TOKEN_SECONDS = 0.5
TOKEN_SECONDS = 0.03
VRAM = 24 * GiB


@dataclass(frozen=True)
class PinnedModel:
    model: FakeModel
    num_ctx: int


PINNED = (
    PinnedModel(
        FakeModel(
            "llama3.2:1b",
            size=1300 * MiB,
            block_count=16,
            head_count_kv=8,
            embedding_length=2048,
            head_count=32,
            parameter_size="1.2B",
        ),
        2048,
    ),
    PinnedModel(
        FakeModel(
            "qwen2.5-coder:7b",
            size=4700 * MiB,
            family="qwen2",
            block_count=28,
            head_count_kv=4,
            embedding_length=3584,
            head_count=28,
            context_length=32768,
            parameter_size="7.6B",
        ),
        8192,
    ),
    PinnedModel(
        FakeModel(
            "qwen2.5:14b",
            size=9 * GiB,
            family="qwen2",
            block_count=48,
            head_count_kv=8,
            embedding_length=5120,
            head_count=40,
            context_length=32768,
            parameter_size="14.8B",
        ),
        8192,
    ),
)
# A model no policy names, which someone else's client loads now and then.
FOREIGN = FakeModel(
    "gemma3:27b",
    size=16 * GiB,
    family="gemma3",
    block_count=62,
    head_count_kv=16,
    embedding_length=5376,
    head_count=32,
    parameter_size="27.4B",
)
FOREIGN_NUM_CTX = 4096


def make_double(
    *, keep_alive: str | None, time_scale: float, vram: int = VRAM
) -> ollama_double.OllamaDouble:
    """A double with the pinned models and the foreign one installed, the benchmark's timings
    and ``OLLAMA_KEEP_ALIVE`` = ``keep_alive`` (None: Ollama's 5m default)."""
    return ollama_double.OllamaDouble(
        [p.model for p in PINNED] + [FOREIGN],
        vram_total=vram,
        keep_alive=keep_alive,
        load_seconds=LOAD_SECONDS,
        load_seconds_per_gib=LOAD_SECONDS_PER_GIB,
        first_token_seconds=FIRST_TOKEN_SECONDS,
        token_seconds=TOKEN_SECONDS,
        time_scale=time_scale,
    )


def quiet_double_errors() -> None:
    """The double's HTTP server prints a traceback for every connection a restart cuts; a
    benchmark expects those (the clients retry), so they are not printed."""

    def handle_error(self: object, request: object, client_address: object) -> None:
        return

    ollama_double._Server.handle_error = handle_error  # type: ignore[method-assign]


def format_seconds(seconds: float) -> str:
    """A duration for a policy file: whole milliseconds ("125ms")."""
    return f"{max(round(seconds * 1000), 1)}ms"


def write_policy(
    path: Path,
    url: str,
    *,
    interval: float,
    models: Sequence[PinnedModel] = PINNED,
    ready: str = "pinned",
) -> Path:
    lines = [
        "ollama:",
        f"  url: {url}",
        "  keep_alive: -1",
        "  request_timeout: 5s",
        "  load_timeout: 2m",
        f"interval: {format_seconds(interval)}",
        f"ready: {ready}",
        "startup_timeout: 2m",
        "models:",
    ]
    for pinned in models:
        lines.append(f"  - name: {pinned.model.name}")
        lines.append(f"    options: {{num_ctx: {pinned.num_ctx}}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- systemd's side of sd_notify ------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket, bound as systemd binds NOTIFY_SOCKET; records each message
    with the time.monotonic() of its arrival."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, dict[str, str]]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            fields = dict(
                line.split("=", 1) for line in data.decode("latin-1").split("\n") if "=" in line
            )
            with self._lock:
                self._messages.append((at, fields))

    def first(self, key: str, value: str) -> float | None:
        """When the first message with ``key=value`` arrived, if one has."""
        with self._lock:
            for at, fields in self._messages:
                if fields.get(key) == value:
                    return at
        return None

    def wait_for(self, key: str, value: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            at = self.first(key, value)
            if at is not None:
                return at
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key}={value} from the daemon within {timeout:g} s")
            time.sleep(0.005)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(timeout=2)


# --- the daemon -----------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class DaemonProcess:
    """``python -m sentinel_keeper --policy P run`` with NOTIFY_SOCKET bound here, a temporary
    STATE_DIRECTORY, no watchdog, and its log (JSON lines) in ``log_path``. With a
    ``time_scale`` other than 1, the daemon's own clock constants are divided by it
    (_scaled_daemon.py)."""

    def __init__(
        self, policy: Path, workdir: Path, notify: NotifySocket, *, time_scale: float = 1.0
    ) -> None:
        self.log_path = workdir / "daemon.log"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "NOTIFY_"))
        }
        environ.update(
            NOTIFY_SOCKET=str(notify.path),
            STATE_DIRECTORY=str(workdir / "state"),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p),
        )
        environ.pop("JOURNAL_STREAM", None)
        if time_scale != 1.0:
            # the daemon's own clock constants scaled too (see _scaled_daemon.py)
            environ["SENTINEL_BENCH_TIME_SCALE"] = repr(time_scale)
            program = [str(Path(__file__).with_name("_scaled_daemon.py"))]
        else:
            program = ["-m", "sentinel_keeper"]
        self._log = self.log_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *program,
                "--policy",
                str(policy),
                "run",
                "--log-format",
                "json",
            ],
            cwd=workdir,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/PID/status")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()


def temp_workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)


def machine_note() -> str:
    """CPU count and load, for the record: timings on a busy machine are noisy."""
    try:
        load = os.getloadavg()
    except OSError:
        return f"{os.cpu_count()} CPUs"
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def code_version() -> str:
    """The checkout's commit, "+changes" when the work tree differs from it: the daemon
    measured is the code in this checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "sentinel_keeper"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit}{' +changes in sentinel_keeper/' if dirty else ''}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (the value below which ``fraction`` of the values fall)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]
