"""Retries against the real Airflow, on a DAG shaped as users write them (two tasks, no
schedule, ``max_active_runs=3``): a failed window's run is re-run with only its failed tasks
cleared, after ``retry_delay`` doubling; ``on_failure`` applies after the last attempt.
Assertions read Airflow's run and task records, and the backfill's record in Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from tests.integration.helpers import runs, wait_done

pytestmark = pytest.mark.integration
DAG = "user_two_step"


def _tries(orch, run_id: str) -> dict[str, tuple[int, str]]:
    """Each task's try number and state, as Airflow recorded them."""
    found = orch.airflow._json("GET", "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances",
                               path_params={"dag_id": DAG, "dag_run_id": run_id})  # fmt: skip
    return {t["task_id"]: (t["try_number"], t["state"]) for t in found["task_instances"]}


def test_a_failed_window_is_retried_with_its_failed_tasks_cleared_then_on_failure_applies(orch):
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first, flaky = today - timedelta(days=3), today - timedelta(days=2)
    conf = {"fail_windows": [first.isoformat()], "fail_once_windows": [flaky.isoformat()]}
    result = CliRunner().invoke(cli, [
        "submit", DAG, "--start", f"{first:%Y-%m-%d}", "--end", f"{today - timedelta(days=1):%Y-%m-%d}",
        "--conf", json.dumps(conf), "--retries", "2", "--retry-delay", "2", "--on-failure", "continue", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    bf = json.loads(result.output)["backfill_id"]
    assert wait_done(orch.record, bf, timeout=240)["state"] == "failed"

    ran = runs(orch.airflow, DAG, bf)
    assert [r.logical_date for r in ran] == [first, flaky, today - timedelta(days=1)]  # one run per window
    stuck, retried, clean = ran
    assert [r.state for r in ran] == ["failed", "success", "success"]
    # Only the failed task was re-run: extract ran once, load once per attempt.
    assert _tries(orch, stuck.run_id) == {"extract": (1, "success"), "load": (3, "failed")}
    assert _tries(orch, retried.run_id) == {"extract": (1, "success"), "load": (2, "success")}
    assert _tries(orch, clean.run_id) == {"extract": (1, "success"), "load": (1, "success")}

    windows = orch.record.windows(bf, DAG)
    attempts = [windows[i].attempt for i in sorted(windows)]
    assert attempts == [3, 2, 1]
    assert windows[0].reason == f"Airflow run {stuck.run_id} failed (attempt 3 of 3)"
    # The waits doubled: the retry of attempt k began retry_delay * 2**(k-1) after it failed.
    events = [e for _, e in orch.record.events(bf) if e.get("kind") == "window" and e["idx"] == 0]
    waits = [e for e in events if e["state"] == "waiting" and "retrying at" in (e.get("reason") or "")]
    assert [e["reason"].split(" (attempt ")[1].split(")")[0] for e in waits] == ["1 of 3", "2 of 3"]
    triggered = [e["ts"] for e in events if e["state"] == "triggered"]
    assert len(triggered) == 3
    assert triggered[1] - waits[0]["ts"] >= 2 and triggered[2] - waits[1]["ts"] >= 4

    # Serial still: each window's run (every attempt) ended before the next window's began.
    assert stuck.end_date <= retried.queued_at and retried.end_date <= clean.queued_at
    status = CliRunner().invoke(cli, ["status", bf])
    assert status.exit_code == 0, status.output
    assert "3 retries over 2 window(s)" in status.output
    assert f"run={stuck.run_id}: Airflow run {stuck.run_id} failed (attempt 3 of 3) after 3 attempts" in status.output
    report = CliRunner().invoke(cli, ["report", bf])
    assert report.exit_code == 0, report.output
    assert "attempts=3" in report.output and "attempts=2" in report.output
