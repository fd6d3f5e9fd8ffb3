"""A fleet behind a real HAProxy: how many clients pay a cold load when one host's Ollama
restarts, with HAProxy checking the keeper's ``GET /ready`` and with the naive check on
Ollama's ``GET /``.

Two Ollama doubles (one pinned model, loads of ``--load-seconds``), one keeper per double
(``python -m sentinel_keeper run`` with its endpoint on a loopback port, the policy's default
interval), and HAProxy (Debian's package) configured from contrib/haproxy/ollama-fleet.cfg:
every line of the shipped file but ``bind`` and ``server``, which point at loopback ports,
plus a stats socket to watch the servers' states. ``--clients`` threads send a steady
stream of non-streamed /api/generate requests for the pinned model (with the policy's
num_ctx, so that no request reloads it) through HAProxy. Once both hosts are warm, the first
double restarts (every model gone, the port refusing connections for ``--down-seconds``), and
the stream goes on until that host is warm and back in rotation (or ``--after`` seconds).

A cold hit is an answer whose ``load_duration`` is over half a second (the gateway's rule):
Ollama reports the time until the model was ready for that request, the wait behind another
request's load included. A failed request is one that got no 200 from HAProxy.

The same keepers and doubles serve both checks, one after the other (``--checks``).

    python -m benchmarks.fleet --out docs/fleet.md

replaces the measured section of docs/fleet.md (between its markers).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import _harness
from tests.support.daemon import DaemonProcess, NotifySocket, free_port, wait_until
from tests.support.ollama_double import OllamaDouble

SHIPPED = _harness.ROOT / "contrib" / "haproxy" / "ollama-fleet.cfg"
MODEL = _harness.PINNED[0]  # llama3.2:1b at num_ctx 2048
COLD_SECONDS = 0.5  # load_duration above this: the client paid a load
CHECKS = ("ready", "naive")
START = "<!-- fleet-benchmark:start -->"
END = "<!-- fleet-benchmark:end -->"


# --- HAProxy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    ollama_port: int
    keeper_port: int


def haproxy_config(
    shipped: str, *, check: str, frontend: int, hosts: Sequence[Host], stats: Path
) -> str:
    """The shipped configuration with its ``bind`` and ``server`` lines pointed at loopback
    (``check``: "ready", the keeper's /ready on its port, as shipped; "naive": Ollama's own
    ``GET /`` on the traffic port), and a stats socket."""
    out: list[str] = []
    for line in shipped.splitlines():
        words = line.split()
        if words[:1] == ["server"]:
            continue
        if words[:1] == ["bind"]:
            out.append(f"    bind 127.0.0.1:{frontend}")
        elif words[:1] == ["global"]:
            out += [line, f"    stats socket {stats} mode 600 level user"]
        elif words == ["option", "httpchk", "GET", "/ready"] and check == "naive":
            out.append("    option httpchk GET /")
        else:
            out.append(line)
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    for host in hosts:
        where = f"127.0.0.1:{host.ollama_port}"
        port = f" port {host.keeper_port}" if check == "ready" else ""
        out.append(f"    server {host.name} {where} check{port}")
    return "\n".join(out) + "\n"


def server_states(stats: Path) -> dict[str, str]:
    """``show stat`` on the stats socket: each server's status (UP, DOWN, "UP 1/3"...)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
    return {r["svname"]: r["status"] for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}


