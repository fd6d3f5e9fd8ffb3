"""A picture of the Grafana dashboard (contrib/grafana/sentinel-keeper.json) from real data.

The daemon (``python -m sentinel_keeper run``, as in the other benchmarks) keeps two pinned
models warm in the Ollama double, its metrics endpoint scraped every second by a real
Prometheus (``prometheus`` on PATH, Debian's package; the rules of contrib/prometheus are
loaded too). The fake NVML library of the tests (built with gcc) reports GPU memory as the
double's loaded models take it; without gcc the GPU panel stays empty. Over about three and
a half minutes clients and Ollama do what the dashboard is about:

- a client unloads a pinned model (``keep_alive: 0``);
- a client loads it with a short ``keep_alive`` (30 s) and the policy's num_ctx;
- a client loads the other pinned model with another num_ctx;
- the three again: the second reload with another num_ctx puts that model on hold (the
  policy's ``reload_backoff: {after: 2}``), so the keeper stops reloading it back;
- Ollama restarts (down for 5 s);
- a client loads a model the policy does not name, for a minute.

Then every panel's queries are evaluated through Prometheus' HTTP API (``$model``: every
model, ``$__rate_interval``: 30s) and drawn as a grid of panels titled as the dashboard's:

    python -m benchmarks.dashboard --out docs/dashboard.png

Everything listens on loopback only, on free ports; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _harness
from benchmarks._harness import PINNED, DaemonProcess, NotifySocket, PinnedModel, make_double
from tests.support import fake_nvml
from tests.support.ollama_double import GiB, MiB, OllamaDouble

DASHBOARD = _harness.ROOT / "contrib" / "grafana" / "sentinel-keeper.json"
RULES = _harness.ROOT / "contrib" / "prometheus" / "sentinel-keeper-rules.yml"
HOST = "127.0.0.1"
MODELS = PINNED[:2]  # llama3.2:1b at 2048, qwen2.5-coder:7b at 8192
OTHER_NUM_CTX = 4096
VRAM = 32 * GiB
GPU_BASELINE = 600 * MiB  # the driver's and other processes' share
RATE_INTERVAL = "30s"
STEP = 2.0
GAP = 20.0  # seconds between events
FOREIGN_KEEP_ALIVE = "60s"


@dataclass
class Timeline:
    """What was driven, when (seconds since the daemon started)."""

    began: float = field(default_factory=time.time)
    events: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        at = time.time() - self.began
        self.events.append((at, what))
        print(f"  {at:6.1f} s  {what}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def write_policy(path: Path, url: str, metrics_port: int, interval: float) -> Path:
    # the second reload by a client with another num_ctx puts that model on hold
    return _harness.write_policy(
        path,
        url,
        interval=interval,
        models=MODELS,
        metrics=f"{HOST}:{metrics_port}",
        backoff_after=2,
    )


def write_prometheus_config(path: Path, metrics_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "sentinel-keeper",
                "static_configs": [{"targets": [f"{HOST}:{metrics_port}"]}],
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
    return path


def client_load(double: OllamaDouble, model: str, **body: Any) -> None:
    """What a client's load-only request does: POST /api/generate without a prompt."""
    response = httpx.post(
        f"{double.url}/api/generate",
        json={"model": model, "stream": False, **body},
        timeout=120,
    )
    response.raise_for_status()


class GpuFollower:
    """Rewrites the fake NVML's behaviour file every 0.2 s: the GPU's used memory is the
    double's loaded models plus a baseline, as the real driver would report it."""

    def __init__(self, double: OllamaDouble, config: Path) -> None:
        self.double = double
        self.config = config
        self._stop = threading.Event()
        self.write()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def write(self) -> None:
        with contextlib.suppress(Exception):  # the double may be restarting
            used = GPU_BASELINE + sum(i.size_vram for i in self.double.loaded())
            used = min(used, VRAM)
            gpu = fake_nvml.FakeGpu(
                name="NVIDIA GeForce RTX 5090", total=VRAM, used=used, free=VRAM - used
            )
            fake_nvml.FakeNvml(gpus=(gpu,)).write(self.config)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def nvml_environment(workdir: Path, double: OllamaDouble) -> tuple[dict[str, str], GpuFollower]:
    config = workdir / "fake-nvml.conf"
    follower = GpuFollower(double, config)
    return fake_nvml.nvml_env(fake_nvml.library_dir(), config), follower


