"""The command line. The only module that prints user errors or chooses an exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from sentinel_keeper import __version__, context
from sentinel_keeper.bench import bench_json, bench_table, run_bench
from sentinel_keeper.daemon.service import run_daemon
from sentinel_keeper.errors import (
    MetricsError,
    OllamaError,
    OllamaUnreachable,
    OverrideError,
    PolicyError,
    SentinelError,
)
from sentinel_keeper.gpu import GpuProbe
from sentinel_keeper.logs import (
    LOG_FORMATS,
    LOG_LEVELS,
    configure_logging,
    daemon_logger,
    under_journal,
)
from sentinel_keeper.observation import GpuSnapshot
from sentinel_keeper.override.apply import NoReload, OverrideReport, apply_override
from sentinel_keeper.plan import FindingKind
from sentinel_keeper.policy import DEFAULT_POLICY_PATH, Policy, json_schema
from sentinel_keeper.policy.loading import load_policy
from sentinel_keeper.policy.risks import file_risks
from sentinel_keeper.reconcile import MAX_SETTLE_PASSES
from sentinel_keeper.report import (
    DaemonView,
    daemon_json,
    daemon_lines,
    extras_without_reason,
    gpu_summary,
    outcome_line,
    pinned_health,
    status_json,
    status_line,
    status_table,
    unreachable_json,
    window_lines,
    windows_json,
)
from sentinel_keeper.runtime import make_client, open_reconciler
from sentinel_keeper.state import default_state_dir
from sentinel_keeper.timings import Timings
from sentinel_keeper.windows import in_force, zone_of

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
        "Ollama is unreachable (check: only with --online)",
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


def _unreachable_hint(policy: Policy) -> str:
    """What to look at when Ollama does not answer: the policy key, its value, the unit."""
    where = (
        f"set in {policy.source}"
        if "url" in policy.ollama.model_fields_set
        else f"the default; {policy.source} does not set it"
    )
    return (
        f"hint: ollama.url is {policy.ollama.url} ({where}); is Ollama running and "
        f"listening there? try `systemctl status {policy.ollama.unit}`"
    )


def _unreachable(policy: Policy, error: str) -> int:
    _err(f"sentinel-keeper: {error}")
    _err(_unreachable_hint(policy))
    return EXIT_UNAVAILABLE


def _gpu_notes(policy: Policy, gpu: GpuSnapshot, *, said: bool) -> None:
    """Without NVML, once per command: that GPU memory is unknown (unless ``said``: the
    command's header line says it already), and that extras then need vram.budget."""
    if gpu.known:
        return
    if not said:
        _out(f"{'note':<9} {gpu_summary(gpu)}")
    if policy.extras and policy.vram.budget is None:
        _out(
            f"{'note':<9} extras are not loaded here: without GPU memory figures they "
            "need vram.budget (the memory the models may use, e.g. 3GiB)"
        )


def _out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout)


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
    url = policy.ollama.url
    if not policy.models:
        _err(
            f"warning: {policy.source}: models: is empty: there is nothing to keep warm "
            "(add `- name: MODEL` entries)",
            _WARNING,
        )
    _context_notes(policy, _gpu_total(policy))
    version, problems = _online_problems(policy) if args.online else ("", [])
    for problem in problems:
        _err(f"{policy.source}: {problem}")
    if problems:
        count = len(problems)
        _err(f"{policy.source}: {count} problem{'s' if count != 1 else ''} with ollama at {url}")
        return EXIT_NOT_INSTALLED
    online = f"ollama {version} at {url}" if args.online else f"ollama at {url}"
    _out(f"{policy.source}: ok ({pinned} pinned, {extras} extras; {online})")
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
        _err(f"warning: {policy.source}: ollama.{problem}", _WARNING)
    for mismatch in context.mismatches(policy, total_vram, trained):
        _err(f"warning: {policy.source}: {context.advice(mismatch)}", _WARNING)


def _online_problems(policy: Policy) -> tuple[str, list[str]]:
    """What Ollama says against the policy: models not installed, num_ctx values above a
    model's trained context. Raises OllamaUnreachable."""
    problems: list[str] = []
    with make_client(policy) as client:
        version = client.version()
        installed = {m.name for m in client.tags()}
        for index, model in enumerate(policy.models):
            where = f"models[{index}] {model.name}"
            if model.name not in installed:
                if model.pull:
                    _out(f"{'note':<9} {model.name} is not installed; pull: true pulls it")
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
    with open_reconciler(policy, args.state_dir) as reconciler:
        reports = reconciler.settle()
    report = reports[-1]
    observation = reports[0].observation
    if observation is None:
        return _unreachable(policy, str(report.error))
    version, gpu = observation.ollama_version, gpu_summary(observation.gpu)
    _out(f"ollama {version} at {policy.ollama.url}; {gpu}")
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


def _daemon_view(policy: Policy) -> DaemonView:
    """The running daemon's lifetime figures, read from its metrics endpoint."""
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
    return DaemonView(address.url, figures)


