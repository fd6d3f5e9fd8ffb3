"""What the daemon logs about a pass: a pure function of what it remembers of earlier passes
(:class:`History`) and the current :class:`PassReport`.

The rules that keep the journal useful:

- something that happened (a load, a reload, a shed, a failure) is one event;
- a condition (a finding, Ollama unreachable, NVML unavailable, the state file unwritable) is
  logged once when it appears and once, at info, when it clears;
- a pass in which nothing changed logs nothing at info or above.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sentinel_keeper.act.reconcile import Outcome, PassReport
from sentinel_keeper.decide.causes import missing_why
from sentinel_keeper.decide.plan import ActionKind, Finding, FindingKind
from sentinel_keeper.report.logevent import LogEvent
from sentinel_keeper.values.quantities import format_duration

FindingKey = tuple[str, str | None]


@dataclass(frozen=True)
class History:
    """What the event diff remembers between passes."""

    last: PassReport | None = None  # the previous pass, reachable or not
    last_reachable: PassReport | None = None  # the last pass that observed Ollama
    outage_since: datetime | None = None  # start of the first pass of the current outage
    findings: tuple[Finding, ...] = ()  # the conditions currently reported
    state_error: str | None = None

    @property
    def finding_keys(self) -> set[FindingKey]:
        return {f.key for f in self.findings}


def _extras_cut_short(report: PassReport) -> bool:
    """The planner skips evaluating extras while a pinned model loads or an extra is shed,
    so the absence of an extra's finding in such a pass says nothing."""
    return any(
        (a.kind in (ActionKind.LOAD, ActionKind.RELOAD) and a.tier == "pinned")
        or a.kind is ActionKind.UNLOAD
        for a in report.plan.actions
    )


def _about_extras(finding: Finding) -> bool:
    return finding.kind is FindingKind.EXTRA_SKIPPED or (
        finding.kind is FindingKind.NOT_INSTALLED and finding.data.get("tier") == "extra"
    )


def current_findings(history: History, report: PassReport) -> tuple[Finding, ...]:
    """The findings in force after ``report``: its own, plus the previous extras findings
    when this pass did not evaluate extras. An unreachable pass changes nothing."""
    if not report.reachable:
        return history.findings
    found = {f.key: f for f in report.plan.findings}
    if _extras_cut_short(report):
        for old in history.findings:
            if _about_extras(old) and old.key not in found:
                found[old.key] = old
    return tuple(found.values())


def advance(history: History, report: PassReport) -> History:
    """The history after ``report``."""
    if not report.reachable:
        since = history.outage_since
        if since is None:
            since = report.started
        return History(
            last=report,
            last_reachable=history.last_reachable,
            outage_since=since,
            findings=history.findings,
            state_error=history.state_error,
        )
    return History(
        last=report,
        last_reachable=report,
        outage_since=None,
        findings=current_findings(history, report),
        state_error=report.state_error,
    )


def pass_events(history: History, report: PassReport) -> list[LogEvent]:
    """The log events for ``report`` given what was seen before. Pure."""
    if not report.reachable:
        if history.last is None or history.last.reachable:
            return [LogEvent("ollama_unreachable", "warning", {"error": report.error})]
        return [LogEvent("ollama_still_unreachable", "debug", {"error": report.error})]
    observation = report.observation
    if observation is None:  # unreachable, handled above; for the type checker
        return []
    events: list[LogEvent] = []
    seen_before = history.last_reachable
    if history.last is not None and not history.last.reachable:
        since = history.outage_since or history.last.started
        events.append(
            LogEvent(
                "ollama_back",
                "info",
                {
                    "outage_seconds": round(max((report.started - since).total_seconds(), 0.0), 3),
                    "version": observation.ollama_version,
                },
            )
        )
    if seen_before is None:
        events.append(LogEvent("ollama_found", "info", {"version": observation.ollama_version}))
    else:
        old = seen_before.observation
        if old is not None and old.ollama_version != observation.ollama_version:
            events.append(
                LogEvent(
                    "ollama_version_changed",
                    "info",
                    {"before": old.ollama_version, "now": observation.ollama_version},
                )
            )
    events.extend(_gpu_events(seen_before, report))
    events.extend(_missing_events(history, report))
    events.extend(_outcome_event(report, o) for o in report.outcomes)
    events.extend(_finding_events(history, report))
    events.extend(_stall_events(history, report))
    events.extend(_state_events(history, report))
    events.append(_summary(report, events))
    return events


