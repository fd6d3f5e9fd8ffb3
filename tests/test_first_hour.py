"""What a newcomer meets in the first hour: the README's claims, the first messages, the
status lines. Each was seen wrong once; each is checked here against the text or the code
that produces it."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import structlog

from sentinel_keeper.errors import PolicyError
from sentinel_keeper.metrics.readback import DaemonFigures, GatewayHour
from sentinel_keeper.metrics.status import DaemonView, daemon_lines
from sentinel_keeper.ollama_env.variables import name_problem
from sentinel_keeper.policy.loading import load_policy, parse_policy
from sentinel_keeper.report.logs import configure_logging
from sentinel_keeper.report.render import window_lines
from tests.support.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SECURITY = (ROOT / "docs" / "security.md").read_text()


def section(text: str, title: str) -> str:
    """The text of the section ``title`` (a ``## `` heading), up to the next one."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_docs_do_not_call_the_metrics_endpoint_the_only_listening_socket() -> None:
    metrics = section(README, "Metrics")
    assert "It is the only socket the daemon listens on." not in metrics
    assert "gateway.listen" in metrics
    assert "One listening socket" not in SECURITY
    assert "the gateway, when one is set, listens\nin its own process" in SECURITY


def test_the_metrics_endpoints_root_page_is_documented() -> None:
    metrics = section(README, "Metrics")
    assert "`GET /` answers 200 with a one-line page" in metrics


def test_an_unknown_ollama_variable_is_not_mistaken_for_a_close_one() -> None:
    unknown = name_problem("OLLAMA_FOO")
    assert unknown is not None and "did you mean" not in unknown
    typo = name_problem("OLLAMA_HOTS")
    assert typo is not None and typo.endswith("did you mean OLLAMA_HOST?")
    assert (name_problem("OLLAMA_KEEPALIVE") or "").endswith("did you mean OLLAMA_KEEP_ALIVE?")


def test_status_json_carries_the_hint_without_its_prefix(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"ollama: {{url: 'http://127.0.0.1:{free_port()}'}}\nmetrics: {{listen: null}}\n"
        "models:\n  - name: llama3.2:1b\n"
    )
    run = [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), "status"]
    data = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert data.returncode == 69, data.stderr
    hint = json.loads(data.stdout)["hint"]
    assert hint.startswith("ollama.url is http://127.0.0.1:"), hint
    assert "hint: ollama.url is" in data.stderr  # on the terminal it says what it is


def test_one_request_is_not_one_requests() -> None:
    policy = parse_policy("models:\n  - name: a:1b\n", "p.yaml")
    figures = DaemonFigures(
        version="0",
        started=0.0,
        passes={"default": 1},
        instances={},
        gateway={"default": {"a:1b": GatewayHour(1, 0), "b:1b": GatewayHour(2, 1)}},
    )
    lines = daemon_lines(policy, DaemonView("x", figures), datetime.now(UTC))
    assert any(re.search(r"a:1b +1 request, 0 cold", line) for line in lines), lines
    assert any(re.search(r"b:1b +2 requests, 1 cold", line) for line in lines), lines


def test_console_logs_quote_a_policy_error_without_backslashes(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("models:\n  - {name: a, tier: pined}\n")
    try:
        load_policy(str(bad))
    except PolicyError as exc:
        error = str(exc.diagnostics[0])
    out = io.StringIO()
    try:
        configure_logging("console", stream=out)
        structlog.get_logger().error("policy_rejected", error=error)
    finally:
        structlog.reset_defaults()
    line = out.getvalue()
    assert 'must be one of "pinned" or "extra", got "pined"' in line, line
    assert "\\" not in line, line


def test_the_window_line_says_when_the_window_opens_and_when_it_is_warmed() -> None:
    policy = parse_policy(
        "timezone: UTC\nmodels:\n  - name: a:1b\n    windows: ['01:41-01:43']\n"
        "    warm_before: 1m\n",
        "p.yaml",
    )
    (line,) = window_lines(policy, datetime(2026, 12, 7, 1, 0, tzinfo=UTC))
    assert line == (
        "window    a:1b: outside its windows until Mon 2026-12-07 01:41 UTC, loaded from "
        "Mon 2026-12-07 01:40 UTC (warm_before 1m) (01:41-01:43)"
    )


def test_the_quick_start_says_an_extra_needs_nvml_or_a_budget() -> None:
    quick = section(README, "Quick start")
    first_policy = quick[: quick.index("2. **Find the num_ctx")]
    assert "tier: extra" in first_policy
    assert "vram: {budget: 3GiB}" in first_policy and "NVML" in first_policy


def test_check_counts_one_extra_as_one_extra(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("models:\n  - name: a:1b\n  - {name: b:1b, tier: extra}\n")
    run = [sys.executable, "-m", "sentinel_keeper", "--policy", str(policy), "check"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{policy}: ok (1 pinned, 1 extra; ollama at "), done.stdout
