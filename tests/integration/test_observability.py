"""Monitoring as docker-compose.yaml's ``monitoring`` profile runs it, against the real stack:
the worker service serving its metrics, the exporter service (``backfill metrics``), the
prometheus service (deploy/monitoring: scrape jobs, alert rules) and a webhook endpoint. What
they show of one backfill is checked against Airflow's run records and the record in Redis;
the alerts fire from the real series; every query of the Grafana dashboard runs on the real
Prometheus. The session's worker stops taking tasks meanwhile: the compose worker runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devstack import REPO
from tests.compose_stack import ComposeStack
from tests.integration.helpers import Webhook, exposed, runs, samples, scrape, wait_done, wait_for

pytestmark = pytest.mark.integration

SECRET = "T000/B000/very-secret-token"
DASHBOARD = REPO / "deploy" / "monitoring" / "grafana" / "dashboards" / "backfill.json"


def query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query of the real Prometheus; raises on a query it refuses."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def firing(port: int) -> set[tuple[str, str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=30) as resp:
        alerts = json.loads(resp.read())["data"]["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("backfill", ""), a["labels"].get("dag", ""))
            for a in alerts if a["state"] == "firing"}  # fmt: skip


def test_the_monitoring_profile_sees_a_backfill_as_airflow_recorded_it(compose: ComposeStack, orch, tmp_path):
    session_worker = [f"w1@{socket.gethostname()}"]
    orch.tasks.app.control.cancel_consumer("celery", destination=session_worker, reply=True, timeout=10)
    hook = Webhook(fail_first=1)
    worker = compose.start("worker")
    exporter = compose.start("exporter")
    prometheus = compose.start("prometheus")  # after the exporter is healthy (depends_on)
    wport, eport, pport = (compose.ports[n] for n in ("worker-metrics", "exporter", "prometheus"))
    try:
        for name in ("worker", "prometheus"):
            compose._wait_healthy(name, 120)
        dags = ["etl_orders", "etl_users"]
        failing = "2010-06-03T00:00:00+00:00"
        conf = {"sleep": 1, "fail_windows": [failing], "fail_dags": ["etl_users"]}
        notify = {"url": f"http://127.0.0.1:{hook.port}/hook/{SECRET}", "failed_windows": True}
        out = subprocess.run(
            ["backfill", "submit", *dags, "--start", "2010-06-01", "--end", "2010-06-04",
             "--conf", json.dumps(conf), "--on-failure", "continue", "--notify", json.dumps(notify), "--json"],
            env=compose.environment("worker"), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        bf = json.loads(out.stdout)["backfill_id"]

        # Mid-backfill: the exporter accounts for every window of every DAG, and says it runs.
        def running() -> dict | None:
            got = scrape(eport)
            return got if sum(samples(got, "backfill_windows", backfill=bf, state="running").values()) else None

        mid = wait_for(running, 90, "a scrape during the backfill")
        assert samples(mid, "backfill_running", backfill=bf) == {(("backfill", bf),): 1.0}
        assert samples(mid, "backfill_windows_planned", backfill=bf) == {(("backfill", bf),): 8.0}
        for dag in dags:
            assert sum(samples(mid, "backfill_windows", backfill=bf, dag=dag).values()) == 4

        assert wait_done(orch.record, bf, timeout=300)["state"] == "failed"
        end = scrape(eport)
        ours = {dag: runs(orch.airflow, dag, bf) for dag in dags}
        for dag in dags:  # windows by state as Airflow recorded the runs
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
        counted = scrape(wport)
        triggers = samples(counted, "backfill_airflow_requests_total",
                           endpoint="POST /api/v2/dags/{dag_id}/dagRuns", outcome="ok")  # fmt: skip
        assert sum(triggers.values()) == sum(len(rs) for rs in ours.values()) == 8
        assert sum(samples(counted, "backfill_airflow_request_seconds_count").values()) >= 8

        # Prometheus scraped both jobs and holds the same figures; the alerts fire for the DAG
        # that failed and only for it.
        wait_for(lambda: query(pport, f'backfill_windows_done{{backfill="{bf}"}} == 8'), 30, "Prometheus's scrape")
        for job in ("backfill-workers", "backfill-exporter"):
            assert [r["value"][1] for r in query(pport, f'up{{job="{job}"}}')] == ["1"], job
        ok = query(pport, 'sum(backfill_airflow_requests_total{endpoint="POST /api/v2/dags/{dag_id}/dagRuns"})')
        assert ok[0]["value"][1] == "8"

        def alerted() -> set[tuple[str, str, str]]:
            got = {a for a in firing(pport) if a[1] == bf}
            return got if len(got) >= 2 else set()

        assert wait_for(alerted, 60, "the alerts") == {
            ("BackfillWindowsFailed", bf, "etl_users"),
            ("BackfillDagFailed", bf, "etl_users"),
        }

        # Every query of the Grafana dashboard runs on this Prometheus; those about this
        # backfill show what Airflow recorded.
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"].replace("$backfill", bf) for p in dashboard["panels"] for t in p["targets"]]
        # Each names only metrics the worker and the exporter really expose (or Prometheus's `up`).
        real = exposed(wport) | exposed(eport) | {"up"}
        for expr in exprs:
            used = set(re.findall(r"\b(backfill_[a-z_]+|up)\b(?=\s*[{\[)]|\s*$|\s*[=*/<>])", expr))
            assert used and used <= real, (expr, used - real)
        results = {e: query(pport, e) for e in exprs}
        progress = next(r for e, r in results.items() if e.startswith("backfill_windows_done"))
        assert [r["value"][1] for r in progress] == ["1"]
        by_state = next(r for e, r in results.items() if e.startswith("sum by (state) (backfill_windows"))
        assert {r["metric"]["state"]: r["value"][1] for r in by_state if r["value"][1] != "0"} == {
            "success": "7",
            "failed": "1",
        }
        for panel in ("sum(backfill_running)", 'sum(up{job="backfill-workers"})'):
            assert results[panel], panel

        # What Prometheus shows, in a real browser (docs/operations.md shows these pictures).
        chromium = shutil.which("chromium")
        assert chromium, "chromium is missing: scripts/bootstrap.sh installs it (apt-get install -y chromium)"
        graph = "graph?" + urllib.parse.urlencode({
            "g0.expr": f'sum by (state) (backfill_windows{{backfill="{bf}"}})', "g0.tab": "0", "g0.stacked": "1",
            "g0.range_input": "20s",
        })  # fmt: skip
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        # The alerts page: /alerts in the official image's UI, /classic/alerts in Debian's build.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{pport}/alerts", timeout=10).close()
            alerts_page = "alerts"
        except urllib.error.HTTPError:
            alerts_page = "classic/alerts"
        for name, page in (("prometheus.png", graph), ("prometheus-alerts.png", alerts_page)):
            shot = tmp_path / name
            url = f"http://127.0.0.1:{pport}/{page}"
            cmd = [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1000", "--virtual-time-budget=15000"]
            subprocess.run([*cmd, url], capture_output=True, timeout=120, check=True)
            png = shot.read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, name
            if os.environ.get("BACKFILL_SCREENSHOTS"):
                shutil.copy(shot, Path(os.environ["BACKFILL_SCREENSHOTS"]) / name)

        # The webhook: the failed window, the DAG that ended failed, the backfill's end; once
        # each, the first after a 503 (retried), with the URL never in a log.
        wait_for(lambda: any(b["event"] == "backfill_ended" for b in hook.bodies), 60, "the backfill_ended call")
        time.sleep(2)  # a duplicate would come now
        events = sorted((b["event"], b.get("dag") or "", b.get("window") or "") for b in hook.bodies)
        assert events == [
            ("backfill_ended", "", ""),
            ("dag_failed", "etl_users", ""),
            ("window_failed", "etl_users", f"[{failing}, 2010-06-04T00:00:00+00:00)"),
        ], hook.bodies
        assert hook.statuses[0] == 503 and hook.statuses.count(200) == 3
        ended = next(b for b in hook.bodies if b["event"] == "backfill_ended")
        assert ended["state"] == "failed" and ended["text"].startswith(f"Backfill {bf} ended failed")
        assert {s: n for s, n in ended["counts"].items() if n} == {"success": 7, "failed": 1}
        assert all(p == f"/hook/{SECRET}" for p in hook.paths)
        assert SECRET not in worker.tail(3000) and SECRET not in exporter.tail(3000)
    finally:
        for proc in (prometheus, exporter, worker):
            compose.stack.stop(proc)
        hook.close()
        orch.tasks.app.control.add_consumer("celery", destination=session_worker, reply=True, timeout=10)
