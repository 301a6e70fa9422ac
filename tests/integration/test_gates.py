"""Start gates against the real Airflow: quiet hours (no run starts in them) and the hourly
start cap (a window over it waits, with the time it may start). Assertions read Airflow's run
records and the backfill's record in Redis."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from tests.integration.helpers import runs, submit, wait_done, wait_for

pytestmark = pytest.mark.integration
CRON = "user_cron_gates"
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAYS = [TODAY - timedelta(days=n) for n in (3, 2, 1)]  # its scheduler's history (user_schedules.START)


def test_no_run_starts_in_quiet_hours_and_the_windows_start_when_they_end(orch):
    # Quiet hours that end on the next minute at least 25 s away (from the Python task).
    now = datetime.now(UTC)
    end = (now + timedelta(seconds=25 + 60)).replace(second=0, microsecond=0)
    begin = (now - timedelta(minutes=1)).replace(second=0, microsecond=0)
    quiet = f"{begin:%H:%M}-{end:%H:%M}"
    # Alongside, as users run it: a cron DAG (Airflow 3's default timetable, max_active_runs=2)
    # whose history its own scheduler made; re-running that history (each clear is a start)
    # under the same quiet hours and one start an hour.
    history = wait_for(
        lambda: (
            (rs := orch.airflow.runs_between(CRON, DAYS[0], DAYS[-1]))
            and len(rs) == 3
            and all(r.state in ("success", "failed") for r in rs)
            and rs
        ),
        180,
        "the cron DAG's history",
    )
    cron = submit(orch, dags=[CRON], start=f"{DAYS[0]:%Y-%m-%d}", end=f"{DAYS[-1]:%Y-%m-%d}", reprocess="completed",
                  quiet_hours=quiet, max_starts_per_hour=1)["backfill_id"]  # fmt: skip
    bf = submit(orch, dags=["etl_users", "etl_orders"], start="2011-03-01", end="2011-03-02", conf={"sleep": 0.5},
                quiet_hours=quiet)["backfill_id"]  # fmt: skip

    def waiting() -> bool:
        dags = [orch.record.dag(bf, d) for d in ("etl_users", "etl_orders")]
        return all(d.current_state == "waiting" and (d.reason or "").startswith("quiet hours") for d in dags)

    wait_for(waiting, 30, "both DAGs waiting for the quiet hours' end")
    reason = orch.record.dag(bf, "etl_users").reason
    assert reason == f"quiet hours {quiet} (UTC): may start at {end.isoformat(timespec='minutes')}"
    assert datetime.now(UTC) < end and runs(orch.airflow, "etl_users", bf) == []
    assert wait_done(orch.record, bf, timeout=240)["state"] == "succeeded"
    for dag in ("etl_users", "etl_orders"):
        ran = runs(orch.airflow, dag, bf)
        assert len(ran) == 2 and all(r.state == "success" for r in ran)
        # Airflow's own record: queued (triggered) and started only once the quiet hours ended.
        assert all(r.queued_at is not None and r.queued_at >= end for r in ran), [r.queued_at for r in ran]
        assert all(r.start_date is not None and r.start_date >= end for r in ran)
    # The cron DAG: its first window's run re-ran after the quiet hours (a new start date in
    # Airflow), the next one is held by the hourly cap, the last untouched.
    wait_for(lambda: (orch.record.dag(cron, CRON).reason or "").startswith("max_starts_per_hour=1 reached"), 120,
             "the cron DAG's second window held by the cap")  # fmt: skip
    now = {r.run_id: r for r in orch.airflow.runs_between(CRON, DAYS[0], DAYS[-1])}
    first, second, third = (now[r.run_id] for r in history)
    assert first.start_date >= end and first.state == "success"
    assert second.start_date == history[1].start_date and third.start_date == history[2].start_date
    assert len(now) == 3  # re-runs of its own scheduled runs: no new run at those dates
    out = CliRunner().invoke(cli, ["cancel", cron])
    assert out.exit_code == 0, out.output
    assert wait_done(orch.record, cron)["state"] == "cancelled"


def test_the_hourly_cap_holds_windows_back_and_says_until_when(orch):
    # From the CLI: two DAGs, two windows each, two starts an hour.
    result = CliRunner().invoke(cli, [
        "submit", "etl_users", "etl_orders", "--start", "2011-04-01", "--end", "2011-04-02",
        "--conf", json.dumps({"sleep": 0.5}), "--max-starts-per-hour", "2", "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    bf = json.loads(result.output)["backfill_id"]
    try:

        def held() -> bool:
            dags = [orch.record.dag(bf, d) for d in ("etl_users", "etl_orders")]
            return all(d.done == 1 and (d.reason or "").startswith("max_starts_per_hour=2 reached") for d in dags)

        wait_for(held, 120, "the second window of both DAGs held back by the cap")
        first = [r for d in ("etl_users", "etl_orders") for r in runs(orch.airflow, d, bf)]
        assert len(first) == 2 and all(r.state == "success" for r in first)  # Airflow ran exactly two
        time.sleep(3)  # and nothing more starts
        assert sum(len(runs(orch.airflow, d, bf)) for d in ("etl_users", "etl_orders")) == 2
        # The time given is an hour after the first start (Redis's clock, this machine's).
        reason = orch.record.dag(bf, "etl_users").reason or ""
        may = datetime.fromisoformat(reason.rsplit("may start at ", 1)[1])
        earliest = min(r.queued_at for r in first if r.queued_at)
        assert timedelta(minutes=59) < may - earliest < timedelta(minutes=61), (may, earliest)
    finally:
        out = CliRunner().invoke(cli, ["cancel", bf])
        assert out.exit_code == 0, out.output
    assert wait_done(orch.record, bf)["state"] == "cancelled"
    assert sum(len(runs(orch.airflow, d, bf)) for d in ("etl_users", "etl_orders")) == 2
