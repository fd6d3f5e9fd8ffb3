"""The daemon's footprint: memory (RSS) and CPU with nothing to do and while re-warming, and
the time from starting the process to READY=1 when the models are already warm.

The daemon is the real ``python -m sentinel_keeper run`` with a real NOTIFY_SOCKET (a unix
datagram socket bound here), against the Ollama double in real time (time scale 1) with
three pinned models. There is no GPU here: NVML is absent, so the daemon's NVML reads are
not part of the figures.

    python -m benchmarks.footprint --duration 600 --interval 10

Phases (``--phases``, default all):

- ``ready``: the pinned models already loaded as the policy wants them; the daemon started
  ``--ready-runs`` times; seconds from spawning the process to READY=1 (interpreter start,
  imports, policy, the first pass);
- ``idle``: one daemon at ``interval``, nothing to do for ``--duration`` seconds: RSS
  sampled every second, CPU time (user + system) over the whole period; once with metrics
  off (``metrics: {listen: null}``: prometheus_client is not even imported) and once with
  the endpoint on and scraped every ``--scrape-interval`` seconds, as Prometheus would;
- ``rewarm``: the same daemon while Ollama restarts ``--restarts`` times and it loads the
  pinned models again: CPU time and peak RSS from each restart until the models are back.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _harness
from benchmarks._harness import PINNED, DaemonProcess, NotifySocket, make_double, write_policy
from tests.support.daemon import free_port
from tests.support.ollama_double import OllamaDouble

MiB = 1024 * 1024
PHASES = ("ready", "idle", "rewarm")


@dataclass(frozen=True)
class Idle:
    metrics: str  # "off", or "on, scraped every N s"
    scrapes: int
    seconds: float
    cpu: float
    rss_start: int
    rss_max: int
    rss_end: int


@dataclass(frozen=True)
class Rewarm:
    seconds: float
    cpu: float
    rss_max: int


def warm_up(double: OllamaDouble) -> None:
    """Load the pinned models as the policy wants them (forever, the policy's num_ctx)."""
    import http.client  # noqa: PLC0415 (only this phase speaks HTTP itself)
    import json  # noqa: PLC0415

    for pinned in PINNED:
        conn = http.client.HTTPConnection(double.host, double.port, timeout=120)
        try:
            body = {
                "model": pinned.model.name,
                "keep_alive": -1,
                "options": {"num_ctx": pinned.num_ctx},
                "stream": False,
            }
            conn.request("POST", "/api/generate", json.dumps(body))
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"loading {pinned.model.name}: HTTP {response.status}")
        finally:
            conn.close()


def ready_times(runs: int, interval: float, workdir: Path) -> list[float]:
    double = make_double(keep_alive="-1", time_scale=1.0).start()
    times: list[float] = []
    try:
        warm_up(double)
        for _ in range(runs):
            policy = write_policy(workdir / "policy.yaml", double.url, interval=interval)
            notify = NotifySocket(workdir / f"notify-{len(times)}.sock")
            try:
                daemon = DaemonProcess(policy, workdir, notify, log_format="json")
                ready = notify.wait_for("READY", "1", timeout=60).at
                times.append(ready - daemon.started)
                daemon.stop()
            finally:
                notify.close()
            loads = double.load_count
            if loads != len(PINNED):
                raise RuntimeError("the daemon loaded a model that was already warm")
    finally:
        double.stop()
    return times


def scrape(url: str) -> None:
    import urllib.request  # noqa: PLC0415 (only the metrics phases scrape)

    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback http)
        if b"sentinel_keeper_build_info" not in answer.read():
            raise RuntimeError(f"{url}: not the daemon's metrics")


def idle_and_rewarm(
    duration: float,
    interval: float,
    restarts: int,
    workdir: Path,
    phases: Sequence[str],
    *,
    scrape_every: float | None,
) -> tuple[Idle | None, list[Rewarm]]:
    """``scrape_every``: None runs the daemon with metrics off; else with the endpoint on,
    scraped that often during the idle phase."""
    double = make_double(keep_alive="-1", time_scale=1.0).start()
    notify = NotifySocket(workdir / "notify.sock")
    port = free_port()
    listen = f"127.0.0.1:{port}" if scrape_every is not None else None
    policy = write_policy(workdir / "policy.yaml", double.url, interval=interval, metrics=listen)
    daemon = DaemonProcess(policy, workdir, notify, log_format="json")
    names = {p.model.name for p in PINNED}
    idle: Idle | None = None
    rewarms: list[Rewarm] = []
    try:
        notify.wait_for("READY", "1", timeout=180)
        if "idle" in phases:
            loads = double.load_count
            began, cpu0 = time.monotonic(), daemon.cpu_seconds()
            rss = [daemon.rss_bytes()]
            scrapes, next_scrape = 0, began
            while time.monotonic() - began < duration:
                time.sleep(1.0)
                rss.append(daemon.rss_bytes())
                if scrape_every is not None and time.monotonic() >= next_scrape:
                    scrape(f"http://{listen}/metrics")
                    scrapes += 1
                    next_scrape += scrape_every
            mode = "off" if scrape_every is None else f"on, scraped every {scrape_every:g} s"
            idle = Idle(
                mode,
                scrapes,
                time.monotonic() - began,
                daemon.cpu_seconds() - cpu0,
                rss[0],
                max(rss),
                rss[-1],
            )
            if double.load_count != loads:
                raise RuntimeError("the idle daemon loaded a model: not idle")
        if "rewarm" in phases:
            for _ in range(restarts):
                cpu0 = daemon.cpu_seconds()
                double.restart(down_seconds=2.0)
                began = time.monotonic()
                peak = daemon.rss_bytes()
                deadline = began + 300
                while not names <= {i.name for i in double.loaded()}:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the models did not come back within 300 s")
                    time.sleep(0.05)
                    peak = max(peak, daemon.rss_bytes())
                rewarms.append(Rewarm(time.monotonic() - began, daemon.cpu_seconds() - cpu0, peak))
                time.sleep(2.0)
    finally:
        daemon.stop()
        notify.close()
        double.stop()
    return idle, rewarms