def _gpu_events(before: PassReport | None, report: PassReport) -> list[LogEvent]:
    gpu = report.observation.gpu if report.observation else None
    if gpu is None:
        return []
    old = before.observation.gpu if before and before.observation else None
    if not gpu.known and (old is None or old.known):
        return [LogEvent("nvml_unavailable", "warning", {"reason": gpu.error or "no GPU found"})]
    if gpu.known and old is not None and not old.known:
        return [LogEvent("nvml_available", "info", {"gpu": gpu.summary()})]
    return []


def _tier(report: PassReport, name: str) -> str:
    return "pinned" if name in report.pinned else "extra"


def _missing_events(history: History, report: PassReport) -> list[LogEvent]:
    """Policy models the previous pass left resident that are gone now."""
    last = history.last
    if last is None or not last.reachable or report.observation is None:
        return []
    before = last.latest
    if before is None:
        return []
    now = report.observation.loaded_by_name()
    events = []
    for instance in before.loaded:
        name = instance.name
        if name in now or (name not in report.pinned and name not in report.extras):
            continue
        tier = _tier(report, name)
        events.append(
            LogEvent(
                "model_missing",
                "warning" if tier == "pinned" else "info",
                {"model": name, "tier": tier, "why": missing_why(before, report.observation, name)},
            )
        )
    return events


def _shortened_to(report: PassReport, model: str) -> str:
    if report.observation is None:
        return "unknown"
    instance = report.observation.loaded_by_name().get(model)
    if instance is None:
        return "unknown"
    remaining = instance.remaining(report.observation.at)
    if remaining is None:
        return "unknown"
    seconds = remaining.total_seconds()
    return "0s (expired)" if seconds <= 0 else format_duration(seconds)


def _loaded_ctx(report: PassReport, model: str) -> int | None:
    if report.observation is None:
        return None
    instance = report.observation.loaded_by_name().get(model)
    return instance.context_length if instance else None


def _outcome_event(report: PassReport, outcome: Outcome) -> LogEvent:
    action = outcome.action
    base: dict[str, object] = {"model": action.model, "tier": action.tier}
    if outcome.skipped:
        return LogEvent(
            "action_skipped",
            "debug",
            {**base, "action": action.kind.value, "why": outcome.error},
        )
    if not outcome.ok:
        failed: dict[str, object] = {
            **base,
            "action": action.kind.value,
            "seconds": round(outcome.seconds, 3),
            "error": outcome.error,
        }
        if action.kind is ActionKind.PULL:
            return LogEvent("model_pull_failed", "error", failed)
        if action.kind is ActionKind.UNLOAD:
            return LogEvent("extra_shed_failed", "warning", failed)
        if action.kind is ActionKind.RETIRE:
            return LogEvent("model_unload_failed", "warning", failed)
        return LogEvent(
            "model_load_failed", "error" if action.tier == "pinned" else "warning", failed
        )
    seconds = {"seconds": round(outcome.seconds, 3)}
    if action.kind is ActionKind.LOAD:
        fields: dict[str, object] = {**base, **seconds}
        if outcome.load_duration is not None:
            fields["load_duration"] = outcome.load_duration
        fields["reason"] = (
            f"its time window opened; {action.reason}"
            if action.model in report.opened
            else action.reason
        )
        return LogEvent("model_loaded", "info", fields)
    if action.kind is ActionKind.RELOAD:
        return LogEvent(
            "model_reloaded",
            "warning",
            {
                **base,
                **seconds,
                "loaded_num_ctx": _loaded_ctx(report, action.model),
                "num_ctx": action.options.get("num_ctx"),
                "why": "a client loaded it with another num_ctx; "
                "make clients send the policy's options",
            },
        )
    if action.kind is ActionKind.REASSERT:
        return LogEvent(
            "keep_alive_reasserted",
            "info",
            {
                **base,
                "shortened_to": _shortened_to(report, action.model),
                "keep_alive": format_duration(action.keep_alive),
                "why": "a client sent a shorter keep_alive",
            },
        )
    if action.kind is ActionKind.REFRESH:
        return LogEvent(
            "keep_alive_refreshed",
            "debug",
            {**base, "keep_alive": format_duration(action.keep_alive), "reason": action.reason},
        )
    if action.kind is ActionKind.UNLOAD:
        return LogEvent("extra_shed", "info", {**base, "reason": action.reason})
    if action.kind is ActionKind.RETIRE:
        return LogEvent("model_window_closed", "info", {**base, "reason": action.reason})
    return LogEvent("model_pulled", "info", {**base, **seconds})


