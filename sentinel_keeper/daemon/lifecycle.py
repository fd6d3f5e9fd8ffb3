"""The daemon's decisions about its own life under systemd, as pure functions: when to send
READY=1, what STATUS= says, when WATCHDOG=1 and EXTEND_TIMEOUT_USEC= are due, whether a
reloaded policy is taken, when to probe an Ollama that does not answer.

No clock, no I/O: the loop (service.py) passes in the time and what it knows, and carries out
what comes back. Each function is table-tested in tests/test_lifecycle.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from sentinel_keeper.act.reconcile import PassReport
from sentinel_keeper.daemon.progress import Stuck
from sentinel_keeper.decide.plan import FindingKind
from sentinel_keeper.errors import PolicyError
from sentinel_keeper.policy import Policy
from sentinel_keeper.report.logevent import Level, LogEvent
from sentinel_keeper.report.render import status_line
from sentinel_keeper.values.quantities import format_duration
from sentinel_keeper.values.text import shorten
from sentinel_keeper.values.timings import Timings


def starting_event(policy: Policy, path: str, version: str, watchdog: float | None) -> LogEvent:
    where: dict[str, object] = (
        {"ollama": policy.split()[0].ollama.url}  # with gateway.takeover, its private one
        if policy.instances is None
        else {"instances": ",".join(policy.instance_names)}
    )
    return LogEvent(
        "starting",
        "info",
        {
            "version": version,
            "policy": path,
            "pinned": len(policy.pinned),
            "extras": len(policy.extras),
            "interval": format_duration(policy.interval),
            "ready": policy.ready,
            **where,
            "watchdog": format_duration(watchdog * 2) if watchdog else "off",
        },
    )


def instance_event(name: str, part: Policy) -> LogEvent:
    """An instance's loop started (at the start, or added by a reload) or was removed."""
    gpus = part.vram.gpus
    return LogEvent(
        name,
        "info",
        {
            "instance": part.instance,
            "ollama": part.ollama.url,
            "unit": part.ollama.unit,
            "gpus": gpus if isinstance(gpus, str) else ",".join(str(g) for g in gpus),
            "pinned": len(part.pinned),
            "extras": len(part.extras),
        },
    )


# --- READY=1 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """READY=1 is due, and why."""

    why: str
    level: Level = "info"


def hopeless(report: PassReport) -> tuple[str, ...]:
    """Pinned models no pass can make resident: not installed, and not to be pulled."""
    if not report.reachable:
        return ()
    return tuple(
        sorted(
            {
                f.model
                for f in report.plan.findings
                if f.kind is FindingKind.NOT_INSTALLED and f.model in report.pinned
            }
        )
    )


def readiness(policy: Policy, report: PassReport | None, *, elapsed: float) -> Ready | None:
    """Whether READY=1 is due (the caller sends it once), ``elapsed`` seconds after the start
    with ``report`` the last pass's.

    ``ready: started``: after the first pass, whatever it found. ``ready: pinned`` (the
    default): once every pinned model is resident, or the missing ones are all hopeless (not
    installed), or startup_timeout has passed: a keeper that never becomes ready would hold up
    every unit ordered after it.
    """
    if report is not None:
        if policy.ready == "started":
            return Ready("started")
        if report.reachable:
            missing = set(report.pinned_missing)
            if not missing:
                return Ready("pinned resident")
            if missing <= set(hopeless(report)):
                return Ready("pinned models not installed", "warning")
    if elapsed >= policy.startup_timeout:
        return Ready(f"startup_timeout {format_duration(policy.startup_timeout)} passed", "warning")
    return None


def all_ready(ready: Sequence[tuple[str, Ready | None]], *, several: bool) -> Ready | None:
    """READY=1 for the daemon: once every instance is ready. With several instances the
    reason names each (``gpu0: pinned resident; gpu1: startup_timeout 10m passed``); the
    level is the worst."""
    if any(r is None for _, r in ready) or not ready:
        return None
    done = [(name, r) for name, r in ready if r is not None]
    if not several:
        return done[0][1]
    level: Level = "warning" if any(r.level != "info" for _, r in done) else "info"
    return Ready("; ".join(f"{name}: {r.why}" for name, r in done), level)


def ready_event(
    ready: Ready, *, elapsed: float, reports: Sequence[tuple[str, PassReport | None]]
) -> LogEvent:
    """The READY line: why, after how long, and the pinned models still missing (with
    several instances as MODEL@INSTANCE)."""
    fields: dict[str, object] = {"why": ready.why, "after": round(elapsed, 3)}
    missing: list[str] = []
    for name, report in reports:
        if report is not None and report.reachable:
            suffix = f"@{name}" if len(reports) > 1 else ""
            missing += [f"{model}{suffix}" for model in report.pinned_missing]
    if missing:
        fields["missing"] = missing
    return LogEvent("ready", ready.level, fields)


# --- STATUS= --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusView:
    """What STATUS= is made of."""

    url: str
    report: PassReport | None  # the last pass's
    outage_seconds: float | None = None  # for how long Ollama has not answered
    stuck: Stuck | None = None
    loading: tuple[str, float] | None = None  # the model a pass loads now, for how long
    rejected: str | None = None  # a reloaded policy was refused: the old one runs


