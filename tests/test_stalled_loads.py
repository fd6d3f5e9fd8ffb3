"""Ollama's scheduler not loading (ollama issue 17408): loads sent by the keeper get no answer
within load_timeout while /api/ps keeps answering. The keeper says so once, at err, in STATUS
and in the metrics, queues no more loads behind the stuck one, and counts nothing as resident
that it has not seen loaded; when a load returns again, it says that too."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime

from sentinel_keeper.act.reconcile import PassReport, Reconciler
from sentinel_keeper.metrics.counts import Counts, count_pass
from sentinel_keeper.metrics.families import MetricsView, families
from sentinel_keeper.observe.ollama import OllamaClient
from sentinel_keeper.policy.loading import parse_policy
from sentinel_keeper.report.events import History, advance, pass_events
from sentinel_keeper.report.render import status_line
from tests.support.ollama_double import FakeModel, GiB, ManualClock, OllamaDouble

A, B = "a:1b", "b:1b"


def test_a_stuck_scheduler_is_reported_once_and_not_fed_more_loads() -> None:
    clock = ManualClock(1_800_000_000.0)
    models = [FakeModel(A, size=1 * GiB), FakeModel(B, size=1 * GiB)]
    with OllamaDouble(models, clock=clock, vram_total=24 * GiB) as double:
        double.hang_limit = 5.0  # a hung request is dropped after this (real seconds)
        policy = parse_policy(
            f"ollama: {{url: '{double.url}', load_timeout: 1s}}\n"
            f"models:\n  - name: {A}\n  - name: {B}\n",
            "p.yaml",
        )
        client = OllamaClient(double.url, timeout=2, load_timeout=1)
        reconciler = Reconciler(
            policy, client, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        history, counts, events, reports = History(), Counts(), [], []

        def step(seconds: float) -> PassReport:
            nonlocal history, counts
            double.advance(seconds)
            report = reconciler.run_pass()
            events.extend(pass_events(history, report))
            counts = count_pass(counts, history, report, policy, mono=double.now())
            history = advance(history, report)
            reports.append(report)
            return report

        double.hang_scheduler()
        first = step(15)
        generate_calls = len(double.requests_to("/api/generate"))
        assert generate_calls == 1  # the second load was not queued behind the first
        assert first.stall is not None and first.stall.model == A
        skipped = [o for o in first.outcomes if o.skipped]
        assert [o.action.model for o in skipped] == [B]
        assert "not queueing more loads behind it" in (skipped[0].error or "")
        assert first.reachable and first.resident((A, B)) == ()
        assert status_line(first).startswith(
            f"ollama is not loading: a load of {A} did not return within load_timeout"
        )
        # the passes before the retry time send nothing
        quiet = step(5)
        assert len(double.requests_to("/api/generate")) == generate_calls
        assert all(o.skipped for o in quiet.outcomes)
        assert "next try in" in (quiet.outcomes[0].error or "")
        # at the retry time one load is tried, and times out again: the stall goes on
        again = step(15)
        assert len(double.requests_to("/api/generate")) == generate_calls + 1
        assert again.stall is not None and again.stall.count == 2
        assert again.stall.since == first.stall.since
        view = MetricsView.single(policy, counts, again, version="0", python="3", started_unix=0.0)
        stalled = next(f for f in families(view, mono=0.0) if f.spec.name.endswith("loads_stalled"))
        assert stalled.samples == ((("default",), 1.0),)
        # Ollama restarted (the way out): loads return, and it is said
        double.hang_scheduler(False)
        double.restart()
        back = step(60)
        assert back.stall is None
        assert set(back.resident((A, B))) == {A, B}
        client.close()
    said = [e for e in events if e.event in ("ollama_not_loading", "ollama_loading_again")]
    assert [(e.event, e.level) for e in said] == [
        ("ollama_not_loading", "error"),
        ("ollama_loading_again", "info"),
    ]
    assert said[0].fields["model"] == A
    assert "Ollama's scheduler is stuck" in str(said[0].fields["why"])


def test_a_stalled_model_that_shows_up_after_the_retry_time_ends_the_stall() -> None:
    """Its load finished after all (a slow load, not a hang): listed at the retry time, it
    is resident and nothing is loaded again."""
    clock = ManualClock(1_800_000_000.0)
    with OllamaDouble([FakeModel(A, size=1 * GiB)], clock=clock, vram_total=24 * GiB) as double:
        double.hang_limit = 3.0
        policy = parse_policy(f"ollama: {{url: '{double.url}'}}\nmodels:\n  - name: {A}\n", "p")
        client = OllamaClient(double.url, timeout=2, load_timeout=1)
        reconciler = Reconciler(
            policy, client, clock=lambda: datetime.fromtimestamp(double.now(), UTC)
        )
        double.hang_scheduler()
        double.advance(15)
        assert reconciler.run_pass().stall is not None
        double.hang_scheduler(False)
        _load(double.url)  # the load completes (another client's request, here)
        double.advance(5)
        early = reconciler.run_pass()
        assert early.stall is not None and early.resident((A,)) == ()  # before the retry time
        double.advance(30)
        late = reconciler.run_pass()
        client.close()
    assert late.stall is None
    assert late.resident((A,)) == (A,)
    assert not [o for o in late.outcomes if o.attempted]


def _load(url: str) -> None:
    body = json.dumps({"model": A, "keep_alive": -1}).encode()
    request = urllib.request.Request(url + "/api/generate", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