def cmd_status(args: argparse.Namespace) -> int:
    policy = _load(args)
    try:
        with open_reconciler(policy, None) as reconciler:
            observation = reconciler.observe()
    except OllamaUnreachable as exc:
        if args.json:
            data = unreachable_json(policy, str(exc), _unreachable_hint(policy))
            data["daemon"] = daemon_json(_daemon_view(policy))
            _out(json.dumps(data, indent=2))
        return _unreachable(policy, str(exc))
    # a pinned model outside its time windows is not expected to be resident now
    active, _ = in_force(policy.models, zone_of(policy.timezone), observation.at)
    now_in_force = policy.model_copy(update={"models": active})
    missing, absent = pinned_health(now_in_force, observation)
    code = EXIT_NOT_INSTALLED if missing else EXIT_PINNED_NOT_RESIDENT if absent else EXIT_OK
    daemon = _daemon_view(policy)
    if args.json:
        data = status_json(policy, observation, in_force=now_in_force)
        data["daemon"] = daemon_json(daemon)
        data["windows"] = windows_json(policy, observation.at)
        _out(json.dumps(data, indent=2))
        return code
    _out(f"ollama {observation.ollama_version} at {policy.ollama.url}")
    _out(gpu_summary(observation.gpu))
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
    for name in missing:
        _err(f"sentinel-keeper: pinned {name} is not installed (run `ollama pull {name}`)")
    if absent:
        _err(f"sentinel-keeper: pinned, not resident: {', '.join(absent)}")
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    policy = _load(args)
    if not args.model and not policy.models:
        _err(
            f"sentinel-keeper: nothing to bench: {policy.source} names no models "
            "and no --model was given"
        )
        return EXIT_USAGE

    def progress(name: str) -> None:
        if sys.stderr.isatty():
            _err(f"bench: {name} ...")

    with make_client(policy) as client:
        report = run_bench(
            policy,
            client,
            args.model,
            runs=args.runs,
            tokens=args.tokens,
            force=args.force,
            on_model=progress,
        )
    if args.json:
        _out(json.dumps(bench_json(report), indent=2))
    else:
        for line in bench_table(report):
            _out(line)
    return EXIT_OK if report.ok else EXIT_BENCH_INCOMPLETE


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _print_override(report: OverrideReport) -> None:
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
        _out(f"{unit} restarts in the background if it runs; the models are warmed again after")
    elif report.no_reload is NoReload.ASKED:
        _out(f"--no-reload: run `systemctl daemon-reload` and restart {unit} for this to apply")
    elif report.no_reload_reason is not None:
        _out(f"{report.no_reload_reason}; the change applies when {unit} next starts")
    elif report.systemd_error is None:
        _out(f"the change applies at {unit}'s next restart (ollama.restart: never)")


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


def cmd_apply_override(args: argparse.Namespace) -> int:
    policy = _load(args)
    # --remove only deletes sentinel-keeper's own file: allowed, so that uninstalling works
    if _file_risks(policy.source) and not (args.dry_run or args.remove):
        _err(f"{policy.source}: refusing to write Ollama's drop-in as root from it")
        return EXIT_CONFIG
    ollama = policy.ollama
    try:
        problem = context.alignment(policy).problem
        if problem is not None and not args.remove:
            _err(f"warning: {policy.source}: ollama.{problem}", _WARNING)
        report = apply_override(
            policy_path=policy.source,
            unit=ollama.unit,
            keep_alive=ollama.keep_alive,
            environment=context.environment(policy),
            restart=ollama.restart,
            dropin_dir=args.dropin_dir,
            reload=not args.no_reload,
            dry_run=args.dry_run,
            remove=args.remove,
        )
    except OverrideError as exc:
        _err(f"sentinel-keeper: {exc}")
        return EXIT_CANTCREAT
    _print_override(report)
    if report.systemd_error is not None:
        done = "removed" if report.status == "removed" else "wrote"
        _err(f"sentinel-keeper: {done} {report.path}, but {report.systemd_error}")
        return EXIT_UNAVAILABLE
    return EXIT_OK


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
    command(
        "once",
        cmd_once,
        "run reconcile passes until nothing is left to do (at most "
        f"{MAX_SETTLE_PASSES}), print what was done and why",
    )
    status = command("status", cmd_status, "show each policy model, GPU memory and Ollama")
    status.add_argument("--json", action="store_true", help="machine-readable output")
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
        help="bench this model (repeatable; default: every model of the policy)",
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
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    run = command("run", cmd_run, "the daemon: keep the policy's models warm (under systemd)")
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="auto: journal under journald (JOURNAL_STREAM), else console",
    )
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default: info")
    override = command(
        "apply-override",
        cmd_apply_override,
        "write the OLLAMA_KEEP_ALIVE drop-in of Ollama's unit from the policy (needs root)",
    )
    override.add_argument(
        "--dropin-dir",
        metavar="DIR",
        type=Path,
        help="directory of the drop-in (default: /etc/systemd/system/<ollama.unit>.d)",
    )
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
