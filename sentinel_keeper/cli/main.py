"""The command line. The only module that prints user errors or chooses an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sentinel_keeper import __version__
from sentinel_keeper.act.reconcile import MAX_SETTLE_PASSES
from sentinel_keeper.act.state import default_state_dir, instance_state_dir
from sentinel_keeper.cli.bench import BenchReport, bench_json, bench_table, run_bench
from sentinel_keeper.daemon.runtime import make_client, open_reconciler
from sentinel_keeper.daemon.service import run_daemon
from sentinel_keeper.decide import context
from sentinel_keeper.decide.plan import FindingKind
from sentinel_keeper.errors import (
    MetricsError,
    OllamaError,
    OllamaUnreachable,
    OverrideError,
    PolicyError,
    SentinelError,
)
from sentinel_keeper.metrics.status import DaemonView, daemon_json, daemon_lines
from sentinel_keeper.observe.gpu import GpuProbe
from sentinel_keeper.observe.observation import GpuSnapshot, Observation
from sentinel_keeper.override.apply import NoReload, OverrideReport, apply_override
from sentinel_keeper.override.render import default_dropin_dir
from sentinel_keeper.override.takeover import Steps, after_dropin, before_dropin
from sentinel_keeper.policy import DEFAULT_POLICY_PATH, Policy, json_schema
from sentinel_keeper.policy.loading import load_policy
from sentinel_keeper.policy.risks import file_risks
from sentinel_keeper.policy.windows import in_force, zone_of
from sentinel_keeper.report.logs import (
    LOG_FORMATS,
    LOG_LEVELS,
    configure_logging,
    daemon_logger,
    under_journal,
)
from sentinel_keeper.report.render import (
    extras_without_reason,
    outcome_line,
    pinned_health,
    status_json,
    status_line,
    status_table,
    unreachable_json,
    window_lines,
    windows_json,
)
from sentinel_keeper.systemd import systemctl
from sentinel_keeper.values.names import normalize_model_name
from sentinel_keeper.values.timings import Timings

if TYPE_CHECKING:
    from sentinel_keeper.metrics.readback import DaemonFigures

# Exit codes (sysexits.h where one fits). Documented in --help and the README.
EXIT_OK = 0
EXIT_NOT_RESIDENT = 1  # `once`: a pinned model is not resident after its passes
EXIT_BENCH_INCOMPLETE = 1  # `bench`: a model failed or was refused
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_PINNED_NOT_RESIDENT = 3  # `status`: a pinned model is installed but not resident
EXIT_NOT_INSTALLED = 4  # `status`: a pinned model is not installed; `check --online`: problems
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: Ollama unreachable; apply-override: systemctl failed
EXIT_SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug: please report it)
EXIT_CANTCREAT = 73  # EX_CANTCREAT: apply-override could not write or remove its drop-in
EXIT_CONFIG = 78  # EX_CONFIG: the policy is missing or invalid

# (code, command it is about or None for all, meaning): the --help of each command lists
# the lines of its own codes, the top-level --help all of them.
_EXIT_MEANINGS: tuple[tuple[int, frozenset[str] | None, str], ...] = (
    (EXIT_OK, None, "success"),
    (EXIT_NOT_RESIDENT, frozenset({"once"}), "some pinned model is not resident after its passes"),
    (EXIT_BENCH_INCOMPLETE, frozenset({"bench"}), "a model failed or was refused"),
    (EXIT_USAGE, None, "bad command line"),
    (
        EXIT_PINNED_NOT_RESIDENT,
        frozenset({"status"}),
        "a pinned model is installed but not resident (loading, evicted, never loaded)",
    ),
    (EXIT_NOT_INSTALLED, frozenset({"status"}), "a pinned model is not installed in Ollama"),
    (
        EXIT_NOT_INSTALLED,
        frozenset({"check"}),
        "(--online) a model is not installed (and not pull: true), or its num_ctx is\n"
        "      above the context length it was trained for",
    ),
    (
        EXIT_UNAVAILABLE,
        frozenset({"check", "once", "status", "bench"}),
        "Ollama (any of its instances) is unreachable (check: only with --online)",
    ),
    (EXIT_UNAVAILABLE, frozenset({"apply-override"}), "systemctl failed"),
    (EXIT_SOFTWARE, None, "internal error"),
    (
        EXIT_CANTCREAT,
        frozenset({"apply-override"}),
        "the drop-in could not be written or removed",
    ),
    (
        EXIT_CONFIG,
        frozenset({"check", "once", "status", "bench", "run", "apply-override"}),
        "the policy is missing or invalid (EX_CONFIG)",
    ),
)


def exit_codes_help(command: str | None = None) -> str:
    """The "exit codes:" epilog of ``command``'s --help, or of the top-level --help."""
    lines = ["exit codes:"]
    for code, commands, meaning in _EXIT_MEANINGS:
        if command is not None and commands is not None and command not in commands:
            continue
        label = ""
        if command is None and commands is not None and len(commands) <= 2:
            label = f"{'/'.join(sorted(commands))}: "
        lines.append(f"  {code:<3} {label}{meaning}")
    return "\n".join(lines) + "\n"


