"""Faults, races, bad input and secrets, against the real stack. See docs/reliability.md."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from backfill.errors import BackfillError
from backfill.windows import window_spec
from devstack import free_port
from tests.integration.helpers import max_concurrent, runs, submit, wait_done, wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_a_dag_paused_after_submit_is_the_reason_shown_and_nothing_fails(orch):
    bf = submit(orch, dags=["etl_orders"], start="2022-01-01", end="2022-01-02", conf={"sleep": 0.5})["backfill_id"]
    orch.airflow.set_paused("etl_orders", True)
    try:

        def reason() -> str | None:
            cur = orch.record.dag(bf, "etl_orders")
            return cur.reason if "is paused in Airflow" in (cur.reason or "") else None

        why = wait_for(reason, timeout=90, what="the paused reason")
        assert why.startswith("DAG etl_orders is paused in Airflow: run ") and "stays queued" in why
        assert orch.record.meta(bf)["state"] == "running"
        assert not [r for r in runs(orch.airflow, "etl_orders", bf) if r.state == "failed"]
        from click.testing import CliRunner

        from backfill.cli import cli

        shown = CliRunner().invoke(cli, ["status", bf]).output
        assert "waiting: DAG etl_orders is paused in Airflow" in shown
    finally:
        orch.airflow.set_paused("etl_orders", False)
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    assert [r.state for r in runs(orch.airflow, "etl_orders", bf)] == ["success", "success"]


def test_the_same_backfill_submitted_twice_at_once_runs_every_window_once(orch):
    kwargs = dict(dags=["etl_users", "etl_orders"], start="2022-02-01", end="2022-02-03", conf={"sleep": 0.5})
    first = orch.tasks.submit_backfill.apply_async(kwargs=kwargs)
    second = orch.tasks.submit_backfill.apply_async(kwargs=kwargs)
    a, b = first.get(timeout=60)["backfill_id"], second.get(timeout=60)["backfill_id"]
    assert a != b
    assert wait_done(orch.record, a)["state"] == "succeeded"
    assert wait_done(orch.record, b)["state"] == "succeeded"
    for dag in ("etl_users", "etl_orders"):
        both = runs(orch.airflow, dag, a) + runs(orch.airflow, dag, b)
        days = sorted(r.logical_date.date().isoformat() for r in both)
        assert days == ["2022-02-01", "2022-02-02", "2022-02-03"], f"{dag}: one run per window"
        assert all(r.state == "success" for r in both) and max_concurrent(both) == 1
        outcomes = [orch.record.window(bf, dag, i).state for bf in (a, b) for i in range(3)]
        assert sorted(outcomes) == ["skipped"] * 3 + ["success"] * 3, f"{dag}: {outcomes}"


# -- bad input: the table of docs/reliability.md ---------------------------------------------

BASE = {"dags": ["etl_users"], "start": "2022-06-01", "end": "2022-06-02", "batch": "daily"}


def bad_input_rows() -> list[tuple[str, str, dict, str]]:
    text = (REPO / "docs" / "reliability.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = []
    for name, kind, given, message in re.findall(r"^\| ([^|]+) \| (kwargs|env) `(\{.*?\})` \| (.+) \|$", section, re.M):
        rows.append((name.strip(), kind, json.loads(given), message.strip()))
    return rows


ROWS = bad_input_rows()


def test_the_bad_input_table_is_complete():
    names = {name for name, *_ in ROWS}
    assert len(ROWS) >= 28
    for must in ("dags, empty", "dags, path", "start after end", "naive time skipped by DST", "range past the cap",
                 "conf, a list", "wrong Airflow password", "unreachable Airflow", "negative limit"):  # fmt: skip
        assert must in names


@pytest.mark.parametrize(("name", "kind", "given", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_naming_it_and_nothing_is_triggered(orch, name, kind, given, message):
    before = orch.record.recent(1000)
    if kind == "kwargs":
        expected = message.strip("`")
        with pytest.raises(BackfillError) as err:
            submit(orch, **{**BASE, **given})
        assert expected in str(err.value), f"{name}: {err.value}"
    else:
        code, expected = re.match(r"exit (\d): `(.*)`", message).groups()
        out = subprocess.run(
            [BIN / "backfill", "plan", "etl_users", "--start", "2022-06-01", "--end", "2022-06-02"],
            capture_output=True, text=True, env=orch.stack.env(**given), timeout=120,
        )  # fmt: skip
        assert out.returncode == int(code), f"{name}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], f"{name}: {out.stderr}"
    assert orch.record.recent(1000) == before
    for day in ("2022-06-01", "2022-06-02"):
        start = window_spec(day, day, "daily").window(0).start
        assert orch.airflow.runs_at("etl_users", start) == []


# -- secrets -------------------------------------------------------------------------------------


def test_the_airflow_password_is_in_no_log_task_or_record(orch):
    password = orch.stack.airflow_password
    assert len(password) >= 12
    port = free_port()
    flower = orch.stack.start_flower(port=port, FLOWER_BASIC_AUTH="ops:flower-pw")
    try:
        bf = submit(orch, dags=["etl_payments"], start="2022-03-01", end="2022-03-01", conf={"sleep": 0.2})
        assert wait_done(orch.record, bf["backfill_id"])["state"] == "succeeded"
        auth = {"Authorization": "Basic " + base64.b64encode(b"ops:flower-pw").decode()}
        url = f"http://127.0.0.1:{port}/api/tasks?limit=100000"

        def listed() -> str | None:
            with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=10) as resp:
                body = resp.read().decode()
            return body if bf["backfill_id"] in body else None

        tasks = wait_for(listed, timeout=30, what="the backfill in Flower")
        assert password not in tasks
        # Flower's API is closed without its basic auth.
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
    finally:
        orch.stack.stop(flower)
    # Every value in the orchestrator's Redis database: records, locks, broker, results.
    r = orch.ctx.redis
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values = [r.get(key)]
        elif kind == "hash":
            values = list(r.hgetall(key).values())
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            values = list(r.smembers(key)) if kind == "set" else r.zrange(key, 0, -1)
        elif kind == "stream":
            values = [json.dumps({k.decode(): v.decode() for k, v in f.items()}) for _, f in r.xrange(key)]
        else:
            values = []
        assert not any(password in (v.decode(errors="replace") if isinstance(v, bytes) else str(v)) for v in values), (
            key
        )
    for log in orch.stack.root.glob("worker-*.log"):
        assert password not in log.read_text(errors="replace"), log.name


def test_a_dead_holders_lock_expires_and_the_dag_goes_on(orch):
    """A lock left by a holder that died (it no longer renews): the window waits, naming it,
    until the lock expires, then runs."""
    dead = "bf-20000101-000000-dead00__2022-07-01T00:00:00+00:00"
    key, now = orch.ctx.locks.key("etl_users"), orch.ctx.locks.now_ms()  # a lock as lock_acquire.lua writes it
    orch.ctx.redis.hset(key, mapping={"token": dead, "until": now + 6000})
    bf = submit(orch, dags=["etl_users"], start="2022-07-01", end="2022-07-02", conf={"sleep": 0.2})["backfill_id"]
    why = wait_for(lambda: orch.record.dag(bf, "etl_users").reason, timeout=30, what="the waiting reason")
    assert why == "DAG locked by backfill bf-20000101-000000-dead00 (window starting 2022-07-01T00:00:00+00:00)"
    assert runs(orch.airflow, "etl_users", bf) == []  # nothing ran while the lock was alive
    assert wait_done(orch.record, bf)["state"] == "succeeded"
    assert [r.state for r in runs(orch.airflow, "etl_users", bf)] == ["success", "success"]
    assert orch.ctx.locks.holder("etl_users") is None
