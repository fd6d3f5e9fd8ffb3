"""The daemon under faults: `sentinel-keeper run` as a subprocess (NOTIFY_SOCKET, journald's
line format, the fake NVML where the GPU matters) against the Ollama double, with one fault
injected per test.

For every fault: the process stays alive, the journal says what happened once when it starts
and once when it ends (no line per probe), and the keeper recovers by itself within one
interval of the fault ending, measured and printed (run with ``-s`` to see the figures).

The hour-long outage is simulated in two parts: the daemon is kept away from Ollama for 12
seconds with a 3 s interval (long past the capped probe back-off, so every later
second of an hour is the same state: a probe a second, debug lines only), and the pure parts
(the probe delay and the log events) are driven through 3,600 unreachable passes with an
injected clock. The load back-off (15 s doubling to 15 min) is measured over a simulated hour
with an in-process Reconciler and an injected clock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sentinel_keeper.act.reconcile import PassReport, Reconciler
from sentinel_keeper.daemon import lifecycle
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.report.events import History, advance, pass_events
from sentinel_keeper.values.timings import Timings
from tests.support.daemon import DaemonProcess, NotifySocket, wait_until
from tests.support.fake_nvml import NVML_ERROR_GPU_IS_LOST, FakeGpu, FakeNvml, library_dir, nvml_env
from tests.support.ollama_double import OOM_TEXT, FakeModel, ManualClock, OllamaDouble

MiB = 1024**2
GiB = 1024**3
PINNED = "llama3.2:1b"
EXTRA = "qwen2.5:0.5b"
INTERVAL = 2.0  # seconds; "recovers within one interval" is measured against this
LOAD_SECONDS = 0.2
SLACK = 1.0  # a busy two-core machine
# A pinned model missing from /api/ps counts as gone at the first look at least watch_settle
# after the look that found it missing (Ollama lists a model a client reloads only once the
# reload is done): at most this long after it went.
WATCH_CONFIRMS = 2 * Timings().watch + Timings().watch_settle


def _print(*lines: str) -> None:
    print("\n" + "\n".join(lines))


# --- the double, with the arrival time of every request --------------------------------------


class TimedDouble(OllamaDouble):
    """The Ollama double, recording when each request arrived (time.monotonic())."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[float, str, Any]] = []
        self._arrivals_lock = threading.Lock()

    def _record(self, method: str, path: str, body: Any) -> None:
        super()._record(method, path, body)
        with self._arrivals_lock:
            self.arrivals.append((time.monotonic(), path, body))

    def loads_since(self, since: float) -> list[float]:
        """Arrival times of load requests (a generate with a positive or forever keep_alive)."""
        with self._arrivals_lock:
            return [
                at
                for at, path, body in self.arrivals
                if at >= since
                and path == "/api/generate"
                and isinstance(body, dict)
                and body.get("keep_alive") != 0
            ]

    def first_since(self, path: str, since: float) -> float | None:
        with self._arrivals_lock:
            return next((at for at, p, _ in self.arrivals if p == path and at >= since), None)