EXIT_CODES_HELP = exit_codes_help()

Handler = Callable[[argparse.Namespace], int]


def _policy_path(args: argparse.Namespace) -> str:
    return str(args.policy or os.environ.get("SENTINEL_POLICY") or DEFAULT_POLICY_PATH)


def _load(args: argparse.Namespace) -> Policy:
    policy = load_policy(_policy_path(args))
    args.loaded_policy = policy  # for the hint of an unreachable Ollama
    return policy


class _UsageError(Exception):
    """A command line that does not fit the policy (an unknown --instance...): exit 2."""


def _several(policy: Policy) -> bool:
    """Whether the policy has several Ollama instances: the output then says which is which
    (also when --instance selects one of them, so that its shape does not depend on it)."""
    return len(policy.instance_names) > 1


def _parts(args: argparse.Namespace, policy: Policy) -> tuple[Policy, ...]:
    """The single-instance policies the command runs on: every instance, or those named by
    --instance (in the policy's order)."""
    parts = policy.split()
    wanted: list[str] | None = getattr(args, "instance", None)
    if not wanted:
        return parts
    known = policy.instance_names
    for name in wanted:
        if name not in known:
            raise _UsageError(
                f"--instance {name}: {policy.source} has no such instance "
                f"(instances: {', '.join(known)})"
            )
    return tuple(part for part in parts if part.instance in wanted)


def _worst(codes: Sequence[int], order: Sequence[int]) -> int:
    """The first of ``order`` that one of ``codes`` is, else EXIT_OK."""
    return next((code for code in order if code in codes), EXIT_OK)


def _unreachable_hint(policy: Policy) -> str:
    """What to look at when Ollama does not answer: the policy key, its value, the unit."""
    where = (
        f"set in {policy.source}"
        if "url" in policy.ollama.model_fields_set
        else f"the default; {policy.source} does not set it"
    )
    if policy.takeover is not None:
        return (
            f"with gateway.takeover Ollama listens at {policy.ollama.url} "
            f"(gateway.upstream; {policy.instance_key}.url {policy.client_url} is the "
            "gateway's); is Ollama running, with the drop-in's OLLAMA_HOST (`sentinel-keeper "
            f"apply-override`)? try `systemctl status {policy.ollama.unit}`"
        )
    return (
        f"{policy.instance_key}.url is {policy.ollama.url} ({where}); is Ollama running "
        f"and listening there? try `systemctl status {policy.ollama.unit}`"
    )


def _unreachable(policy: Policy, error: str) -> int:
    _err(f"sentinel-keeper: {error}")
    _err(f"hint: {_unreachable_hint(policy)}")
    return EXIT_UNAVAILABLE


def _gpu_notes(policy: Policy, gpu: GpuSnapshot, *, said: bool) -> None:
    """Without NVML, once per command: that GPU memory is unknown (unless ``said``: the
    command's header line says it already), and that extras then need vram.budget."""
    if gpu.known:
        return
    if not said:
        _out(f"{'note':<9} {gpu.summary()}")
    if policy.extras and policy.vram.budget is None:
        _out(
            f"{'note':<9} extras are not loaded here: without GPU memory figures they "
            "need vram.budget (the memory the models may use, e.g. 3GiB)"
        )


def _out(text: str = "", stream: TextIO | None = None) -> None:
    try:
        print(text, file=stream or sys.stdout)
    except BrokenPipeError:
        _stdout_gone()