class HAProxy:
    def __init__(self, binary: str, config: str, workdir: Path) -> None:
        self.path = workdir / "haproxy.cfg"
        self.path.write_text(config, encoding="utf-8")
        checked = subprocess.run(
            [binary, "-c", "-q", "-f", str(self.path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy -c: {checked.stderr or checked.stdout}")
        self.log = (workdir / "haproxy.log").open("w")
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None
    )


# --- the clients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic, when the request was sent
    seconds: float
    status: int | None  # None: no HTTP answer at all
    load_duration: float | None  # seconds, Ollama's figure
    error: str | None = None  # no HTTP answer: why

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def cold(self) -> bool:
        return self.load_duration is not None and self.load_duration > COLD_SECONDS


class Clients:
    """``count`` threads, each sending one request after another (``pause`` between)."""

    def __init__(self, url: str, count: int, pause: float) -> None:
        self.url = url
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        body = {
            "model": MODEL.model.name,
            "prompt": "hello",
            "stream": False,
            "options": {"num_ctx": MODEL.num_ctx},
        }
        with httpx.Client(timeout=60.0) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                status: int | None = None
                load: float | None = None
                error: str | None = None
                try:
                    answer = http.post(f"{self.url}/api/generate", json=body)
                    status = answer.status_code
                    if status == 200:
                        load = answer.json().get("load_duration", 0) / 1e9
                except (httpx.HTTPError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                took = time.monotonic() - sent
                with self._lock:
                    self.answers.append(Answer(sent, took, status, load, error))
                self._stop.wait(self.pause)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)
        with self._lock:
            return sorted(self.answers, key=lambda a: a.at)


class StateWatch:
    """The servers' states every 50 ms, with the time each changed."""

    def __init__(self, stats: Path) -> None:
        self.stats = stats
        self.changes: list[tuple[float, str, str]] = []  # (monotonic, server, status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: dict[str, str] = {}
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                for server, status in server_states(self.stats).items():
                    if last.get(server) != status:
                        last[server] = status
                        self.changes.append((time.monotonic(), server, status))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    check: str
    answers: list[Answer]
    restart_at: float
    changes: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for a in self.answers if not a.ok)

    @property
    def cold(self) -> list[Answer]:
        return [a for a in self.answers if a.ok and a.cold]

    def out_of_rotation(self, server: str) -> float | None:
        """Seconds ``server`` was not UP after the restart (None: it never left)."""
        down = next(
            (
                at
                for at, s, st in self.changes
                if s == server and at >= self.restart_at - 0.1 and not st.startswith("UP")
            ),
            None,
        )
        if down is None:
            return None
        up = next(
            (at for at, s, st in self.changes if s == server and at > down and st == "UP"), None
        )
        return None if up is None else up - down


@dataclass(frozen=True)
class Settings:
    clients: int = 4
    pause: float = 0.05
    load_seconds: float = 8.0  # a 7-8B model from a local disk
    down_seconds: float = 1.0
    warm: float = 2.0  # seconds of traffic before the restart
    after: float = 40.0  # at most this long after the restart
    checks: tuple[str, ...] = CHECKS


@dataclass
class Fleet:
    """Two doubles and their keepers, up and warm."""

    doubles: list[OllamaDouble]
    keepers: list[DaemonProcess]
    hosts: list[Host]

    def ready(self, host: Host) -> bool:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{host.keeper_port}/ready", timeout=2).status_code
                == 200
            )
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def fleet(settings: Settings, workdir: Path) -> Iterator[Fleet]:
    _harness.quiet_double_errors()
    doubles: list[OllamaDouble] = []
    keepers: list[DaemonProcess] = []
    sockets: list[NotifySocket] = []
    try:
        hosts: list[Host] = []
        for n in (1, 2):
            double = OllamaDouble(
                [MODEL.model],
                vram_total=_harness.VRAM,
                load_seconds=settings.load_seconds,
                first_token_seconds=0.02,
                token_seconds=0.005,
            ).start()
            doubles.append(double)
            home = workdir / f"host{n}"
            home.mkdir()
            port = free_port()
            policy = _harness.write_policy(
                home / "policy.yaml", double.url, interval=15.0, models=(MODEL,),
                metrics=f"127.0.0.1:{port}",
            )  # fmt: skip
            notify = NotifySocket(home / "notify.sock")
            sockets.append(notify)
            keepers.append(DaemonProcess(policy, home, notify, log_format="json"))
            hosts.append(Host(f"host{n}", double.port, port))
        for notify in sockets:
            notify.wait_for("READY", "1", timeout=60)
        yield Fleet(doubles, keepers, hosts)
    finally:
        for keeper in keepers:
            keeper.stop()
        for notify in sockets:
            notify.close()
        for double in doubles:
            double.stop()


def run_check(the_fleet: Fleet, check: str, settings: Settings, workdir: Path, binary: str) -> Run:
    home = workdir / check
    home.mkdir()
    stats = home / "stats.sock"
    frontend = free_port()
    config = haproxy_config(
        SHIPPED.read_text(encoding="utf-8"),
        check=check,
        frontend=frontend,
        hosts=the_fleet.hosts,
        stats=stats,
    )
    for host in the_fleet.hosts:
        wait_until(f"{host.name} ready", lambda h=host: the_fleet.ready(h), timeout=60)  # type: ignore[misc]
    proxy = HAProxy(binary, config, home)
    watch: StateWatch | None = None
    clients: Clients | None = None
    try:
        names = [h.name for h in the_fleet.hosts]
        wait_until(
            "every server UP",
            lambda: stats.exists() and all(server_states(stats).get(n) == "UP" for n in names),
            timeout=30,
        )
        watch = StateWatch(stats)
        clients = Clients(f"http://127.0.0.1:{frontend}", settings.clients, settings.pause)
        time.sleep(settings.warm)
        restart_at = time.monotonic()
        the_fleet.doubles[0].restart(down_seconds=settings.down_seconds)
        first = the_fleet.hosts[0]
        deadline = restart_at + settings.after

        def back() -> bool:
            if time.monotonic() > deadline:
                return True
            warm = any(i.name == MODEL.model.name for i in the_fleet.doubles[0].loaded())
            return warm and server_states(stats).get(first.name) == "UP"

        wait_until("the restarted host warm and back", back, timeout=settings.after + 5)
        time.sleep(1.0)  # a little more traffic with both hosts in
        answers = clients.stop()
        clients = None
        watch.stop()
        return Run(check, answers, restart_at, watch.changes)
    finally:
        if clients is not None:
            clients.stop()
        if watch is not None:
            watch.stop()
        proxy.stop()