def status_text(view: StatusView) -> str:
    report = view.report
    if view.stuck is not None:
        text = f"stuck: {view.stuck.describe()}; watchdog pings stopped"
    elif view.outage_seconds is not None and report is not None and not report.reachable:
        reason = report.error_reason or report.error or "no answer"
        text = f"waiting for ollama at {view.url}: {reason} ({view.outage_seconds:.0f} s)"
    elif report is None:
        text = f"starting: first pass against ollama at {view.url}"
    else:
        text = status_line(report)
        missing = hopeless(report)
        if missing:
            text += f"; not installed: {', '.join(missing)}"
    if view.loading is not None and view.loading[1] >= 1.0 and view.stuck is None:
        text = f"loading {view.loading[0]} ({view.loading[1]:.0f} s); {text}"
    if view.rejected is not None:
        text = f"{view.rejected}; {text}"
    return text


# STATUS= is one line of `systemctl status`: one instance's part is cut to this length, so
# that with several every instance's name and state are there.
STATUS_CHARS = 200
STATUS_CHARS_PER_INSTANCE = 110


def status_text_all(
    views: Sequence[tuple[str, StatusView]], *, several: bool, rejected: str | None
) -> str:
    """STATUS= for the daemon: the one instance's text, or each instance's after its name,
    each cut short (``gpu0: 2/2 pinned resident ...; gpu1: waiting for ollama at ...``)."""
    if not several and len(views) == 1:
        return shorten(status_text(replace(views[0][1], rejected=rejected)), STATUS_CHARS)
    text = "; ".join(
        f"{name}: {shorten(status_text(view), STATUS_CHARS_PER_INSTANCE)}" for name, view in views
    )
    return text if rejected is None else f"{rejected}; {text}"


# --- WATCHDOG=1, EXTEND_TIMEOUT_USEC= and the stuck report ------------------------------------


def tick_seconds(timings: Timings, watchdog_period: float | None) -> float:
    """How long the loop may sleep: a quarter of the watchdog period at most."""
    return timings.tick if watchdog_period is None else min(timings.tick, watchdog_period / 4)


@dataclass(frozen=True)
class Duties:
    ping: bool  # WATCHDOG=1
    extend: bool  # EXTEND_TIMEOUT_USEC= (the start goes on)


def duties(
    now: float,
    *,
    last_ping: float,
    last_extend: float,
    watchdog_period: float | None,
    stuck: Stuck | None,
    ready_sent: bool,
    timings: Timings,
) -> Duties:
    """What is due at ``now`` (monotonic seconds). A stuck pass stops both: systemd then
    restarts the service at its watchdog (or start) timeout, which is the point."""
    ping = (
        stuck is None and watchdog_period is not None and now - last_ping >= watchdog_period * 0.9
    )
    extend = not ready_sent and stuck is None and now - last_extend >= timings.extend_every
    return Duties(ping=ping, extend=extend)


def stuck_events(before: Stuck | None, now: Stuck | None, *, watchdog: bool) -> list[LogEvent]:
    """One error when a pass gets stuck, one info line when it is not any more."""
    if now is not None and before is None:
        return [
            LogEvent(
                "pass_stuck",
                "error",
                {
                    "what": now.what,
                    "seconds": round(now.seconds, 1),
                    "limit": now.limit,
                    "watchdog": "pings stopped" if watchdog else "off",
                },
            )
        ]
    if now is None and before is not None:
        return [LogEvent("pass_unstuck", "info", {"what": before.what})]
    return []


# --- probing an Ollama that does not answer -----------------------------------------------------


@dataclass(frozen=True)
class Probe:
    after: float | None  # seconds until an extra pass; None: the interval will do
    next_delay: float  # the delay of the probe after that one


def probe(report: PassReport, delay: float, *, interval: float, timings: Timings) -> Probe:
    """After a pass that could not observe Ollama, or in which Ollama went away (a restart
    in the middle of a load), another pass soon, at a capped back-off: the next interval may
    be minutes away, and the pinned models should be back about a second after Ollama is."""
    if report.reachable and not any(o.ollama_gone for o in report.outcomes):
        return Probe(None, timings.probe_first)
    return Probe(min(delay, timings.probe_max, interval), timings.next_probe(delay))


# --- SIGHUP: the policy read again ------------------------------------------------------------


@dataclass(frozen=True)
class Reload:
    """What a reload decided."""

    policy: Policy | None  # the policy to run from now on; None: keep the one in force
    rejected: str | None  # STATUS= prefix while an invalid policy is refused
    events: tuple[LogEvent, ...]


def reload_decision(
    path: str, old: Policy, new: Policy | None, error: BaseException | None
) -> Reload:
    """Take ``new``, or refuse the file (``error``) and keep ``old`` running."""
    if new is None:
        if isinstance(error, PolicyError) and error.diagnostics:
            lines = [str(d) for d in error.diagnostics]
        else:
            lines = [str(error) if error is not None else "no policy read"]
        count = len(lines)
        rejected = (
            f"policy rejected ({count} error{'s' if count != 1 else ''}, see the journal), "
            "running the previous one"
        )
        events = [
            LogEvent(
                "policy_rejected",
                "error",
                {"path": path, "errors": count, "keeping": "the previous policy"},
            ),
            *(LogEvent("policy_error", "error", {"error": line}) for line in lines),
        ]
        return Reload(None, rejected, tuple(events))
    event = LogEvent(
        "policy_reloaded",
        "info",
        {
            "path": path,
            "pinned": len(new.pinned),
            "extras": len(new.extras),
            "interval": format_duration(new.interval),
            "changed": new != old,
        },
    )
    return Reload(new, None, (event,))


def risk_events(path: str, risks: Iterable[str]) -> list[LogEvent]:
    """Others than root can change the policy: it decides what Ollama loads and, through
    apply-override, Ollama's environment."""
    return [LogEvent("policy_writable", "warning", {"path": path, "risk": r}) for r in risks]