def _stdout_gone() -> None:
    """The reader closed the pipe (`status | true`, `status | head -1`): the rest of the
    output goes nowhere, and the command goes on to its exit code, which a health check
    piped into another command must still see."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass  # no file descriptor to replace (a test's captured stdout): nothing to drop


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()


# syslog priorities for stderr lines under journald (ExecStartPre=, ExecReload=, a timer):
# without the "<N>" prefix journald files every line at info, and `journalctl -p warning`
# would show a failed reload without its reason.
_ERR, _WARNING = 3, 4


def _err(text: str, priority: int = _ERR) -> None:
    """A line (or lines) for the user on stderr, with its priority prefix under journald."""
    prefix = f"<{priority}>" if under_journal(os.environ, sys.stderr) else ""
    for line in text.splitlines() or [""]:
        print(prefix + line, file=sys.stderr)


def _file_risks(path: str) -> bool:
    """Warn about who else can change the policy; True if any local user can."""
    risks = file_risks(path)
    for risk in risks:
        _err(f"warning: {path}: {risk.message}", _WARNING)
    return any(risk.anyone for risk in risks)


def cmd_check(args: argparse.Namespace) -> int:
    policy = _load(args)
    _file_risks(policy.source)
    pinned, extras = len(policy.pinned), len(policy.extras)
    parts, several = policy.split(), _several(policy)
    if not policy.models:
        _err(
            f"warning: {policy.source}: models: is empty: there is nothing to keep warm "
            "(add `- name: MODEL` entries)",
            _WARNING,
        )
    for part in parts:
        _context_notes(part, _gpu_total(part))
    versions: dict[str, str] = {}
    problems: list[tuple[Policy, str]] = []
    unreachable: list[tuple[Policy, str]] = []
    for part in parts if args.online else ():
        try:
            versions[part.instance], found = _online_problems(part, policy, several=several)
        except OllamaUnreachable as exc:
            unreachable.append((part, str(exc)))
            continue
        problems += [(part, problem) for problem in found]
    for _, problem in problems:
        _err(f"{policy.source}: {problem}")
    for part, error in unreachable:
        _unreachable(part, error)
    if unreachable:
        return EXIT_UNAVAILABLE
    if problems:
        count = len(problems)
        with_problems = [part for part in parts if any(p is part for p, _ in problems)]
        where = ", ".join(
            f"instance {part.instance} (ollama at {part.ollama.url})"
            if several
            else f"ollama at {part.ollama.url}"
            for part in with_problems
        )
        _err(f"{policy.source}: {count} problem{'s' if count != 1 else ''} with {where}")
        return EXIT_NOT_INSTALLED
    online = [
        f"ollama {versions[part.instance]} at {part.ollama.url}"
        if args.online
        else f"ollama at {part.ollama.url}"
        for part in parts
    ]
    if several:
        each = ", ".join(f"{p.instance} {text}" for p, text in zip(parts, online, strict=True))
        where = f"{len(parts)} instances: {each}"
    else:
        where = online[0]
    plural = "s" if extras != 1 else ""
    _out(f"{policy.source}: ok ({pinned} pinned, {extras} extra{plural}; {where})")
    return EXIT_OK


def _gpu_total(policy: Policy) -> int | None:
    """Total GPU memory as NVML tells (local; no Ollama needed), None without NVML."""
    probe = GpuProbe(policy.vram.gpu_selection)
    try:
        return probe.snapshot().total
    finally:
        probe.close()


def _context_notes(
    policy: Policy, total_vram: int | None, trained: Mapping[str, int] | None = None
) -> None:
    """Pinned models that clients sending no num_ctx would reload, and what align_context
    can or cannot do about it (warnings: the policy is valid)."""
    problem = context.alignment(policy).problem
    if problem is not None:
        _err(f"warning: {policy.source}: {policy.instance_key}.{problem}", _WARNING)
    for mismatch in context.mismatches(policy, total_vram, trained):
        _err(f"warning: {policy.source}: {context.advice(mismatch)}", _WARNING)


def _online_problems(policy: Policy, whole: Policy, *, several: bool) -> tuple[str, list[str]]:
    """What the Ollama of ``policy`` (one part of ``whole``) says against it: models not
    installed, num_ctx values above a model's trained context; each named by its place in
    ``whole``. Raises OllamaUnreachable."""
    problems: list[str] = []
    # split() keeps the model objects: their place in the whole policy's models list
    places = {id(model): index for index, model in enumerate(whole.models)}
    on = f" (instance {policy.instance})" if several else ""
    with make_client(policy) as client:
        version = client.version()
        installed = {m.name for m in client.tags()}
        for index, model in enumerate(policy.models):
            where = f"models[{places.get(id(model), index)}] {model.name}{on}"
            if model.name not in installed:
                if model.pull:
                    _out(f"{'note':<9} {model.name}{on} is not installed; pull: true pulls it")
                else:
                    problems.append(
                        f"{where}: not installed in Ollama (run `ollama pull {model.name}`, "
                        "or set pull: true)"
                    )
                continue
            want = model.options.num_ctx
            if want is None:
                continue
            try:
                trained = client.show(model.name).context_length
            except OllamaUnreachable:
                raise
            except OllamaError:
                continue
            if trained is not None and want > trained:
                problems.append(
                    f"{where}: options.num_ctx {want} is above the {trained} tokens it was "
                    f"trained with (Ollama caps it at {trained}; set num_ctx to at most that)"
                )
    return version, problems


def cmd_schema(args: argparse.Namespace) -> int:
    _out(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_once(args: argparse.Namespace) -> int:
    policy = _load(args)
    several = _several(policy)
    codes = []
    for count, part in enumerate(_parts(args, policy)):
        if count:
            _out()
        state_dir = instance_state_dir(args.state_dir, part.instance)
        codes.append(_once(part, state_dir, header=_header(part) if several else ""))
    # an instance down does not stop the others being warmed: it is said last, in the code
    return _worst(codes, (EXIT_UNAVAILABLE, EXIT_NOT_RESIDENT))


def _header(part: Policy) -> str:
    """What starts the first line of an instance's block when the policy has several."""
    return f"instance {part.instance}: "