def measure(settings: Settings, workdir: Path, binary: str) -> list[Run]:
    with fleet(settings, workdir) as the_fleet:
        return [run_check(the_fleet, check, settings, workdir, binary) for check in settings.checks]


# --- the report -------------------------------------------------------------------------------


def haproxy_version(binary: str) -> str:
    out = subprocess.run(
        [binary, "-v"], check=False, capture_output=True, text=True, timeout=10
    ).stdout
    return out.splitlines()[0].split(" - ")[0].strip() if out else "unknown"


def report(runs: Sequence[Run], settings: Settings, command: str, binary: str) -> str:
    label = {
        "ready": "`option httpchk GET /ready` on the keeper's port",
        "naive": "`option httpchk GET /` on Ollama's port",
    }
    lines = [
        START,
        "",
        "| HAProxy's check | requests | cold hits (load_duration > 0.5 s) | slowest cold hit | "
        "slowest answer | failed requests | restarted host out of rotation |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        cold = run.cold
        slowest = f"{max(a.load_duration or 0.0 for a in cold):.1f} s" if cold else "-"
        out = run.out_of_rotation("host1")
        longest = max((a.seconds for a in run.answers), default=0.0)
        lines.append(
            f"| {label[run.check]} | {len(run.answers)} | {len(cold)} | {slowest} | "
            f"{longest:.2f} s | {run.failed} | {'never' if out is None else f'{out:.1f} s'} |"
        )
    lines += [
        "",
        f"Measured with `{command}` ({haproxy_version(binary)}; {_harness.machine_note()}; "
        f"code {_harness.code_version()}): {settings.clients} clients, one request after "
        f"another {settings.pause * 1000:.0f} ms apart, through HAProxy to two Ollama doubles "
        f"with one keeper each; the first double restarted after {settings.warm:g} s "
        f"(its port refusing connections for {settings.down_seconds:g} s, every model gone, "
        f"a load taking {settings.load_seconds:g} s), the stream going on until that host "
        "was warm and back in rotation, and 1 s more. The same keepers and doubles served "
        "both checks, one after the other.",
        "",
        END,
    ]
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    before, found, rest = document.partition(START)
    if not found or END not in rest:
        raise ValueError(f"no {START} ... {END} section")
    return before + section + rest.split(END, 1)[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    d = Settings()
    p.add_argument("--clients", type=int, default=d.clients)
    p.add_argument("--pause", type=float, default=d.pause, help="seconds between requests")
    p.add_argument("--load-seconds", type=float, default=d.load_seconds)
    p.add_argument("--down-seconds", type=float, default=d.down_seconds)
    p.add_argument("--warm", type=float, default=d.warm)
    p.add_argument("--after", type=float, default=d.after)
    p.add_argument("--checks", default=",".join(d.checks), help="ready,naive")
    p.add_argument("--out", type=Path, help="the markdown file whose section to replace")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, write: Callable[[str], None] = print) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    binary = find_haproxy()
    if binary is None:
        write("haproxy is not installed (Debian: apt-get install haproxy)")
        return 69
    settings = Settings(
        clients=args.clients,
        pause=args.pause,
        load_seconds=args.load_seconds,
        down_seconds=args.down_seconds,
        warm=args.warm,
        after=args.after,
        checks=tuple(c for c in args.checks.split(",") if c),
    )
    shown = list(given)
    if "--out" in shown:
        at = shown.index("--out")
        del shown[at : at + 2]
    command = " ".join(["python -m benchmarks.fleet", *(shlex.quote(a) for a in shown)])
    with _harness.temp_workdir("fleet-") as tmp:
        runs = measure(settings, Path(tmp), binary)
    text = report(runs, settings, command, binary)
    write(text)
    if args.out is not None:
        args.out.write_text(
            replace_section(args.out.read_text(encoding="utf-8"), text), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
