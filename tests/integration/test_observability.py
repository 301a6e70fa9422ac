"""Metrics and notifications of a real backfill, as Prometheus and a chat see them: a worker
serving its metrics (``BACKFILL_METRICS_PORT``), the record exporter (``backfill metrics``) and
a webhook endpoint, all against the real Airflow, checked against Airflow's run records and
the backfill's record in Redis.

This test runs its own worker on its own Redis database, so that the worker's counters and the
webhook's calls are this backfill's alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from backfill.context import Context
from backfill.settings import Settings
from devstack import free_port, tcp_open
from tests.conftest import WORKER_ENV
from tests.integration.helpers import Webhook, runs, samples, scrape, wait_done, wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SECRET = "T000/B000/very-secret-token"


def test_worker_metrics_exporter_and_webhooks_match_airflow_and_the_record(orch):
    stack = orch.stack
    url = stack.redis_url.rsplit("/", 1)[0] + "/3"
    redis.Redis.from_url(url).flushdb()
    hook = Webhook(fail_first=1)
    wport, eport = free_port(), free_port()
    env = {**WORKER_ENV, "BACKFILL_REDIS_URL": url, "BACKFILL_METRICS_PORT": str(wport),
           "BACKFILL_METRICS_ADDR": "127.0.0.1"}  # fmt: skip
    worker = stack.start_worker("wm", concurrency=2, **env)
    exporter = stack._spawn(
        "exporter", [str(BIN / "backfill"), "metrics", "--port", str(eport), "--addr", "127.0.0.1"], stack.env(**env)
    )
    try:
        wait_for(lambda: tcp_open(eport) and tcp_open(wport), 60, "the exporter and the worker's metrics")
        dags = ["etl_orders", "etl_users"]
        failing = "2010-06-03T00:00:00+00:00"
        conf = {"sleep": 1, "fail_windows": [failing], "fail_dags": ["etl_users"]}
        notify = {"url": f"http://127.0.0.1:{hook.port}/hook/{SECRET}", "failed_windows": True}
        out = subprocess.run(
            [str(BIN / "backfill"), "submit", *dags, "--start", "2010-06-01", "--end", "2010-06-04",
             "--conf", json.dumps(conf), "--on-failure", "continue", "--notify", json.dumps(notify), "--json"],
            env=stack.env(**env), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        bf = json.loads(out.stdout)["backfill_id"]
        record = Context.build(Settings.from_env(stack.env(**env))).record

        # Mid-backfill: the exporter accounts for every window of every DAG, and says it runs.
        def running() -> dict | None:
            got = scrape(eport)
            return got if samples(got, "backfill_windows", backfill=bf, state="running") else None

        mid = wait_for(running, 60, "a scrape during the backfill")
        assert samples(mid, "backfill_running", backfill=bf) == {(("backfill", bf),): 1.0}
        assert samples(mid, "backfill_windows_planned", backfill=bf) == {(("backfill", bf),): 8.0}
        for dag in dags:
            assert sum(samples(mid, "backfill_windows", backfill=bf, dag=dag).values()) == 4

        assert wait_done(record, bf)["state"] == "failed"
        end = scrape(eport)
        ours = {dag: runs(orch.airflow, dag, bf) for dag in dags}
        for dag in dags:
            # Windows by state as Airflow recorded the runs.
            for state in ("success", "failed"):
                n = sum(1 for r in ours[dag] if r.state == state)
                assert samples(end, "backfill_windows", backfill=bf, dag=dag, state=state) == {
                    (("backfill", bf), ("dag", dag), ("state", state)): float(n)
                }, (dag, state)
            failed_dag = 1.0 if dag == "etl_users" else 0.0
            assert samples(end, "backfill_dag_failed", backfill=bf, dag=dag) == {
                (("backfill", bf), ("dag", dag)): failed_dag
            }
        assert sum(1 for r in ours["etl_users"] if r.state == "failed") == 1
        assert samples(end, "backfill_windows_done", backfill=bf) == {(("backfill", bf),): 8.0}
        assert samples(end, "backfill_running", backfill=bf) == {(("backfill", bf),): 0.0}
        # Every window after a DAG's first was handed on once: 3 per DAG.
        assert samples(end, "backfill_handoff_seconds_count") == {(): 6.0}

        # The worker counted each trigger it sent: as many as Airflow has runs of the backfill.
        worker_metrics = scrape(wport)
        triggers = samples(worker_metrics, "backfill_airflow_requests_total",
                           endpoint="POST /api/v2/dags/{dag_id}/dagRuns", outcome="ok")  # fmt: skip
        assert sum(triggers.values()) == sum(len(rs) for rs in ours.values()) == 8
        looks = samples(worker_metrics, "backfill_airflow_request_seconds_count")
        assert sum(looks.values()) >= 8

        # The webhook: the failed window, the DAG that ended failed, the backfill's end; once
        # each, the first after a 503 (retried), with the URL never in the worker's log.
        wait_for(lambda: any(b["event"] == "backfill_ended" for b in hook.bodies), 60, "the backfill_ended call")
        events = sorted((b["event"], b.get("dag"), b.get("window")) for b in hook.bodies)
        assert events == [
            ("backfill_ended", None, None),
            ("dag_failed", "etl_users", None),
            ("window_failed", "etl_users", f"[{failing}, 2010-06-04T00:00:00+00:00)"),
        ], hook.bodies
        assert hook.statuses[0] == 503 and hook.statuses.count(200) == 3
        ended = next(b for b in hook.bodies if b["event"] == "backfill_ended")
        assert ended["state"] == "failed"
        assert {s: n for s, n in ended["counts"].items() if n} == {"success": 7, "failed": 1}
        assert ended["text"].startswith(f"Backfill {bf} ended failed")
        assert all(p == f"/hook/{SECRET}" for p in hook.paths)
        assert SECRET not in worker.tail(2000) and SECRET not in exporter.tail(2000)
    finally:
        stack.stop(exporter)
        stack.stop(worker)
        hook.close()