def report(
    *,
    command: str,
    ready: Sequence[float],
    idles: Sequence[Idle],
    rewarms: Sequence[Rewarm],
    interval: float,
    version: str,
) -> str:
    lines = [
        "# Daemon footprint",
        "",
        "Produced by:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Python {sys.version.split()[0]}; machine: {_harness.machine_note()}; "
        f"{len(PINNED)} pinned models; no NVML on this machine; sentinel-keeper at commit "
        f"{version}.",
        "",
        "| what | figure |",
        "| --- | --- |",
    ]
    if ready:
        lines.append(
            f"| start to READY=1, models already warm ({len(ready)} starts) "
            f"| median {statistics.median(ready):.2f} s (min {min(ready):.2f}, "
            f"max {max(ready):.2f}) |"
        )
    for idle in idles:
        passes = idle.seconds / interval
        lines += [
            f"| RSS, idle at `interval: {interval:g}s` for {idle.seconds / 60:.0f} min, "
            f"metrics {idle.metrics} "
            f"| {idle.rss_start / MiB:.1f} MiB at the start, {idle.rss_max / MiB:.1f} MiB "
            f"at most, {idle.rss_end / MiB:.1f} MiB at the end |",
            f"| CPU, idle (user + system), metrics {idle.metrics} "
            f"| {idle.cpu:.2f} s in {idle.seconds:.0f} s "
            f"({100 * idle.cpu / idle.seconds:.3f}% of one core; "
            f"{1000 * idle.cpu / passes:.1f} ms per interval, main loop included"
            + (f"; {idle.scrapes} scrapes" if idle.scrapes else "")
            + ") |",
        ]
    if len(idles) == 2:
        off, on = idles
        lines.append(
            f"| metrics on minus off | RSS {(on.rss_max - off.rss_max) / MiB:+.1f} MiB at most, "
            f"CPU {100 * (on.cpu / on.seconds - off.cpu / off.seconds):+.3f}% of one core |"
        )
    for i, r in enumerate(rewarms, 1):
        lines.append(
            f"| re-warm {i}: Ollama restarted, {len(PINNED)} models loaded again "
            f"| {r.seconds:.1f} s, CPU {r.cpu:.2f} s, RSS at most {r.rss_max / MiB:.1f} MiB |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=600.0, help="idle seconds (default 600)")
    p.add_argument("--interval", type=float, default=10.0, help="the daemon's interval, s")
    p.add_argument("--restarts", type=int, default=3, help="re-warm phase restarts")
    p.add_argument("--ready-runs", type=int, default=5, help="starts timed to READY")
    p.add_argument("--phases", default=",".join(PHASES), help=f"from {', '.join(PHASES)}")
    p.add_argument(
        "--scrape-interval", type=float, default=15.0, help="idle with metrics on: scrape every"
    )
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    given = list(sys.argv[1:] if argv is None else argv)
    if "--out" in given:  # where the table goes is not part of how it was measured
        at = given.index("--out")
        del given[at : at + 2]
    command = "python -m benchmarks.footprint " + " ".join(shlex.quote(a) for a in given)
    _harness.quiet_double_errors()
    version = _harness.code_version()
    ready: list[float] = []
    idles: list[Idle] = []
    rewarms: list[Rewarm] = []
    if "ready" in phases:
        with _harness.temp_workdir("footprint-ready-") as tmp:
            ready = ready_times(args.ready_runs, args.interval, Path(tmp))
        print(f"start to READY: {', '.join(f'{t:.2f}' for t in ready)} s", flush=True)
    if "idle" in phases:
        with _harness.temp_workdir("footprint-off-") as tmp:
            off, _ = idle_and_rewarm(
                args.duration, args.interval, 0, Path(tmp), ["idle"], scrape_every=None
            )
        idles += [off] if off is not None else []
    if "idle" in phases or "rewarm" in phases:
        with _harness.temp_workdir("footprint-run-") as tmp:
            on, rewarms = idle_and_rewarm(
                args.duration,
                args.interval,
                args.restarts,
                Path(tmp),
                phases,
                scrape_every=args.scrape_interval,
            )
        idles += [on] if on is not None else []
    text = report(
        command=command,
        ready=ready,
        idles=idles,
        rewarms=rewarms,
        interval=args.interval,
        version=version,
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
