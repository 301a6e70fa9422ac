"""Webhook notifications (``backfill.notify``) and the metrics' labels (``backfill.metrics``,
``backfill.exporter``): what is checked, what is sent, what is never shown."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from backfill.errors import InputError
from backfill.exporter import WAIT_REASONS, wait_reason
from backfill.metrics import outcome_of
from backfill.notify import WebhookError, check_notify, message, post, redact, target
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
        "run x was deleted in Airflow": "other",
    }
    assert {r: wait_reason(r) for r in cases} == cases
    assert {label for _, label in WAIT_REASONS} | {"other"} == set(cases.values())