def _down(part: Policy, error: str, header: str) -> int:
    """An instance that does not answer: with several, a line in its block on stdout too."""
    if header:
        _out(f"{header}ollama at {part.ollama.url} is unreachable")
    return _unreachable(part, error)


def _once(policy: Policy, state_dir: str, *, header: str) -> int:
    """Settle one instance and say what was done; its exit code."""
    with open_reconciler(policy, state_dir) as reconciler:
        reports = reconciler.settle()
    report = reports[-1]
    observation = reports[0].observation
    if observation is None:
        return _down(policy, str(report.error), header)
    version, gpu = observation.ollama_version, observation.gpu.summary()
    _out(f"{header}ollama {version} at {policy.ollama.url}; {gpu}")
    _gpu_notes(policy, observation.gpu, said=True)
    outcomes = [outcome for each in reports for outcome in each.outcomes]
    for outcome in outcomes:
        _out(outcome_line(outcome))
    if not report.reachable:
        return _unreachable(policy, str(report.error))
    for finding in report.plan.findings:
        if finding.kind is FindingKind.NO_MEMORY_INFO:
            continue  # said once above
        _out(f"{'warning' if finding.warning else 'note':<9} {finding.message}")
    for name in extras_without_reason(report):
        _out(
            f"{'note':<9} {name} not loaded: after {len(reports)} passes a pinned model was "
            "still loading or an extra being shed; the daemon places it in a later pass"
        )
    if not outcomes:
        _out("nothing to do")
    if report.state_error:
        _err(f"warning: {report.state_error} (sizes of extras will be estimated)", _WARNING)
    latest = report.latest
    _out(status_line(report, gpu=latest is None or latest.gpu.known))
    return EXIT_OK if report.all_pinned_resident else EXIT_NOT_RESIDENT


def _whose(figures: DaemonFigures, policy: Policy, parts: Sequence[Policy]) -> str | None:
    """Why the figures at the metrics endpoint are not this policy's daemon's (another
    sentinel-keeper, with another policy or another Ollama, holds metrics.listen); None when
    they are."""
    from sentinel_keeper.metrics.families import policy_fingerprint, policy_path  # noqa: PLC0415

    ours = policy_path(policy.source)
    if not figures.policies:
        return (
            "the daemon there does not say which policy it runs (a sentinel-keeper before "
            f"{__version__}: restart it), so its figures are not shown as {ours}'s"
        )
    for part in parts:
        if figures.policies.get(part.instance) == policy_fingerprint(part):
            continue
        return (
            "it is another sentinel-keeper's, one that runs another policy file or another "
            f"Ollama than this policy ({ours}, instance {part.instance}, Ollama "
            f"{part.ollama.url}): its figures are not shown. Two daemons cannot share "
            "metrics.listen: give one of them another address"
        )
    return None


def _daemon_view(policy: Policy, parts: Sequence[Policy] = ()) -> DaemonView:
    """The running daemon's lifetime figures, read from its metrics endpoint, when that
    daemon runs this policy (``parts``: the instances shown)."""
    address = policy.metrics.address
    if address is None:
        return DaemonView(None, error="the policy turns the metrics endpoint off (metrics.listen)")
    # only here: the daemon imports prometheus_client only when its policy turns metrics on
    from sentinel_keeper.metrics.endpoint import scrape  # noqa: PLC0415
    from sentinel_keeper.metrics.exposition import parse  # noqa: PLC0415
    from sentinel_keeper.metrics.readback import read_figures  # noqa: PLC0415

    try:
        figures = read_figures(parse(scrape(address)))
    except MetricsError as exc:
        return DaemonView(
            address.url,
            error=f"{exc} (is the daemon running? `systemctl status sentinel-keeper`)",
        )
    except ValueError as exc:
        return DaemonView(address.url, error=f"{address.url}: {exc}")
    foreign = _whose(figures, policy, parts or policy.split())
    if foreign is not None:
        return DaemonView(address.url, error=f"{address.url} (metrics.listen): {foreign}")
    return DaemonView(address.url, figures)


