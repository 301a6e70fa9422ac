"""Webhook notifications (``backfill.notify``) and the metrics' labels (``backfill.metrics``,
``backfill.exporter``): what is checked, what is sent, what is never shown."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace
from typing import Any, cast

import pytest

from backfill.errors import InputError
from backfill.exporter import WAIT_REASONS, RecordCollector, wait_reason
from backfill.metrics import outcome_of
from backfill.model import BackfillParams
from backfill.notify import WebhookError, check_notify, message, post, redact, redacted, target
from backfill.record import Record
from backfill.runner import WAIT_OUTAGE
from backfill.settings import Settings

SECRET = "https://hooks.example.com/services/T000/B000/s3cr3t-token"


def test_notify_accepts_a_url_or_an_object_and_refuses_the_rest_without_showing_the_url() -> None:
    assert check_notify(None) is None
    assert check_notify(SECRET) == {"url": SECRET, "failed_windows": False}
    assert check_notify({"url": SECRET, "failed_windows": True}) == {"url": SECRET, "failed_windows": True}
    for bad, says in [
        ("ftp://hooks.example.com/s3cr3t-token", "expected an http:// or https:// URL"),
        ({"url": SECRET, "channel": "x"}, "unknown key 'channel'"),
        ({"url": SECRET, "failed_windows": "yes"}, "failed_windows must be true or false"),
        (42, "expected a webhook URL"),
    ]:
        with pytest.raises(InputError, match="notify: ") as err:
            check_notify(bad)
        assert says in str(err.value) and "s3cr3t" not in str(err.value)
    with pytest.raises(InputError, match="BACKFILL_NOTIFY_URL") as err:
        Settings(notify_url="mailto://x/s3cr3t")
    assert "s3cr3t" not in str(err.value) and "s3cr3t" not in repr(Settings(notify_url=SECRET))


def test_redact_keeps_scheme_and_host_only() -> None:
    assert redact(SECRET) == "https://hooks.example.com/..."
    assert redact("http://user:pw@hook.local:8099/x?token=1") == "http://hook.local:8099/..."


def test_the_backfill_s_own_webhook_wins_over_the_global_one() -> None:
    assert target(None, "") is None
    assert target(None, SECRET) is not None and not target(None, SECRET).failed_windows  # type: ignore[union-attr]
    own = target({"url": "http://a/1", "failed_windows": True}, SECRET)
    assert own is not None and own.url == "http://a/1" and own.failed_windows


def test_messages_are_slack_text_with_the_facts_beside() -> None:
    body = message("backfill_ended", "bf-1", state="failed", counts={"success": 3, "failed": 1, "not_run": 0})
    assert body["text"] == "Backfill bf-1 ended failed: 3 success, 1 failed"
    assert body["event"] == "backfill_ended" and body["counts"]["failed"] == 1
    body = message("window_failed", "bf-1", state="failed", dag="etl", window="[a, b)", reason="run x failed")
    assert body["text"] == "Backfill bf-1: DAG etl window [a, b) failed: run x failed" and body["dag"] == "etl"


class _Hook(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(self.answers.pop(0) if self.answers else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.answers, _Hook.received = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/services/s3cr3t"
    server.shutdown()
    server.server_close()


def test_post_delivers_and_says_whether_a_failure_is_worth_retrying(hook: str) -> None:
    assert post(hook, {"text": "hi"}) == 200 and _Hook.received == [{"text": "hi"}]
    _Hook.answers = [503, 404]
    for retry in (True, False):
        with pytest.raises(WebhookError) as err:
            post(hook, {"text": "hi"})
        assert err.value.retry is retry and "s3cr3t" not in str(err.value)
    with pytest.raises(WebhookError) as err:
        post("http://127.0.0.1:9/s3cr3t", {"text": "hi"}, timeout=2)
    assert err.value.retry and "s3cr3t" not in str(err.value)


def test_outcomes_and_wait_reasons_are_bounded_labels() -> None:
    assert [outcome_of(s) for s in (200, 404, 409, 500, 429, None)] == [
        "ok", "client_error", "client_error", "server_error", "server_error", "unreachable",
    ]  # fmt: skip
    cases = {
        "DAG busy: run manual__1 is running": "dag_busy",
        "DAG locked by backfill bf-2 (window starting 2024-01-01)": "lock",
        "max_parallel_dags=2 reached, waiting for a turn in line": "max_parallel_dags",
        "global limit reached (4 runs in flight across all backfills), waiting for a turn in line": "global_limit",
        WAIT_OUTAGE: "airflow_unavailable",
        "DAG etl is paused in Airflow: run x stays queued until it is unpaused": "dag_paused",
        "quiet hours 08:00-20:00 (UTC): may start at 2024-01-01T20:00+00:00": "quiet_hours",
        "run bf__x failed (attempt 1 of 3): retrying at 2024-01-01T10:01:00+00:00": "retry",
        "waiting for staging [2024-01-08T00:00:00+00:00, 2024-01-15T00:00:00+00:00)": "upstream",
        "global limit reached (1 runs in flight across all backfills), waiting for a turn in line": "global_limit",
        "max_starts_per_hour=2 reached: may start at 2024-01-01T11:00:00+00:00": "max_starts_per_hour",
        "run x was deleted in Airflow": "other",
    }
    assert {r: wait_reason(r) for r in cases} == cases
    assert {label for _, label in WAIT_REASONS} | {"other"} == set(cases.values())


class _Events:
    """The part of a Record the exporter's event reading uses: one backfill's event stream."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.stream = [(f"{i + 1}-0", e) for i, e in enumerate(events)]
        self.clock = SimpleNamespace(now=lambda: 0.0)

    def forget(self, *, keep: set[str]) -> None:
        pass

    def events(self, bf: str, *, after: str = "-", count: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        start = 0 if after == "-" else int(after.split("-")[0])
        return self.stream[start : start + (count or len(self.stream))]


def test_a_wait_counts_once_however_often_its_reason_changes_and_two_scrapes_never_recount() -> None:
    def ev(idx: int, state: str, reason: str | None = None) -> dict[str, Any]:
        return {"kind": "window", "dag": "d", "idx": idx, "state": state, "reason": reason}

    events = _Events([
        ev(0, "waiting", "DAG busy: run manual__1 is running"),
        ev(0, "waiting", "DAG busy: run manual__2 is running"),
        ev(0, "waiting", "DAG locked by backfill bf-2 (window starting 2024-01-01)"),
        ev(0, "success"),
        ev(1, "waiting", "DAG locked by backfill bf-2 (window starting 2024-01-02)"),
    ])  # fmt: skip
    collector = RecordCollector(cast(Record, events))
    params = cast(BackfillParams, SimpleNamespace())
    collector._read_events("bf", params, created=1.0, finished=None)
    collector._read_events("bf", params, created=1.0, finished=None)  # a second scrape: nothing new
    assert collector._waits == {"dag_busy": 1, "lock": 1}
    events.stream.append(("6-0", ev(1, "waiting", "DAG busy: run manual__3 is running")))
    threads = [threading.Thread(target=collector.collect) for _ in range(4)]
    collector.record.recent = lambda limit: []  # type: ignore[attr-defined]
    collector._read_events("bf", params, created=1.0, finished=None)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert collector._waits == {"dag_busy": 1, "lock": 1}


def test_submit_shows_a_webhook_url_redacted_in_the_message_flower_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Task

    from workers.tasks import submit_backfill

    sent: dict[str, Any] = {}
    monkeypatch.setattr(Task, "apply_async", lambda self, args=None, kwargs=None, **options: sent.update(options))
    submit_backfill.apply_async(kwargs={"dags": ["d"], "notify": "https://hooks.slack.com/services/T0/B0/secret"})
    assert sent["kwargsrepr"] == repr({"dags": ["d"], "notify": "https://hooks.slack.com/..."})
    assert "secret" not in sent["kwargsrepr"]
    sent.clear()
    submit_backfill.apply_async(
        kwargs={"dags": ["d"], "notify": {"url": "http://h:81/x/secret", "failed_windows": True}}
    )
    assert "secret" not in sent["kwargsrepr"] and "http://h:81/..." in sent["kwargsrepr"]
    sent.clear()
    submit_backfill.apply_async(kwargs={"dags": ["d"]})
    assert "kwargsrepr" not in sent
    assert redacted(None) is None and redacted(3) == 3
