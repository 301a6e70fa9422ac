"""The `backfill` CLI and the celery CLI, driven like a user would, against the real stack."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from tests.integration.helpers import runs, wait_done

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_submit_then_status(orch):
    result = CliRunner().invoke(
        cli, ["submit", "etl_users", "etl_orders", "--start", "2009-01-01", "--end", "2009-01-14", "--batch", "weekly"]
    )
    assert result.exit_code == 0, result.output
    bf = re.search(r"backfill (bf-\S+) submitted: 6 windows \(weekly\), oldest first", result.output).group(1)
    assert "etl_users: 3 windows" in result.output and f"backfill status {bf}" in result.output
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    assert len(runs(orch.airflow, "etl_orders", bf)) == 3

    status = CliRunner().invoke(cli, ["status", bf])
    assert status.exit_code == 0, status.output
    assert f"backfill {bf}  SUCCEEDED" in status.output
    assert re.search(r"etl_users\s+\[#+\]\s+3/3\s+succeeded", status.output)

    as_json = json.loads(CliRunner().invoke(cli, ["status", bf, "--json", "--events"]).output)
    assert [d["done"] for d in as_json["dags"]] == [3, 3]
    states = [e["state"] for e in as_json["events"] if e.get("dag") == "etl_users" and e["kind"] == "window"]
    assert states.count("success") == 3

    listing = CliRunner().invoke(cli, ["list"])
    assert re.search(rf"{bf}\s+succeeded\s+6/6\s+weekly\s+etl_users,etl_orders", listing.output)

    again = CliRunner().invoke(cli, ["cancel", bf])
    assert again.exit_code == 2 and f"backfill {bf}: already succeeded, nothing to cancel" in again.output


def test_status_watch_refreshes_until_the_backfill_ends(orch):
    bf = json.loads(
        CliRunner()
        .invoke(
            cli,
            ["submit", "etl_users", "--start", "2009-04-01", "--end", "2009-04-03", "--conf", '{"sleep": 1}', "--json"],
        )
        .output
    )["backfill_id"]
    watch = subprocess.run(
        [BIN / "backfill", "status", bf, "--watch", "--interval", "0.5"],
        capture_output=True, text=True, env=orch.stack.env(), timeout=180,
    )  # fmt: skip
    assert watch.returncode == 0, watch.stderr
    views = watch.stdout.count(f"backfill {bf}  ")
    assert views >= 3, watch.stdout  # refreshed while it ran
    assert watch.stdout.rstrip().splitlines()[0].endswith("RUNNING")
    last = watch.stdout[watch.stdout.rindex(f"backfill {bf}  ") :]
    assert last.startswith(f"backfill {bf}  SUCCEEDED") and orch.record.meta(bf)["state"] == "succeeded"


def test_status_wait_exits_with_the_outcome_for_scripts(orch):
    """`backfill status ID --wait`: quiet until the end, then the final view; 0 succeeded, 4 failed."""
    conf = json.dumps({"fail_windows": ["2009-05-02T00:00:00+00:00"]})
    ok = json.loads(
        CliRunner()
        .invoke(cli, ["submit", "etl_users", "--start", "2009-05-05", "--end", "2009-05-05", "--json"])
        .output
    )["backfill_id"]
    bad = json.loads(
        CliRunner()
        .invoke(cli, ["submit", "etl_orders", "--start", "2009-05-01", "--end", "2009-05-03", "--conf", conf, "--json"])
        .output
    )["backfill_id"]
    waits = {
        bf: subprocess.run(
            [BIN / "backfill", "status", bf, "--wait", "--interval", "0.5"],
            capture_output=True,
            text=True,
            env=orch.stack.env(),
            timeout=300,
        )
        for bf in (ok, bad)
    }
    assert waits[ok].returncode == 0, waits[ok].stderr
    assert waits[ok].stdout.count(f"backfill {ok}  ") == 1 and f"backfill {ok}  SUCCEEDED" in waits[ok].stdout
    assert waits[bad].returncode == 4, (waits[bad].stdout, waits[bad].stderr)
    assert f"backfill {bad}  FAILED" in waits[bad].stdout and f"backfill {bad} failed" in waits[bad].stderr
    # The exit code says what Airflow's records say: the failed window's run failed.
    assert orch.record.meta(bad)["state"] == "failed"
    assert [r.state for r in runs(orch.airflow, "etl_orders", bad)] == ["success", "failed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "nope_dag", "--start", "2009-02-01", "--end", "2009-02-02"], "dags: unknown to Airflow"),
        (["submit", "etl_users", "--start", "2009-02-03", "--end", "2009-02-01"], "start (2009-02-03) is after end"),
        (["submit", "etl_users", "--start", "2009-02-01", "--end", "soon"], "end: cannot read 'soon'"),
        (["submit", "etl_users", "--start", "2009-02-01", "--end", "2009-02-02", "--conf", "[1]"], "--conf: must be"),
        (
            ["submit", "etl_users", "--start", "2009-02-01", "--end", "2009-02-02", "--batch", "yearly"],
            "batch: unknown",
        ),
        (["status", "bf-does-not-exist"], "backfill 'bf-does-not-exist': no such backfill"),
        (["cancel", "bf-does-not-exist"], "backfill 'bf-does-not-exist': no such backfill"),
        (["resume", "bf-does-not-exist"], "backfill 'bf-does-not-exist': no such backfill"),
        (["report", "bf-does-not-exist"], "backfill 'bf-does-not-exist': no such backfill"),
        (["plan", "etl_users", "--start", "2009-02-01", "--end", "later"], "end: cannot read 'later'"),
        (["plan", "etl_users", "--start", "2009-02-01", "--end", "2009-02-02", "--max-parallel-dags", "-1"], "-1"),
        (["throttle", "--global", "-3"], "--global: expected a whole number >= 0 or 'off'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(orch, args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_console_script_and_celery_call(orch):
    env = orch.stack.env()
    out = subprocess.run([BIN / "backfill", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and "submit" in out.stdout and "status" in out.stdout

    # Every keyword of the contract, through celery call (JSON kwargs).
    far = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
    kwargs = {"dags": ["etl_orders", "etl_users"], "start": "2009-03-01", "end": "2009-03-02", "batch": "daily",
              "retries": 1, "retry_delay": 1, "after": {"etl_users": ["etl_orders"]}, "priority": 2,
              "quiet_hours": f"{far}-{far[:3]}59" if far[3:] != "59" else f"{far[:3]}00-{far}",
              "max_starts_per_hour": 100}  # fmt: skip
    call = subprocess.run(
        [BIN / "celery", "-A", "workers", "call", "backfill.submit_backfill", "--kwargs", json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert call.returncode == 0, call.stderr
    summary = orch.tasks.app.AsyncResult(call.stdout.strip()).get(timeout=60)
    bf = summary["backfill_id"]
    assert wait_done(orch.record, bf, timeout=240)["state"] == "succeeded"
    p = orch.record.params(bf)
    assert (p.retries, p.retry_delay, p.after, p.priority, p.max_starts_per_hour) == (
        1, 1.0, {"etl_users": ["etl_orders"]}, 2, 100)  # fmt: skip
    assert p.quiet_hours == [kwargs["quiet_hours"]]
    orders, users = runs(orch.airflow, "etl_orders", bf), runs(orch.airflow, "etl_users", bf)
    assert [r.state for r in orders + users] == ["success"] * 4
    assert all(u.queued_at >= o.end_date for o, u in zip(orders, users, strict=True))  # after= held

    bad = subprocess.run(
        [BIN / "backfill", "submit", "etl_orders", "--start", "x", "--end", "2009-03-02"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "Error: start: cannot read 'x' as a date (YYYY-MM-DD) or an ISO 8601 datetime"
    ]


def test_redis_down_is_one_line_exit_3_without_the_password(orch):
    env = orch.stack.env(BACKFILL_REDIS_URL="redis://:hunter2@127.0.0.1:9/0")
    for args in (["list"], ["status", "bf-20240401-101500-1a2b3c"]):
        out = subprocess.run([BIN / "backfill", *args], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 3, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: Redis at 127.0.0.1:9 is unreachable"), out.stderr
        assert "hunter2" not in out.stderr