def cmd_status(args: argparse.Namespace) -> int:
    policy = _load(args)
    several = _several(policy)
    parts = _parts(args, policy)
    seen = [_observe(part) for part in parts]
    # the daemon's figures are read (once: one daemon keeps every instance) when shown
    shown = args.json or any(observation is not None for _, observation, _ in seen)
    daemon = _daemon_view(policy, parts) if shown else DaemonView(None)
    codes = [_status_code(part, observation) for part, observation, _ in seen]
    if args.json:
        entries = [_status_entry(part, observation, error) for part, observation, error in seen]
        if several:
            now = datetime.now(UTC)
            for entry, (part, observation, _) in zip(entries, seen, strict=True):
                entry["windows"] = windows_json(part, observation.at if observation else now)
            _out(json.dumps({"instances": entries, "daemon": daemon_json(daemon)}, indent=2))
        else:
            ((part, observation, _),) = seen
            (data,) = entries
            data["daemon"] = daemon_json(daemon)
            if observation is not None:
                data["windows"] = windows_json(part, observation.at)
            _out(json.dumps(data, indent=2))
        for part, observation, error in seen:
            if observation is None:
                _unreachable(part, str(error))
        return _worst(codes, _STATUS_ORDER)
    for count, (part, observation, error) in enumerate(seen):
        if count:
            _out()
        header = _header(part) if several else ""
        if observation is None:
            _down(part, str(error), header)
        else:
            _status_text(part, observation, daemon, header)
    return _worst(codes, _STATUS_ORDER)


_STATUS_ORDER = (EXIT_UNAVAILABLE, EXIT_NOT_INSTALLED, EXIT_PINNED_NOT_RESIDENT)


def _observe(part: Policy) -> tuple[Policy, Observation | None, OllamaUnreachable | None]:
    """What the instance of ``part`` has now, or why it did not say."""
    try:
        with open_reconciler(part, None) as reconciler:
            return part, reconciler.observe(), None
    except OllamaUnreachable as exc:
        return part, None, exc


def _in_force(policy: Policy, observation: Observation) -> Policy:
    """The policy with the models inside their time windows now: a pinned model outside
    them is not expected to be resident."""
    active, _ = in_force(policy.models, zone_of(policy.timezone), observation.at)
    return policy.model_copy(update={"models": active})


def _status_code(policy: Policy, observation: Observation | None) -> int:
    if observation is None:
        return EXIT_UNAVAILABLE
    missing, absent = pinned_health(_in_force(policy, observation), observation)
    return EXIT_NOT_INSTALLED if missing else EXIT_PINNED_NOT_RESIDENT if absent else EXIT_OK


def _status_entry(
    policy: Policy, observation: Observation | None, error: OllamaUnreachable | None
) -> dict[str, Any]:
    """`status --json` of one instance: its name first, then what status_json says."""
    if observation is None:
        data = unreachable_json(policy, str(error), _unreachable_hint(policy))
    else:
        data = status_json(policy, observation, in_force=_in_force(policy, observation))
    return {"instance": policy.instance, **data}


def _status_text(policy: Policy, observation: Observation, daemon: DaemonView, header: str) -> None:
    missing, absent = pinned_health(_in_force(policy, observation), observation)
    _out(f"{header}ollama {observation.ollama_version} at {policy.ollama.url}")
    _out(observation.gpu.summary())
    _gpu_notes(policy, observation.gpu, said=True)
    for line in status_table(policy, observation):
        _out(line)
    foreign = [m.name for m in observation.loaded if policy.model(m.name) is None]
    if foreign:
        _out(f"also loaded, not in the policy (left alone): {', '.join(foreign)}")
    for line in daemon_lines(policy, daemon, observation.at.astimezone()):
        _out(line)
    trained = {
        name: d.context_length for name, d in observation.details.items() if d.context_length
    }
    for mismatch in context.mismatches(policy, observation.gpu.total, trained):
        _out(f"{'note':<9} {context.advice(mismatch)}")
    for line in window_lines(policy, observation.at):
        _out(line)
    on = header.rstrip(" ")  # "instance gpu1:" or ""
    for name in missing:
        _err(
            f"sentinel-keeper: {on + ' ' if on else ''}pinned {name} is not installed "
            f"(run `ollama pull {name}`)"
        )
    if absent:
        _err(f"sentinel-keeper: {on + ' ' if on else ''}pinned, not resident: {', '.join(absent)}")


def cmd_bench(args: argparse.Namespace) -> int:
    policy = _load(args)
    parts, several = _parts(args, policy), _several(policy)
    if not args.model and not any(part.models for part in parts):
        _err(
            f"sentinel-keeper: nothing to bench: {policy.source} names no models "
            "and no --model was given"
        )
        return EXIT_USAGE

    def progress(name: str) -> None:
        if sys.stderr.isatty():
            _err(f"bench: {name} ...")

    results: list[tuple[Policy, BenchReport | OllamaUnreachable]] = []
    for part, names in _bench_targets(parts, args.model):
        try:
            with make_client(part) as client:
                report = run_bench(
                    part,
                    client,
                    names,
                    runs=args.runs,
                    tokens=args.tokens,
                    force=args.force,
                    on_model=progress,
                )
        except OllamaUnreachable as exc:
            results.append((part, exc))
        else:
            results.append((part, report))
    codes = [
        EXIT_UNAVAILABLE
        if isinstance(result, OllamaUnreachable)
        else EXIT_OK
        if result.ok
        else EXIT_BENCH_INCOMPLETE
        for _, result in results
    ]
    if args.json:
        entries = [
            {"instance": part.instance, **bench_json(result)}
            if isinstance(result, BenchReport)
            else {
                "instance": part.instance,
                "ollama": {"url": part.ollama.url, "version": None},
                "ok": False,
                "error": str(result),
                "models": [],
            }
            for part, result in results
        ]
        if several:
            _out(json.dumps({"instances": entries}, indent=2))
        elif isinstance(results[0][1], BenchReport):
            _out(json.dumps(bench_json(results[0][1]), indent=2))
    for count, (part, result) in enumerate(results):
        header = _header(part) if several else ""
        if isinstance(result, OllamaUnreachable):
            if args.json:
                _unreachable(part, str(result))
            else:
                _down(part, str(result), header)
            continue
        if args.json:
            continue
        if count:
            _out()
        lines = bench_table(result)
        lines[0] = header + lines[0]
        for line in lines:
            _out(line)
    return _worst(codes, (EXIT_UNAVAILABLE, EXIT_BENCH_INCOMPLETE))