@pytest.fixture
def double() -> Iterator[TimedDouble]:
    server = TimedDouble(
        [FakeModel(PINNED, size=800 * MiB), FakeModel(EXTRA, size=400 * MiB)],
        load_seconds=LOAD_SECONDS,
        vram_total=24 * GiB,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_policy(
    path: Path, url: str, *, interval: str = f"{INTERVAL:g}s", extra: bool = False, **more: str
) -> Path:
    lines = [f"interval: {interval}", "ollama:", f"  url: {url}"]
    lines += ["  request_timeout: 500ms", "  load_timeout: 3s"]
    lines += [f"{key}: {value}" for key, value in more.items()]
    lines += ["models:", f"  - name: {PINNED}"]
    if extra:
        lines += [f"  - name: {EXTRA}", "    tier: extra"]
    path.write_text("\n".join(lines) + "\n")
    return path


def resident(double: OllamaDouble, name: str = PINNED) -> bool:
    return double.instance(name) is not None


def steady(k: DaemonProcess, double: TimedDouble, notify: NotifySocket) -> float:
    """Wait for READY with the pinned model resident; return the time."""
    notify.wait_for("READY", "1")
    wait_until("the pinned model", lambda: resident(double))
    return time.monotonic()


# --- faults --------------------------------------------------------------------------------


@pytest.mark.slow
def test_ollama_down_at_start(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    double.stop()  # the port refuses connections
    k = spawn(write_policy(tmp_path / "policy.yaml", double.url))
    k.wait_event(r"^<4>ollama_unreachable ")
    time.sleep(3.0)
    assert not notify.with_field("READY", "1")  # ready: pinned, and nothing is resident
    assert notify.statuses()[-1].startswith(f"waiting for ollama at {double.url}: ")
    double.restart()
    back = time.monotonic()
    wait_until("the pinned model", lambda: resident(double))
    recovered = time.monotonic() - back
    notify.wait_for("READY", "1")
    k.wait_event(r"^<6>pass ", since=back)  # the pass's last line: its events are all in
    counts = k.events()
    _print(f"down at start: loaded {recovered:.2f} s after Ollama answered; journal {counts}")
    assert recovered < INTERVAL + LOAD_SECONDS
    assert counts["ollama_unreachable"] == 1
    assert counts["ollama_back"] == 1
    assert counts["model_loaded"] == 1
    assert k.alive() and k.stop() == 0


@pytest.mark.slow
def test_a_long_outage_keeps_probing_every_second_and_logs_twice(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """12 s down under a 3 s interval: the pass that meets the outage starts probing, and the
    capped back-off probes about once a second all along (debug lines only), so the model is
    back about a second after Ollama is, not an interval after."""
    policy = write_policy(tmp_path / "policy.yaml", double.url, interval="3s")
    k = spawn(policy, "--log-level", "debug")
    steady(k, double, notify)
    down = time.monotonic()
    double.stop()
    time.sleep(12.0)
    probes = [at for at, line in k.timed(down) if line.startswith("<7>ollama_still_unreachable ")]
    double.restart()
    back = time.monotonic()
    wait_until("the pinned model", lambda: resident(double))
    recovered = time.monotonic() - back
    k.wait_event(r"^<6>pass ", since=back)
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    info = k.events(down)
    _print(
        f"12 s outage: {len(probes)} probes, gaps {min(gaps):.2f}-{max(gaps):.2f} s, "
        f"reloaded {recovered:.2f} s after Ollama answered; journal at info+ {info}"
    )
    assert len(probes) >= 9
    assert max(gaps[2:]) < 1.0 + SLACK  # capped at Timings().probe_max
    assert recovered < 1.0 + LOAD_SECONDS + SLACK  # one probe period, not an interval
    assert info["ollama_unreachable"] == 1
    assert info["ollama_back"] == 1
    assert set(info) <= {
        "ollama_unreachable",
        "ollama_back",
        "model_missing",
        "model_loaded",
        "pass",
    }
    assert k.alive()


def test_a_simulated_hour_of_outage_probes_every_second_and_logs_once() -> None:
    """3,600 unreachable passes, one a second: the probe delay stays at its cap, the events
    are one warning and 3,599 debug lines, and the end of the outage is one info line with
    the outage's length."""
    policy = parse_policy(f"interval: 15s\nmodels:\n  - name: {PINNED}\n", "p.yaml")
    timings = Timings()
    delays: list[float] = []
    delay = timings.probe_first
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    history = History()
    levels: Counter[str] = Counter()
    for second in range(3600):
        report = PassReport(t0 + timedelta(seconds=second), 0.01, (PINNED,), (), None, "refused")
        probe = lifecycle.probe(report, delay, interval=policy.interval, timings=timings)
        assert probe.after is not None
        delays.append(probe.after)
        delay = probe.next_delay
        for event in pass_events(history, report):
            levels[f"{event.event}/{event.level}"] += 1
        history = advance(history, report)
    assert len(delays) == 3600
    assert delays[:3] == [0.25, 0.5, 1.0]
    assert max(delays) <= timings.probe_max
    assert min(delays[3:]) == timings.probe_max  # capped, not decaying
    assert levels == {"ollama_unreachable/warning": 1, "ollama_still_unreachable/debug": 3599}


@pytest.mark.slow
def test_ollama_restarted_in_the_middle_of_a_load(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """The load dies with the connection. That says nothing about the model: it is loaded
    again about a probe period after Ollama answers (it used to wait a 15 s load back-off,
    then a whole interval)."""
    double.load_seconds = 2.0
    policy = write_policy(tmp_path / "policy.yaml", double.url, interval="1m")
    k = spawn(policy)
    wait_until("the load", lambda: double.loads_since(0))
    time.sleep(0.5)
    double.restart(down_seconds=0.5)
    back = time.monotonic()
    retried = wait_until("the load again", lambda: double.loads_since(back))[0] - back
    wait_until("the pinned model", lambda: resident(double), timeout=10)
    recovered = time.monotonic() - back
    k.wait_event(r"^<6>pass .*actions=1", since=back)
    counts = k.events()
    _print(
        f"restart mid-load: load retried {retried:.2f} s and resident {recovered:.2f} s after "
        f"Ollama answered; journal {counts}"
    )
    assert retried < 1.0 + SLACK
    assert double.aborted_loads == 1
    assert counts["model_load_failed"] == 1
    assert counts["model_loaded"] == 1
    assert k.alive()


@pytest.mark.slow
def test_a_quick_restart_between_passes_is_seen_by_the_watch(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """`systemctl restart ollama` between two passes of a long interval: no pass sees the
    outage, but the watch between passes sees the pinned model gone and runs one at once."""
    policy = write_policy(tmp_path / "policy.yaml", double.url, interval="1m")
    k = spawn(policy)
    steady(k, double, notify)
    k.wait_event(r"^<6>pass ")
    time.sleep(0.5)
    double.restart()
    back = time.monotonic()
    wait_until("the pinned model", lambda: resident(double), timeout=15)
    recovered = time.monotonic() - back
    k.wait_event(r"^<6>model_loaded ", since=back)
    missing = k.wait_event(r"^<4>model_missing .*Ollama restarted", since=back)
    counts = k.events(back)
    _print(f"restart between passes: resident {recovered:.2f} s after; journal {counts}")
    assert missing >= back
    assert recovered < WATCH_CONFIRMS + LOAD_SECONDS + SLACK
    assert counts["model_loaded"] == 1
    assert k.alive() and k.stop() == 0


@pytest.mark.slow
def test_a_client_unloading_a_pinned_model_is_seen_by_the_watch(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", double.url, interval="1m")
    k = spawn(policy)
    steady(k, double, notify)
    k.wait_event(r"^<6>pass ")
    quiet = time.monotonic()
    time.sleep(3 * Timings().watch)
    assert double.loads_since(quiet) == []  # watching alone sends no loads
    with OllamaClient(double.url) as client:
        client.unload(PINNED)
    gone = time.monotonic()
    wait_until("the pinned model", lambda: resident(double), timeout=15)
    recovered = time.monotonic() - gone
    _print(f"client unload (keep_alive 0): resident again {recovered:.2f} s after")
    assert recovered < WATCH_CONFIRMS + LOAD_SECONDS + SLACK
    assert len(double.loads_since(gone)) == 1
    assert k.alive() and k.stop() == 0


@pytest.mark.slow
def test_a_client_reloading_a_pinned_model_with_other_options_is_left_to_the_next_pass(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """A client reloads the pinned model with num_ctx 4096 (the policy says 2048). Ollama
    lists it again only once the reload is done, so some look of the watch finds it missing
    (the reload here takes longer than a watch period); the keeper must not load it back
    behind the client's load (a fight every few seconds), but leave it to the next pass and
    say why in the journal."""
    policy = tmp_path / "policy.yaml"
    write_policy(policy, double.url, interval="1m")
    policy.write_text(policy.read_text() + "    options: {num_ctx: 2048}\n")
    k = spawn(policy)
    steady(k, double, notify)
    k.wait_event(r"^<6>pass ")
    double.load_seconds = 1.5 * Timings().watch  # a look certainly falls in the gap
    client_at = time.monotonic()
    with OllamaClient(double.url, load_timeout=30) as client:
        client.load(PINNED, options={"num_ctx": 4096}, keep_alive=300)
    instance = double.instance(PINNED)
    assert instance is not None and instance.num_ctx == 4096
    noted = k.wait_event(r"^<4>model_reloaded_by_client .*context_length=4096", since=client_at)
    time.sleep(max(0.0, client_at + 5.0 - time.monotonic()))
    keeper_loads = [
        body
        for at, path, body in double.arrivals
        if at > client_at
        and path == "/api/generate"
        and isinstance(body, dict)
        and (body.get("options") or {}).get("num_ctx") == 2048
    ]
    instance = double.instance(PINNED)
    _print(f"client reload: noted {noted - client_at:.2f} s after; keeper loads {keeper_loads}")
    assert keeper_loads == []
    assert instance is not None and instance.num_ctx == 4096
    assert k.events(client_at)["model_missing"] == 0
    assert k.alive() and k.stop() == 0


@pytest.mark.slow
def test_ollama_hanging_times_out_and_the_watchdog_stays_honest(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """/api/ps accepts and never answers: each call times out after request_timeout, the loop
    goes on, so WATCHDOG=1 keeps coming (a stuck call would stop it: test_daemon covers that);
    when Ollama answers again the keeper is back within a probe period."""
    k = spawn(write_policy(tmp_path / "policy.yaml", double.url), WATCHDOG_USEC="2000000")
    steady(k, double, notify)
    double.hang_limit = 30.0
    fault = time.monotonic()
    double.hang_paths = {"/api/ps"}
    k.wait_event(r"^<4>ollama_unreachable .*no answer within 0\.5 s", since=fault)
    time.sleep(4.0)
    hung = len([1 for at, p, _ in double.arrivals if p == "/api/ps" and at >= fault])
    double.hang_paths = set()
    end = time.monotonic()
    back = k.wait_event(r"^<6>ollama_back ", since=end) - end
    k.wait_event(r"^<6>pass ", since=end)
    pings = [m.at for m in notify.with_field("WATCHDOG", "1") if m.at >= fault]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    counts = k.events(fault)
    _print(
        f"hang: {hung} calls timed out, back {back:.2f} s after the hang ended; watchdog "
        f"pings {len(pings)}, largest gap {max(gaps):.2f} s; journal {counts}"
    )
    assert hung >= 4  # probing went on
    assert back < 1.0 + SLACK
    assert max(gaps) < 1.0 + SLACK  # WATCHDOG_USEC/2 = 1 s
    assert "pass_stuck" not in counts
    assert counts["ollama_unreachable"] == 1 and counts["ollama_back"] == 1
    assert k.alive()


NONSENSE = [
    ("500", (500, "internal error"), r"ollama said 500: internal error"),
    ("503", (503, "server busy, please try again."), r"ollama said 503"),
    ("bad JSON", b"{not json", r"not JSON"),
    ("wrong shape", b'{"models": {"a": 1}}', r"models is not a list"),
    ("wrong type", b'{"models": [{"name": 7}]}', r"models\[0\]\.name is not a string"),
    ("an array", b"[]", r"the answer is not a JSON object"),
]


@pytest.mark.slow
def test_errors_and_nonsense_from_ollama(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """/api/ps answers an error status or a body that is not what the API promises, one
    after the other: each pass is refused like an outage (probed every second), and the
    keeper is back within a probe period of Ollama making sense again."""
    k = spawn(write_policy(tmp_path / "policy.yaml", double.url))
    steady(k, double, notify)
    figures = []
    for name, answer, words in NONSENSE:
        started = time.monotonic()
        if isinstance(answer, tuple):
            double.error_paths = {"/api/ps": answer}
        else:
            assert isinstance(answer, bytes)
            double.raw_paths = {"/api/ps": answer}
        k.wait_event(rf"^<4>ollama_unreachable error=.*{words}", since=started)
        time.sleep(1.5)
        probes = len([1 for at, p, _ in double.arrivals if p == "/api/ps" and at >= started])
        double.error_paths, double.raw_paths = {}, {}
        end = time.monotonic()
        back = k.wait_event(r"^<6>ollama_back ", since=end) - end
        k.wait_event(r"^<6>pass ", since=end)
        counts = k.events(started)
        figures.append(f"{name}: {probes} probes, back after {back:.2f} s; journal {counts}")
        assert probes >= 2, name
        assert back < 1.0 + SLACK, name
        assert counts == {"ollama_unreachable": 1, "ollama_back": 1, "pass": 1}, name
        assert resident(double)
        assert k.alive()
    _print(*figures)


@pytest.mark.slow
def test_a_model_removed_from_ollama(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """`ollama rm` of a pinned model: reported once (not pulled: the policy says pull:
    false), nothing attempted while it is gone, loaded within an interval of its return."""
    k = spawn(write_policy(tmp_path / "policy.yaml", double.url))
    steady(k, double, notify)
    fault = time.monotonic()
    double.remove_model(PINNED)
    k.wait_event(r"^<4>model_not_installed ", since=fault)
    time.sleep(INTERVAL + 0.5)  # at least one more pass
    assert double.loads_since(fault) == []  # nothing to load, no hammering
    double.add_model(FakeModel(PINNED, size=800 * MiB))
    end = time.monotonic()
    wait_until("the model loaded", lambda: resident(double), timeout=2 * INTERVAL + 5)
    recovered = time.monotonic() - end
    k.wait_event(r"^<6>pass ", since=end)
    counts = k.events(fault)
    _print(f"model removed: loaded {recovered:.2f} s after it came back; journal {counts}")
    assert recovered < INTERVAL + LOAD_SECONDS + SLACK
    assert counts["model_not_installed"] == 1
    assert counts["finding_cleared"] == 1
    assert counts["model_loaded"] == 1
    assert k.alive()


@pytest.mark.slow
def test_out_of_memory_loads_back_off(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """Ollama answers every load with its OOM error: the keeper tries once, then waits 15 s
    (not an interval of 1 s); once memory is there again, the next retry loads it."""
    double.load_failures = {PINNED: OOM_TEXT}
    k = spawn(write_policy(tmp_path / "policy.yaml", double.url, interval="1s"))
    first = wait_until("a load", lambda: double.loads_since(0))[0]
    time.sleep(6.0)
    attempts = len(double.loads_since(0))
    double.load_failures = {}
    end = time.monotonic()
    wait_until("the model loaded", lambda: resident(double), timeout=20)
    recovered = time.monotonic() - end
    k.wait_event(r"^<6>pass ", since=end)
    counts = k.events()
    _print(
        f"OOM: {attempts} load requests in {end - first:.1f} s at a 1 s interval; loaded "
        f"{recovered:.2f} s after memory was there (the 15 s back-off); journal {counts}"
    )
    assert attempts == 1
    assert counts["model_load_failed"] == 1
    assert "backing off" not in " ".join(k.lines())  # the skips are debug lines
    assert recovered < 15.0 + SLACK
    assert k.alive()


def test_out_of_memory_back_off_over_a_simulated_hour() -> None:
    """A pass every 15 s for an hour (240 passes) against an OOM-failing model, with a clock
    that jumps: at most about ten load attempts, spaced 15 s, 30 s, ... up to 15 min."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    with OllamaDouble([FakeModel(PINNED, size=800 * MiB)]) as double:
        double.load_failures = {PINNED: OOM_TEXT}
        policy = parse_policy(
            f"ollama: {{url: '{double.url}'}}\nmodels:\n  - name: {PINNED}\n", "p.yaml"
        )
        client = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(policy, client, clock=lambda: now[0])
        attempts: list[float] = []
        for second in range(0, 3600, 15):
            now[0] = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=second)
            report = reconciler.run_pass()
            if any(not o.skipped for o in report.outcomes):
                attempts.append(second)
        client.close()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    _print(f"OOM over a simulated hour: {len(attempts)} attempts of 240 passes; gaps {gaps}")
    assert len(attempts) <= 11
    assert gaps[:4] == [15, 30, 60, 120]
    assert max(gaps) <= Timings().backoff_max


@pytest.mark.slow
def test_the_gpu_lost_and_back(
    tmp_path: Path, notify: NotifySocket, double: TimedDouble, spawn: Callable[..., DaemonProcess]
) -> None:
    """NVML answers GPU_IS_LOST mid-run: free memory becomes unknown (never zero), which is
    logged once; the pinned model is untouched; the extra is not loaded blind; when the GPU
    answers again, the extra is loaded within an interval."""
    config = tmp_path / "nvml.conf"
    healthy = FakeNvml(gpus=[FakeGpu(total=24 * GiB, used=2 * GiB, free=22 * GiB)])
    lost = FakeNvml(gpus=[replace(healthy.gpus[0], memory_rc=NVML_ERROR_GPU_IS_LOST)])
    lost.write(config)  # lost from the start: the extra waits
    policy = write_policy(tmp_path / "policy.yaml", double.url, extra=True)
    env = nvml_env(library_dir(), config, base={})
    k = spawn(policy, LD_LIBRARY_PATH=env["LD_LIBRARY_PATH"], FAKE_NVML_CONFIG=str(config))
    steady(k, double, notify)
    k.wait_event(r"^<4>nvml_unavailable reason=.*GPU is lost")
    time.sleep(INTERVAL + 0.5)
    assert not resident(double, EXTRA)
    healthy.write(config)
    end = time.monotonic()
    k.wait_event(r"^<6>nvml_available ", since=end, timeout=3 * INTERVAL)
    wait_until("the extra", lambda: resident(double, EXTRA), timeout=3 * INTERVAL)
    recovered = time.monotonic() - end
    lost.write(config)  # and lost again mid-run, with the extra loaded
    again = time.monotonic()
    k.wait_event(r"^<4>nvml_unavailable ", since=again, timeout=3 * INTERVAL)
    time.sleep(INTERVAL + 0.5)
    counts = k.events()
    _print(f"GPU lost: extra loaded {recovered:.2f} s after NVML answered; journal {counts}")
    assert recovered < INTERVAL + LOAD_SECONDS + SLACK
    assert counts["nvml_unavailable"] == 2
    assert counts["nvml_available"] == 1
    assert resident(double) and resident(double, EXTRA)  # unknown memory sheds nothing
    assert k.alive()


def test_pinned_models_that_do_not_fit_together_back_off_over_a_simulated_hour() -> None:
    """Two pinned models of 5 GiB on an 8 GiB GPU: Ollama evicts one to load the other. The
    keeper used to load them in turn at every pass (240 loads an hour at a 15 s interval);
    now the second is blamed and backs off, and the first stays resident."""
    clock = ManualClock(1_800_000_000.0)
    models = [FakeModel("a:1b", size=5 * GiB), FakeModel("b:1b", size=5 * GiB)]
    with OllamaDouble(models, clock=clock, vram_total=8 * GiB) as double:
        policy = parse_policy(
            f"ollama: {{url: '{double.url}'}}\nmodels:\n  - name: a:1b\n  - name: b:1b\n",
            "p.yaml",
        )
        client = OllamaClient(double.url, timeout=2, load_timeout=5)
        reconciler = Reconciler(
            policy, client, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        first_resident = 0
        errors = set()
        for _ in range(240):
            double.advance(15)
            report = reconciler.run_pass()
            latest = report.latest
            assert latest is not None
            first_resident += "a:1b" in latest.loaded_by_name()
            errors |= {o.error for o in report.outcomes if o.error and not o.skipped}
        client.close()
        loads = double.load_count
    _print(
        f"two pinned models that do not fit: {loads} loads in a simulated hour, the first "
        f"resident in {first_resident} of 240 passes"
    )
    assert loads <= 25
    assert first_resident >= 220
    assert any("do not fit in memory together" in e for e in errors)