def _finding_events(history: History, report: PassReport) -> list[LogEvent]:
    before = history.finding_keys
    now = current_findings(history, report)
    now_keys = {f.key for f in now}
    events = []
    for finding in now:
        if finding.key in before:
            continue
        fields: dict[str, object] = {}
        if finding.model is not None:
            fields["model"] = finding.model
        fields.update(finding.data)
        fields["message"] = finding.message
        events.append(
            LogEvent(finding.kind.value, "warning" if finding.warning else "info", fields)
        )
    for old in history.findings:
        if old.key not in now_keys:
            cleared: dict[str, object] = {"kind": old.kind.value}
            if old.model is not None:
                cleared["model"] = old.model
            events.append(LogEvent("finding_cleared", "info", cleared))
    return events


def _stall_events(history: History, report: PassReport) -> list[LogEvent]:
    """Ollama not finishing the keeper's loads: said at err when it starts, at info when a
    load returns again."""
    before = history.last_reachable.stall if history.last_reachable is not None else None
    now = report.stall
    if now is not None and before is None:
        return [
            LogEvent(
                "ollama_not_loading",
                "error",
                {
                    "model": now.model,
                    "since": now.since.isoformat(),
                    "retry_in": format_duration(
                        max((now.retry_at - now.since).total_seconds(), 0.0)
                    ),
                    "why": "a load did not return within ollama.load_timeout while /api/ps "
                    "answered: Ollama's scheduler is stuck (restarting ollama frees it); no "
                    "more loads are queued behind it",
                },
            )
        ]
    if now is None and before is not None:
        return [
            LogEvent("ollama_loading_again", "info", {"stalled_since": before.since.isoformat()})
        ]
    return []


def _state_events(history: History, report: PassReport) -> list[LogEvent]:
    if report.state_error and report.state_error != history.state_error:
        return [LogEvent("state_unwritable", "warning", {"error": report.state_error})]
    if history.state_error and not report.state_error:
        return [LogEvent("state_writable", "info", {})]
    return []


def _summary(report: PassReport, events: list[LogEvent]) -> LogEvent:
    """One line per pass: info when the pass did something or something changed, else
    debug (so a steady state is silent at the default level)."""
    attempted = [o for o in report.outcomes if not o.skipped]
    failed = sum(1 for o in attempted if not o.ok)
    pinned = f"{len(report.resident(report.pinned))}/{len(report.pinned)}"
    fields: dict[str, object] = {"pinned": pinned}
    if report.extras:
        fields["extras"] = f"{len(report.resident(report.extras))}/{len(report.extras)}"
    fields["actions"] = len(attempted)
    if failed:
        fields["failed"] = failed
    fields["seconds"] = round(report.seconds, 3)
    latest = report.latest
    if latest is not None:
        # why NVML cannot tell is said once, by nvml_unavailable, not on every pass line
        fields["gpu"] = latest.gpu.summary() if latest.gpu.known else "unknown"
    routine = all(o.ok and o.action.kind is ActionKind.REFRESH for o in attempted)
    noteworthy = not routine or any(e.level != "debug" for e in events)
    return LogEvent("pass", "info" if noteworthy else "debug", fields)