def _bench_targets(
    parts: Sequence[Policy], models: Sequence[str] | None
) -> list[tuple[Policy, list[str] | None]]:
    """Which instance benches what: each its own models; with --model, the instances that
    keep each name (a name kept by none of them is benched on each)."""
    if not models:
        return [(part, None) for part in parts if part.models or len(parts) == 1]
    kept = {model.name for part in parts for model in part.models}
    targets: list[tuple[Policy, list[str] | None]] = []
    for part in parts:
        names = [
            raw
            for raw in models
            if part.model(normalize_model_name(raw)) is not None
            or normalize_model_name(raw) not in kept
        ]
        if names:
            targets.append((part, names))
    return targets


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _print_override(report: OverrideReport, key: str) -> None:
    for conflict in report.conflicts:
        _err(f"warning: {conflict}", _WARNING)
    for note in report.notes:
        _err(f"warning: {note}", _WARNING)
    path, unit = report.path, report.unit
    if report.dry_run:
        if report.diff:
            _out(report.diff.rstrip("\n"))
        else:
            _out(f"{path}: unchanged")
        _out("dry run: nothing written, systemctl not called")
        return
    if report.status == "unchanged":
        _out(f"{path}: unchanged")
        return
    if report.status == "absent":
        _out(f"{path}: not there, nothing to remove")
        return
    if report.resumed:
        _out(f"{path}: already {'removed' if report.status == 'removed' else 'written'}")
    else:
        _out(f"{'removed' if report.status == 'removed' else 'wrote'} {path}")
    for call in report.systemctl_calls:
        _out(f"ran: {' '.join(call)}")
    if report.restart == "requested":
        after = (
            "with Ollama's own OLLAMA_KEEP_ALIVE again"
            if report.status == "removed"
            else "the models are warmed again after"
        )
        _out(f"{unit} restarts in the background if it runs; {after}")
    elif report.no_reload is NoReload.ASKED:
        _out(f"--no-reload: run `systemctl daemon-reload` and restart {unit} for this to apply")
    elif report.no_reload is NoReload.NOT_READ:
        _out(
            f"systemctl not called: systemd does not read {unit}'s drop-ins from "
            f"{path.parent} (it reads them from {default_dropin_dir(unit)}), so {unit} "
            "was neither reloaded nor restarted"
        )
    elif report.no_reload_reason is not None:
        _out(f"{report.no_reload_reason}; the change applies when {unit} next starts")
    elif report.systemd_error is None:
        _out(f"the change applies at {unit}'s next restart ({key}.restart: never)")


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon. Its errors go to the log (journald priorities), not plain stderr."""
    configure_logging(args.log_format, args.log_level)
    log = daemon_logger()
    try:
        return run_daemon(_policy_path(args), state_dir=args.state_dir, timings=args.timings)
    except PolicyError as exc:
        log.error("policy_invalid", path=exc.path, errors=len(exc.diagnostics))
        for diagnostic in exc.diagnostics:
            log.error("policy_error", error=str(diagnostic))
        return EXIT_CONFIG
    except Exception as exc:
        log.critical("internal_error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return EXIT_SOFTWARE


def cmd_gateway(args: argparse.Namespace) -> int:
    """The gateway's own process. It never exits for a policy: an invalid one is logged and
    the last good copy (or plain forwarding) serves instead."""
    configure_logging(args.log_format, args.log_level)
    log = daemon_logger()
    try:
        from sentinel_keeper.gateway.process import run_gateway  # noqa: PLC0415 (aiohttp)

        return run_gateway(_policy_path(args), state_dir=args.state_dir)
    except Exception as exc:
        log.critical("internal_error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return EXIT_SOFTWARE


def cmd_apply_override(args: argparse.Namespace) -> int:
    policy = _load(args)
    parts, several = _parts(args, policy), _several(policy)
    if args.dropin_dir is not None and len(parts) > 1:
        units = ", ".join(f"{part.instance}: {part.ollama.unit}" for part in parts)
        raise _UsageError(
            f"--dropin-dir holds the drop-in of one unit, and {len(parts)} instances are "
            f"selected ({units}): choose one with --instance NAME"
        )
    # --remove only deletes sentinel-keeper's own file: allowed, so that uninstalling works
    if _file_risks(policy.source) and not (args.dry_run or args.remove):
        _err(f"{policy.source}: refusing to write Ollama's drop-in as root from it")
        return EXIT_CONFIG
    # gateway.takeover and the gateway's unit follow the policy, with the drop-ins systemd
    # reads and a systemd to tell (not in a trial into another directory, nor at --remove,
    # whose uninstall stops the gateway's units itself)
    manage = (
        not (args.dry_run or args.no_reload or args.remove)
        and args.dropin_dir is None
        and args.unit_dir is None
        and systemctl.systemd_running()
    )
    fronted = _fronted_part(policy)
    codes = []
    if manage:
        codes.append(_takeover_steps(before_dropin(fronted, systemctl.Systemctl())))
    for count, part in enumerate(parts):
        if several:
            if count:
                _out()
            _out(f"{_header(part)}{part.ollama.unit}")
        # one instance failing does not stop the others
        codes.append(_override(part, args))
    if manage:
        codes.append(_takeover_steps(after_dropin(fronted, systemctl.Systemctl())))
    if args.remove and not (args.dry_run or args.no_reload) and systemctl.systemd_running():
        _socket_holds_the_address()
    return _worst(codes, (EXIT_CANTCREAT, EXIT_UNAVAILABLE))


def _fronted_part(policy: Policy) -> Policy:
    """The part of the instance the gateway fronts (the first one when it is off)."""
    parts = policy.split()
    return next((p for p in parts if p.instance == policy.gateway_instance), parts[0])


def _takeover_steps(steps: Steps) -> int:
    """Said, not failed: the drop-ins are written by then, and the keeper's reload (whose
    ExecReload= this runs in) must go on, to talk to Ollama where the drop-in puts it."""
    for call in steps.calls:
        _out(f"ran: {' '.join(call)}")
    for problem in steps.problems:
        _err(f"warning: {problem}", _WARNING)
    return EXIT_OK


def _socket_holds_the_address() -> None:
    """After --remove: the gateway's socket unit (gateway.takeover) still listening at
    Ollama's usual address keeps Ollama from taking it back."""
    unit = systemctl.GATEWAY_SOCKET
    if systemctl.gateway_socket_active():
        _err(
            f"warning: {unit} is active: it holds the address Ollama listened at before "
            "gateway.takeover, so Ollama cannot take it back until "
            f"`systemctl disable --now {unit}`",
            _WARNING,
        )


