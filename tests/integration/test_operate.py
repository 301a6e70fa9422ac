"""Operating a backfill through the real `backfill` CLI against the real stack: plan, status,
cancel, resume, throttle, report. Every assertion reads Airflow's run records or Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from tests.integration.helpers import by_trigger_time, max_concurrent, runs, submit, wait_done, wait_for

pytestmark = pytest.mark.integration


def run_cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, f"backfill {' '.join(args)} -> {result.exit_code}\n{result.output}"
    return result.output


def submit_cli(*args: str) -> str:
    return json.loads(run_cli("submit", *args, "--json"))["backfill_id"]


def test_plan_shows_the_exact_windows_in_order_triggers_nothing_and_matches_what_runs(orch):
    args = ["etl_users", "--start", "2013-01-01", "--end", "2013-01-04", "--reverse", "--conf", '{"sleep": 0.2}']
    planned = json.loads(run_cli("plan", *args, "--json"))
    windows = planned["dags"][0]["windows"]
    assert planned["problems"] == [] and planned["order"] == "newest first"
    assert windows == [[f"2013-01-0{d}T00:00:00+00:00", f"2013-01-0{d + 1}T00:00:00+00:00"] for d in (4, 3, 2, 1)]
    # The same plan from the task, and an unknown or paused DAG is reported (exit 2), not run.
    same = orch.tasks.submit_backfill.apply_async(
        kwargs=dict(dags=["etl_users"], start="2013-01-01", end="2013-01-04", reverse=True, dry_run=True)
    ).get(timeout=60)
    assert same["dags"][0]["windows"] == windows
    orch.airflow.set_paused("etl_scheduled", True)
    try:
        out = run_cli(
            "plan", "etl_users", "no_such_dag", "etl_scheduled", "--start", "2013-01-01", "--end", "2013-01-02", code=2
        )
    finally:
        orch.airflow.set_paused("etl_scheduled", False)
    assert "no_such_dag: unknown to Airflow" in out and "etl_scheduled: paused in Airflow" in out
    assert "nothing has been triggered" in out and "Traceback" not in out
    assert runs(orch.airflow, "etl_users", "bf-") == [] or all(
        not r.logical_date.isoformat().startswith("2013") for r in runs(orch.airflow, "etl_users", "bf-")
    )
    bf = submit_cli(*args)
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    ran = by_trigger_time(runs(orch.airflow, "etl_users", bf))
    assert [[r.data_interval_start.isoformat(), r.data_interval_end.isoformat()] for r in ran] == windows
    # Now Airflow has successful runs to estimate from; the windows that would be skipped (they
    # succeeded) cost nothing, the ones re-run do.
    again = json.loads(run_cli("plan", *args, "--json"))
    assert again["dags"][0]["recent_runs"] >= 4 and again["estimated_seconds"] == 0
    assert again["dags"][0]["counts"]["skip"] == 4
    rerun = json.loads(run_cli("plan", *args, "--reprocess", "completed", "--json"))
    assert rerun["dags"][0]["counts"]["rerun"] == 4 and rerun["estimated_seconds"] > 0
    assert "estimated duration:" in run_cli("plan", *args)


def test_status_says_why_a_dag_waits_and_names_failures_with_their_run(orch):
    outside = "manual__status_test_2014"
    from backfill.windows import window_spec

    w = window_spec("2014-01-02", "2014-01-02", "daily").window(0)
    orch.airflow.trigger("etl_payments", outside, w, conf={"sleep": 6})
    bf = submit_cli(
        "etl_payments", "etl_users", "--start", "2014-01-01", "--end", "2014-01-03", "--on-failure", "continue",
        "--conf", json.dumps({"sleep": 0.2, "fail_windows": ["2014-01-03T00:00:00+00:00"], "fail_dags": ["etl_users"]}),
    )  # fmt: skip

    # etl_payments reaches 2014-01-02 while the outside run holds it (or is still running).
    def waiting_on_outside() -> str | None:
        out = run_cli("status", bf)
        return out if f"run {outside}" in out else None

    text = wait_for(waiting_on_outside, timeout=60, what="the waiting reason")
    assert "waiting: " in text and "etl_payments" in text
    assert wait_done(orch.record, bf)["state"] == "failed"
    final = run_cli("status", bf)
    failed_run = f"{bf}__2014-01-03T00:00:00+00:00"
    assert f"etl_users 2014-01-03T00:00:00+00:00 run={failed_run}: Airflow run {failed_run} failed" in final
    assert "[####################]     3/3" in final


def test_cancel_stops_only_its_backfill_fails_its_running_runs_and_resume_runs_the_rest(orch):
    slow = json.dumps({"sleep": 3})
    a = submit_cli("etl_orders", "etl_users", "--start", "2015-01-01", "--end", "2015-01-06", "--conf", slow)
    b = submit_cli("etl_payments", "--start", "2015-01-01", "--end", "2015-01-03", "--conf", json.dumps({"sleep": 1}))
    wait_for(lambda: len([r for r in runs(orch.airflow, "etl_orders", a) if r.state == "success"]) >= 1, 90, "a run")
    wait_for(lambda: any(r.active for r in runs(orch.airflow, "etl_users", a)), 60, "an active run of a")
    out = run_cli("cancel", a, "--fail-running")
    assert f"backfill {a} cancelled" in out and "marked failed in Airflow" in out
    assert orch.record.meta(a)["state"] == "cancelled"
    seen = {dag: runs(orch.airflow, dag, a) for dag in ("etl_orders", "etl_users")}
    assert not any(r.active for rs in seen.values() for r in rs), "a run of the cancelled backfill is still active"
    time.sleep(8)  # long enough for any surviving window task to trigger again
    for dag, before in seen.items():
        after = runs(orch.airflow, dag, a)
        assert [r.run_id for r in after] == [r.run_id for r in before], f"{dag}: triggered after the cancel"
        assert not any(r.active for r in after)
        assert orch.ctx.locks.holder(dag) is None or not orch.ctx.locks.holder(dag).startswith(a)
    # The other backfill was not touched.
    assert wait_done(orch.record, b)["state"] == "succeeded"
    assert [r.state for r in runs(orch.airflow, "etl_payments", b)] == ["success"] * 3
    # Cancelling again is harmless; the state says what happened.
    assert "cancelled" in run_cli("status", a)

    succeeded_before = {dag: {r.run_id: r.end_date for r in rs if r.state == "success"} for dag, rs in seen.items()}
    r = json.loads(run_cli("resume", a, "--json"))["backfill_id"]
    assert wait_done(orch.record, r)["state"] == "succeeded"
    for dag in ("etl_orders", "etl_users"):
        everything = runs(orch.airflow, dag, a) + runs(orch.airflow, dag, r)
        by_date = {x.logical_date.date().isoformat(): x for x in everything}
        assert len(by_date) == len(everything) == 6, f"{dag}: exactly one run per window"
        assert all(x.state == "success" for x in everything), dag
        for run_id, end in succeeded_before[dag].items():  # what had succeeded did not run again
            assert orch.airflow.get_run(dag, run_id).end_date == end
        # The resume ran exactly the windows without a successful run; a window whose run
        # succeeded just as the cancel came is in the resume but skipped, not run again.
        resumed = orch.record.params(r)
        outcome = {
            resumed.spec.window(i).start.date().isoformat(): w.state for i, w in orch.record.windows(r, dag).items()
        }
        had_succeeded = {x.logical_date.date().isoformat() for x in seen[dag] if x.state == "success"}
        assert {d for d, st in outcome.items() if st == "success"} == set(by_date) - had_succeeded, dag
        assert all(outcome.get(d, "skipped") == "skipped" for d in had_succeeded), dag
    out = run_cli("resume", r, code=2)
    assert "nothing to resume" in out


def test_resume_reruns_exactly_the_windows_that_failed_or_did_not_run(orch):
    conf = {"sleep": 0.2, "fail_once_windows": ["2016-01-03T00:00:00+00:00"]}
    bf = submit(orch, dags=["etl_users"], start="2016-01-01", end="2016-01-05", conf=conf)["backfill_id"]
    assert f"backfill {bf}: still running; wait for it or cancel it first" in run_cli("resume", bf, code=2)
    assert wait_done(orch.record, bf)["state"] == "failed"
    first = {x.logical_date.date().isoformat(): x for x in runs(orch.airflow, "etl_users", bf)}
    assert sorted(first) == ["2016-01-01", "2016-01-02", "2016-01-03"]  # 04 and 05 were not run (stop)
    r = json.loads(run_cli("resume", bf, "--json"))
    assert r["batches"] == {"etl_users": 3} and r["resumes"] == bf
    assert wait_done(orch.record, r["backfill_id"])["state"] == "succeeded"
    after = {x.logical_date.date().isoformat(): x for x in runs(orch.airflow, "etl_users", bf)}
    new = {x.logical_date.date().isoformat(): x for x in runs(orch.airflow, "etl_users", r["backfill_id"])}
    assert sorted(new) == ["2016-01-04", "2016-01-05"]
    assert after["2016-01-03"].state == "success" and after["2016-01-03"].end_date > first["2016-01-03"].end_date
    for day in ("2016-01-01", "2016-01-02"):  # succeeded the first time: not run again
        assert after[day].end_date == first[day].end_date


def test_max_parallel_dags_runs_one_dag_at_a_time_taking_turns(orch):
    dags = ["etl_orders", "etl_users", "etl_payments"]
    bf = submit_cli(*dags, "--start", "2017-01-01", "--end", "2017-01-02", "--max-parallel-dags", "1",
                    "--conf", json.dumps({"sleep": 1}))  # fmt: skip
    reason = wait_for(
        lambda: next(
            (d["current"]["reason"] for d in json.loads(run_cli("status", bf, "--json"))["dags"]
             if d["current"] and (d["current"]["reason"] or "").startswith("max_parallel_dags=1 reached")),
            None,
        ),
        timeout=60, what="a DAG waiting for its turn",
    )  # fmt: skip
    assert "in line" in reason
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    everything = [r for dag in dags for r in runs(orch.airflow, dag, bf)]
    assert len(everything) == 6 and max_concurrent(everything) == 1
    # Fair turns: every DAG ran its first window before any DAG ran its second.
    order = [r.dag_id for r in by_trigger_time(everything)]
    assert sorted(order[:3]) == sorted(dags), order


def test_global_cap_holds_across_backfills_and_is_set_at_run_time(orch):
    assert "global cap: 1 (set with backfill throttle)" in run_cli("throttle", "--global", "1")
    try:
        a = submit_cli("etl_orders", "--start", "2018-01-01", "--end", "2018-01-02", "--conf", '{"sleep": 1}')
        b = submit_cli("etl_users", "--start", "2018-01-01", "--end", "2018-01-02", "--conf", '{"sleep": 1}')
        wait_for(
            lambda: any(
                (d["current"] or {}).get("reason", "") and d["current"]["reason"].startswith("global limit reached")
                for bf in (a, b) for d in json.loads(run_cli("status", bf, "--json"))["dags"]
            ),
            timeout=60, what="a window waiting for the global cap",
        )  # fmt: skip
        assert wait_done(orch.record, a)["state"] == "succeeded"
        assert wait_done(orch.record, b)["state"] == "succeeded"
    finally:
        assert "BACKFILL_GLOBAL_MAX_RUNS" in run_cli("throttle", "--global", "off")
    both = runs(orch.airflow, "etl_orders", a) + runs(orch.airflow, "etl_users", b)
    assert len(both) == 4 and max_concurrent(both) == 1
    assert run_cli("throttle", "--global", "lots", code=2).startswith("Error: --global: expected a whole number")


def test_report_shows_one_lane_per_dag_and_one_bar_per_window_in_a_real_browser(orch, tmp_path):
    dags = ["etl_orders", "etl_users", "etl_payments"]
    bf = submit_cli(*dags, "--start", "2019-01-01", "--end", "2019-01-03", "--conf", '{"sleep": 0.5}')
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    text = run_cli("report", bf)
    lanes = [line for line in text.splitlines() if line.strip().split(" ")[0] in dags and "|" in line]
    assert len(lanes) == 3 and all("3 success" in line for line in lanes)
    page = tmp_path / "report.html"
    assert f"wrote {page}" in run_cli("report", bf, "--html", str(page))
    html = page.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained

    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: scripts/bootstrap.sh installs it (apt-get install -y chromium)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert dom.count('class="lane"') == 3 and dom.count('class="bar"') == 9
    for dag in dags:
        assert f'data-dag="{dag}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,700", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # Bars of one DAG never overlap in the page either (serial per DAG), from the record.
    from backfill.report import collect

    for dag, bars in collect(orch.record, bf)["lanes"].items():
        ordered = sorted(bars, key=lambda x: x.t0)
        assert all(x.t1 <= y.t0 for x, y in pairwise(ordered)), dag


def test_flower_search_lists_one_backfills_tasks_with_readable_kwargs(orch):
    import base64
    import urllib.request

    from devstack import free_port

    port = free_port()
    flower = orch.stack.start_flower(port=port, FLOWER_BASIC_AUTH="ops:secret-pw")
    auth = "Basic " + base64.b64encode(b"ops:secret-pw").decode()
    try:
        bf = submit(orch, dags=["etl_users"], start="2020-01-01", end="2020-01-02", conf={"sleep": 0.2})["backfill_id"]
        assert wait_done(orch.record, bf)["state"] == "succeeded"
        url = f"http://127.0.0.1:{port}/api/tasks?search=kwargs:backfill_id={bf}"

        def tasks() -> dict:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers={"Authorization": auth}), timeout=10
            ) as resp:
                found = json.loads(resp.read())
            return found if len(found) >= 2 else {}

        found = wait_for(tasks, timeout=30, what="the backfill's tasks in Flower")
        names = sorted(t["name"] for t in found.values())
        # The DAG's last window closes it: no continue_dag link after it.
        assert names == ["backfill.run_window", "backfill.run_window"]
        assert all(bf in t["kwargs"] and "etl_users" in t["kwargs"] for t in found.values())
        assert any("2020-01-01" in t["kwargs"] for t in found.values())
    finally:
        orch.stack.stop(flower)


def test_json_logs_carry_each_state_change_and_never_the_password(orch, tmp_path):
    """A second orchestrator (its own Redis database) whose worker logs JSON."""
    env = {"BACKFILL_LOG_FORMAT": "json", "BACKFILL_REDIS_URL": orch.stack.redis_url.rsplit("/", 1)[0] + "/3"}
    worker = orch.stack.start_worker("jsonlog", concurrency=1, **env)
    try:
        call = subprocess.run(
            [Path(sys.executable).parent / "celery", "-A", "workers", "call", "backfill.submit_backfill",
             "--kwargs", json.dumps({"dags": ["etl_orders"], "start": "2020-02-01", "end": "2020-02-02",
                                     "conf": {"sleep": 0.2}})],
            capture_output=True, text=True, env=orch.stack.env(**env), timeout=60,
        )  # fmt: skip
        assert call.returncode == 0, call.stderr

        def ended() -> list[dict]:
            lines = [json.loads(x) for x in worker.log.read_text().splitlines() if x.startswith("{")]
            return lines if any(x.get("message", "").endswith("backfill SUCCEEDED") for x in lines) else []

        lines = wait_for(ended, timeout=120, what="the JSON-logging worker to finish")
    finally:
        orch.stack.stop(worker)
    raw = worker.log.read_text()
    assert orch.stack.airflow_password not in raw
    states = [(x["dag_id"], x["window_start"], x["state"]) for x in lines if "state" in x and "window_start" in x]
    assert ("etl_orders", "2020-02-01T00:00:00+00:00", "success") in states
    assert ("etl_orders", "2020-02-02T00:00:00+00:00", "success") in states
    success = next(x for x in lines if x.get("state") == "success")
    assert success["run_id"].startswith("bf-") and success["duration"] > 0 and success["time"].endswith("+00:00")


def test_a_revoke_from_the_celery_cli_cancels_the_backfill_too(orch):
    bf = submit_cli("etl_payments", "--start", "2021-01-01", "--end", "2021-01-06", "--conf", '{"sleep": 2}')
    wait_for(lambda: any(r.active for r in runs(orch.airflow, "etl_payments", bf)), 60, "a running window")
    out = subprocess.run(
        [Path(sys.executable).parent / "celery", "-A", "workers", "control", "revoke_by_stamped_headers",
         f"backfill_id={bf}"],
        capture_output=True, text=True, env=orch.stack.env(), timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    # The worker drops the waiting window when it comes due and records the DAG as cancelled.
    wait_for(lambda: orch.record.meta(bf)["state"] == "cancelled", timeout=60, what="the backfill cancelled")
    before = [r.run_id for r in runs(orch.airflow, "etl_payments", bf)]
    assert len(before) < 6
    wait_for(lambda: not any(r.active for r in runs(orch.airflow, "etl_payments", bf)), 60, "the last run to end")
    time.sleep(5)
    assert [r.run_id for r in runs(orch.airflow, "etl_payments", bf)] == before, "triggered after the revoke"
    assert orch.ctx.locks.holder("etl_payments") is None
    status = json.loads(run_cli("status", bf, "--json"))
    counts = status["dags"][0]["counts"]
    assert status["state"] == "cancelled" and counts["cancelled"] >= 1 and counts["cancelled"] + counts["success"] == 6


def test_under_the_global_cap_the_freed_slot_goes_to_the_higher_priority_backfill(orch):
    def in_line(bf: str) -> bool:
        return any(((d["current"] or {}).get("reason") or "").startswith("global limit reached")
                   for d in json.loads(run_cli("status", bf, "--json", "--no-verify"))["dags"])  # fmt: skip

    run_cli("throttle", "--global", "1")
    try:
        low = submit_cli("etl_orders", "etl_users", "--start", "2018-02-01", "--end", "2018-02-02",
                         "--conf", '{"sleep": 8}')  # fmt: skip
        wait_for(lambda: in_line(low), timeout=60, what="the low-priority backfill's second DAG in line")
        high = submit_cli("etl_payments", "--start", "2018-02-01", "--end", "2018-02-02", "--conf", '{"sleep": 1}',
                          "--priority", "5")  # fmt: skip
        wait_for(lambda: in_line(high), timeout=60, what="the high-priority window in line, behind it")
        assert wait_done(orch.record, low, timeout=300)["state"] == "succeeded"  # it still advances
        assert wait_done(orch.record, high, timeout=300)["state"] == "succeeded"
    finally:
        assert "BACKFILL_GLOBAL_MAX_RUNS" in run_cli("throttle", "--global", "off")
    lows = [r for dag in ("etl_orders", "etl_users") for r in runs(orch.airflow, dag, low)]
    everything = by_trigger_time(lows + runs(orch.airflow, "etl_payments", high))
    assert len(everything) == 6 and max_concurrent(everything) == 1
    # From Airflow's records: the first run was the low backfill's; the slot it freed went to the
    # high-priority window, though a window of the low backfill had asked for it first (Redis).
    assert everything[0].run_id.startswith(low) and everything[1].run_id.startswith(high), everything
    asked = [(e["ts"], e["dag"]) for bf in (low, high) for _, e in orch.record.events(bf)
             if e.get("kind") == "window" and (e.get("reason") or "").startswith("global limit reached")]  # fmt: skip
    assert min(asked)[1] != "etl_payments" and min(t for t, d in asked if d == "etl_payments") > min(asked)[0]


def test_backfills_sharing_a_dag_queue_for_it_in_order_and_status_shows_the_line(orch):
    a = submit_cli("etl_payments", "--start", "2018-03-01", "--end", "2018-03-02", "--conf", '{"sleep": 6}')
    b = submit_cli("etl_payments", "--start", "2018-04-01", "--end", "2018-04-02", "--conf", '{"sleep": 1}')

    def queued() -> dict:
        return json.loads(run_cli("status", b, "--json", "--no-verify"))["dags"][0]["queue"] or {}

    q = wait_for(lambda: (q := queued()).get("line") and q, timeout=60, what="b in line for etl_payments")
    assert q["holder"]["backfill_id"] == a and [w["backfill_id"] for w in q["line"]] == [b]
    text = run_cli("status", b, "--no-verify")
    assert f"DAG held by {a}; in line for it: 1. {b}" in text
    assert wait_done(orch.record, a, timeout=300)["state"] == "succeeded"
    assert wait_done(orch.record, b, timeout=300)["state"] == "succeeded"
    # From Airflow's records: the DAG went to whoever asked first, window by window: a's first
    # window, then b's (in line while it ran), then a's second (it asked after b), then b's.
    ran = by_trigger_time(runs(orch.airflow, "etl_payments", a) + runs(orch.airflow, "etl_payments", b))
    assert [r.run_id.split("__")[0] for r in ran] == [a, b, a, b], [r.run_id for r in ran]
    assert max_concurrent(ran) == 1