class Prometheus:
    def __init__(self, workdir: Path, metrics_port: int) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise SystemExit("prometheus is not on PATH (Debian: apt-get install prometheus)")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        config = write_prometheus_config(workdir / "prometheus.yml", metrics_port)
        self._log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={HOST}:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start; see {workdir / 'prometheus.log'}")
            time.sleep(0.2)

    def query(self, path: str, **params: str | float) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
        return body["data"]

    def range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.query("query_range", query=expr, start=start, end=end, step=STEP)
        result: list[dict[str, Any]] = data["result"]
        return result

    def instant(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.query("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def drive(double: OllamaDouble, timeline: Timeline, gap: float) -> None:
    """The clients' and Ollama's doings, ``gap`` seconds apart. Each client event happens
    twice; the second reload with another num_ctx puts that model on hold (the policy's
    reload_backoff says after: 2), until Ollama's restart empties the GPU."""
    first: PinnedModel = MODELS[0]
    second: PinnedModel = MODELS[1]
    name = first.model.name
    client: Sequence[tuple[str, Callable[[], None]]] = (
        (f"client unloads {name} (keep_alive 0)", lambda: client_load(double, name, keep_alive=0)),
        (
            f"client loads {name}, keep_alive 30s",
            lambda: client_load(double, name, keep_alive="30s", options={"num_ctx": first.num_ctx}),
        ),
        (
            f"client loads {second.model.name} at num_ctx {OTHER_NUM_CTX}",
            lambda: client_load(
                double, second.model.name, keep_alive="5m", options={"num_ctx": OTHER_NUM_CTX}
            ),
        ),
    )
    steps: Sequence[tuple[str, Callable[[], None]]] = (
        *client,
        *client,
        ("Ollama restarts (down 5 s)", lambda: double.restart(down_seconds=5)),
        (
            f"client loads {_harness.FOREIGN.name} (not in the policy) for {FOREIGN_KEEP_ALIVE}",
            lambda: client_load(
                double,
                _harness.FOREIGN.name,
                keep_alive=FOREIGN_KEEP_ALIVE,
                options={"num_ctx": _harness.FOREIGN_NUM_CTX},
            ),
        ),
    )
    time.sleep(gap)
    for what, action in steps:
        timeline.note(what)
        action()
        time.sleep(gap)
    time.sleep(60)  # the foreign model's keep_alive runs out


# --- the dashboard's panels -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    bars: bool
    states: bool  # a state timeline: 1 green, 0 red, a row per series
    floor: float | None  # the y axis' minimum
    targets: tuple[Target, ...]


def load_panels(path: Path = DASHBOARD) -> list[Panel]:
    data = json.loads(path.read_text(encoding="utf-8"))
    panels = []
    for p in sorted(data["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        panels.append(
            Panel(
                p["title"],
                defaults.get("unit", "short"),
                defaults.get("custom", {}).get("drawStyle") == "bars",
                p["type"] == "state-timeline",
                defaults.get("min"),
                tuple(Target(t["expr"], t.get("legendFormat", "")) for t in p["targets"]),
            )
        )
    return panels


def substitute(expr: str) -> str:
    """Grafana's variables as the picture uses them: every Ollama instance, every model, a
    30 s rate interval."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$ollama", ".*")
        .replace("$model", ".*")
    )


def legend(fmt: str, labels: dict[str, str]) -> str:
    text = fmt
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


@dataclass(frozen=True)
class Series:
    name: str
    times: list[float]
    values: list[float]


def evaluate(prom: Prometheus, panel: Panel, start: float, end: float) -> list[Series]:
    out = []
    for target in panel.targets:
        for result in prom.range(substitute(target.expr), start, end):
            points = [(float(t), float(v)) for t, v in result["values"]]
            points = [(t, v) for t, v in points if not math.isnan(v)]
            if points:
                out.append(
                    Series(
                        legend(target.legend, result["metric"]),
                        [t - start for t, _ in points],
                        [v for _, v in points],
                    )
                )
    return out


def scale(unit: str, series: Sequence[Series]) -> tuple[str, float]:
    if unit == "bytes":
        peak = max((max(s.values) for s in series), default=0.0)
        return ("GiB", float(GiB)) if peak >= GiB else ("MiB", float(MiB))
    if unit == "s":
        peak = max((max(s.values) for s in series), default=0.0)
        return ("ms", 1e-3) if peak < 1 else ("s", 1.0)
    return "", 1.0


def draw_states(ax: Any, series: Sequence[Series]) -> None:
    """A state timeline: a row per series, green while 1, red while 0."""
    for row, s in enumerate(series):
        ends = [*s.times[1:], s.times[-1] + STEP]
        for t, until, v in zip(s.times, ends, s.values, strict=True):
            # a gap longer than a step is no data: leave it empty
            width = min(until - t, STEP)
            ax.barh(row, width, left=t, height=0.8, color="#73bf69" if v >= 1 else "#f2495c")
    ax.set_yticks(range(len(series)), [s.name for s in series])
    ax.set_ylim(-0.6, len(series) - 0.4)
    ax.invert_yaxis()


def draw_lines(ax: Any, panel: Panel, series: Sequence[Series], colors: Sequence[str]) -> None:
    """A time series panel: a line per series, filled under for Grafana's bars."""
    unit, divisor = scale(panel.unit, series)
    for i, s in enumerate(series):
        color = colors[i % len(colors)]
        ys = [v / divisor for v in s.values]
        ax.step(s.times, ys, where="post", color=color, linewidth=1.2, label=s.name)
        if panel.bars:
            ax.fill_between(s.times, ys, step="post", color=color, alpha=0.35)
    if unit:
        ax.set_ylabel(unit)
    if panel.floor is not None:
        ax.set_ylim(bottom=panel.floor)
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.1), fontsize=7, frameon=False, ncol=4)


def plot(
    figures: Sequence[tuple[Panel, list[Series]]], timeline: Timeline, end: float, out: Path
) -> None:
    import matplotlib  # noqa: PLC0415 (a bench-only dependency, imported only here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.rcParams.update(
        {
            "figure.facecolor": "#111217",
            "axes.facecolor": "#181b1f",
            "axes.edgecolor": "#2c3235",
            "axes.labelcolor": "#ccccdc",
            "text.color": "#ccccdc",
            "xtick.color": "#9fa7b3",
            "ytick.color": "#9fa7b3",
            "grid.color": "#2c3235",
            "font.size": 8,
        }
    )
    colors = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9"]
    cols = 2
    rows = math.ceil(len(figures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.9 * rows), squeeze=False)
    for index, (panel, series) in enumerate(figures):
        ax = axes[index // cols][index % cols]
        ax.set_title(panel.title, loc="left", fontsize=9, fontweight="bold")
        ax.grid(True, linewidth=0.5)
        if panel.states:
            draw_states(ax, series)
        else:
            draw_lines(ax, panel, series, colors)
        for number, (at, _) in enumerate(timeline.events, 1):
            ax.axvline(at, color="#6e7079", linewidth=0.7, linestyle=":")
            ax.text(
                at,
                0.99,
                f" {number}",
                transform=ax.get_xaxis_transform(),
                fontsize=6,
                ha="left",
                va="top",
                color="#9fa7b3",
            )
        ax.set_xlim(0, end)
    for index in range(len(figures), rows * cols):
        axes[index // cols][index % cols].axis("off")
    events = "   ".join(
        f"{i}: {what} ({at:.0f} s)" for i, (at, what) in enumerate(timeline.events, 1)
    )
    fig.suptitle(
        "sentinel-keeper: seconds since the daemon started; dotted lines: the events below",
        x=0.01,
        ha="left",
        fontsize=11,
    )
    fig.text(0.01, 0.005, events, fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)


def summary(prom: Prometheus) -> Iterator[str]:
    for label, expr in (
        ("loads by reason", "sum by (reason) (sentinel_keeper_model_loads_total)"),
        ("client reloads by num_ctx", "sum by (num_ctx) (sentinel_keeper_client_reloads_total)"),
        ("outages", "sentinel_keeper_ollama_outages_total"),
        ("restarts", "sentinel_keeper_ollama_restarts_total"),
        ("passes", "sentinel_keeper_passes_total"),
        ("alerts pending or firing", "ALERTS"),
    ):
        results = prom.instant(expr)
        parts = [
            f"{legend('', {k: v for k, v in r['metric'].items() if k not in {'job', 'instance'}})}"
            f" {float(r['value'][1]):g}"
            for r in results
        ]
        yield f"  {label}: {'; '.join(parts) or 'none'}"


def run(out: Path, interval: float, gap: float) -> int:
    _harness.quiet_double_errors()
    with _harness.temp_workdir("sentinel-dashboard-") as tmp:
        workdir = Path(tmp)
        double = make_double(keep_alive=None, time_scale=1.0, vram=VRAM).start()
        stack = contextlib.ExitStack()
        stack.callback(double.stop)
        try:
            env: dict[str, str] = {}
            try:
                env, follower = nvml_environment(workdir, double)
                stack.callback(follower.stop)
            except fake_nvml.FakeNvmlUnavailable as e:
                print(f"no fake NVML ({e}): the GPU panel stays empty", flush=True)
            metrics_port = free_port()
            policy = write_policy(workdir / "policy.yaml", double.url, metrics_port, interval)
            prom = Prometheus(workdir, metrics_port)
            stack.callback(prom.stop)
            notify = NotifySocket(workdir / "notify.sock")
            stack.callback(notify.close)
            daemon = DaemonProcess(policy, workdir, notify, log_format="json", env=env)
            stack.callback(daemon.stop)
            timeline = Timeline()
            start = timeline.began
            notify.wait_for("READY", "1", timeout=120)
            print(f"daemon ready after {time.time() - start:.1f} s; driving:", flush=True)
            drive(double, timeline, gap)
            end = time.time()
            time.sleep(2)  # the last scrape
            figures = [(p, evaluate(prom, p, start, end)) for p in load_panels()]
            print("at the end:")
            for line in summary(prom):
                print(line)
            print("panels (series: min..max):")
            for panel, series in figures:
                ranges = ", ".join(
                    f"{s.name} {min(s.values):.4g}..{max(s.values):.4g}" for s in series
                )
                print(f"  {panel.title}: {ranges or 'no data'}")
            plot(figures, timeline, end - start, out)
            print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
        finally:
            stack.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("docs/dashboard.png"), help="the PNG")
    p.add_argument("--interval", type=float, default=10.0, help="the policy's interval (s)")
    p.add_argument("--gap", type=float, default=GAP, help="seconds between events")
    args = p.parse_args(argv)
    return run(args.out, args.interval, args.gap)


if __name__ == "__main__":
    sys.exit(main())