def _override(policy: Policy, args: argparse.Namespace) -> int:
    """Write (or remove) the drop-in of one instance's unit; its exit code."""
    ollama = policy.ollama
    try:
        problem = context.alignment(policy).problem
        if problem is not None and not args.remove:
            _err(f"warning: {policy.source}: {policy.instance_key}.{problem}", _WARNING)
        dropin_dir: Path | None = args.dropin_dir
        if args.unit_dir is not None:
            dropin_dir = default_dropin_dir(ollama.unit, args.unit_dir, key=policy.instance_key)
        report = apply_override(
            policy_path=policy.source,
            unit=ollama.unit,
            keep_alive=ollama.keep_alive,
            environment=context.environment(policy),
            restart=ollama.restart,
            dropin_dir=dropin_dir,
            reload=not args.no_reload,
            dry_run=args.dry_run,
            remove=args.remove,
            key=policy.instance_key,
        )
    except OverrideError as exc:
        _err(f"sentinel-keeper: {exc}")
        return EXIT_CANTCREAT
    _print_override(report, policy.instance_key)
    if report.systemd_error is not None:
        done = "removed" if report.status == "removed" else "wrote"
        _err(f"sentinel-keeper: {done} {report.path}, but {report.systemd_error}")
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _instance_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--instance",
        action="append",
        metavar="NAME",
        help="only this Ollama instance of the policy's instances: (repeatable; default: all)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel-keeper",
        description="Keeps the right Ollama models warm in GPU memory.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    policy_help = f"policy file (default: $SENTINEL_POLICY or {DEFAULT_POLICY_PATH})"
    state_dir_help = (
        "where remembered model sizes are kept (default: $STATE_DIRECTORY "
        "or /var/lib/sentinel-keeper)"
    )
    parser.add_argument("--policy", metavar="PATH", help=policy_help)
    parser.add_argument(
        "--state-dir", metavar="DIR", default=default_state_dir(), help=state_dir_help
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, handler: Handler, help_text: str, *, policy: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=exit_codes_help(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        if policy:
            # Also after the command; SUPPRESS keeps a value given before it (or the default).
            sub.add_argument(
                "--policy", metavar="PATH", default=argparse.SUPPRESS, help=policy_help
            )
            sub.add_argument(
                "--state-dir", metavar="DIR", default=argparse.SUPPRESS, help=state_dir_help
            )
        return sub

    check = command(
        "check",
        cmd_check,
        "validate the policy; every error as PATH:LINE:COL (offline unless --online)",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also ask Ollama: models not installed, num_ctx above a model's trained context",
    )
    once = command(
        "once",
        cmd_once,
        "run reconcile passes until nothing is left to do (at most "
        f"{MAX_SETTLE_PASSES}), print what was done and why",
    )
    _instance_option(once)
    status = command("status", cmd_status, "show each policy model, GPU memory and Ollama")
    _instance_option(status)
    status.add_argument(
        "--json",
        action="store_true",
        help='machine-readable output; with several instances {"instances": [one object '
        'per instance, each with its "instance" and "windows"], "daemon": {...}}',
    )
    command("schema", cmd_schema, "print the policy's JSON Schema (for editors)", policy=False)
    bench = command(
        "bench",
        cmd_bench,
        "time cold and warm first tokens of each policy model against Ollama, then put "
        "each model back in its policy state",
    )
    bench.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="bench this model (repeatable; default: every model of the policy); on each "
        "instance that keeps it, or on each instance when none does",
    )
    bench.add_argument(
        "--runs", type=_at_least_one, default=5, help="warm requests per model (default 5)"
    )
    bench.add_argument(
        "--tokens",
        type=_at_least_one,
        default=32,
        help="tokens each warm request may generate, for tokens/s (default 32)",
    )
    bench.add_argument(
        "--force",
        action="store_true",
        help="also unload models that other clients seem to be using",
    )
    bench.add_argument(
        "--json",
        action="store_true",
        help='machine-readable output; with several instances {"instances": [one object '
        'per instance, each with its "instance"]}',
    )
    _instance_option(bench)
    run = command("run", cmd_run, "the daemon: keep the policy's models warm (under systemd)")
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="auto: journal under journald (JOURNAL_STREAM), else console",
    )
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default: info")
    gateway = command(
        "gateway",
        cmd_gateway,
        "the gateway's own process: the policy's gateway in front of Ollama (under systemd: "
        "sentinel-keeper-gateway.service); serves on, unchanged, when the keeper or the "
        "policy is broken",
    )
    gateway.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="auto: journal under journald (JOURNAL_STREAM), else console",
    )
    gateway.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default: info")
    override = command(
        "apply-override",
        cmd_apply_override,
        "write the OLLAMA_KEEP_ALIVE drop-in of Ollama's unit from the policy (needs root)",
    )
    where = override.add_mutually_exclusive_group()
    where.add_argument(
        "--dropin-dir",
        metavar="DIR",
        type=Path,
        help="directory of the drop-in (default: /etc/systemd/system/<ollama.unit>.d); "
        "with several instances, only with one --instance",
    )
    where.add_argument(
        "--unit-dir",
        metavar="DIR",
        type=Path,
        help="write each unit's drop-in to DIR/<unit>.d instead of /etc/systemd/system/<unit>.d",
    )
    _instance_option(override)
    override.add_argument(
        "--no-reload", action="store_true", help="write the file, but do not call systemctl"
    )
    override.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    override.add_argument(
        "--remove", action="store_true", help="delete sentinel-keeper's drop-in and reload"
    )
    return parser


def main(argv: Sequence[str] | None = None, *, timings: Timings | None = None) -> int:
    """The command line. ``timings``: the daemon's clock (tests and benchmarks run it at
    accelerated time with ``Timings().scaled(k)``); the shipped defaults otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.timings = timings
    code = _handle(args)
    _flush_stdout()  # what is left in the buffer, before the exit: a closed pipe keeps the code
    return code


def _handle(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        return handler(args)
    except PolicyError as exc:
        _err(str(exc))
        count = len(exc.diagnostics)
        _err(f"{exc.path}: {count} error{'s' if count != 1 else ''}")
        return EXIT_CONFIG
    except OllamaUnreachable as exc:
        policy = getattr(args, "loaded_policy", None)
        if policy is None:
            _err(f"sentinel-keeper: {exc}")
            return EXIT_UNAVAILABLE
        return _unreachable(policy, str(exc))
    except OllamaError as exc:
        _err(f"sentinel-keeper: {exc}")
        return EXIT_UNAVAILABLE
    except SentinelError as exc:
        _err(f"sentinel-keeper: {exc}")
        return EXIT_SOFTWARE
    except _UsageError as exc:
        _err(f"sentinel-keeper: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # written past _out (a library's print): the command's own code is lost with it
        _stdout_gone()
        return EXIT_SOFTWARE
