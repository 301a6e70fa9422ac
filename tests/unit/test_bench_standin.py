"""The benchmark's Airflow stand-in (bench/standin.py) answers our client like Airflow 3.3 does
for the endpoints the orchestrator uses; otherwise the B3/B4 figures would mean nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from backfill.airflow import AirflowClient, AirflowConfig
from backfill.errors import AirflowConflict, AirflowNotFound
from backfill.windows import Window
from bench.standin import Standin, serve
from devstack import free_port


@pytest.fixture
def standin() -> Iterator[tuple[Standin, AirflowClient]]:
    st = Standin({"bench_000"}, duration=0.3, queued=0.1)
    server = serve(st, port := free_port())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = AirflowClient(AirflowConfig(url=f"http://127.0.0.1:{port}", username="u", password="p"))
    yield st, client
    server.shutdown()
    server.server_close()


def test_runs_go_queued_running_success_and_dates_are_unique(standin: tuple[Standin, AirflowClient]) -> None:
    st, client = standin
    start = datetime(2010, 1, 1, tzinfo=UTC)
    window = Window(start, start + timedelta(days=1))
    assert client.get_dag("bench_000").is_paused is False
    with pytest.raises(AirflowNotFound):
        client.get_dag("nope")
    run = client.trigger("bench_000", "bf-1__2010-01-01T00:00:00+00:00", window, conf={"k": 1})
    assert run.state == "queued" and run.covers(window) and run.conf == {"k": 1}
    assert [r.run_id for r in client.active_runs("bench_000")] == ["bf-1__2010-01-01T00:00:00+00:00"]
    with pytest.raises(AirflowConflict):
        client.trigger("bench_000", "r2", window, conf={})
    time.sleep(0.2)
    assert client.get_run("bench_000", "bf-1__2010-01-01T00:00:00+00:00").state == "running"
    time.sleep(0.3)
    done = client.get_run("bench_000", "bf-1__2010-01-01T00:00:00+00:00")
    assert done.state == "success" and done.end_date > done.start_date > done.queued_at
    assert [r.run_id for r in client.runs_at("bench_000", start)] == ["bf-1__2010-01-01T00:00:00+00:00"]
    assert [r.run_id for r in client.recent_successes("bench_000")] == ["bf-1__2010-01-01T00:00:00+00:00"]
    assert client.active_runs("bench_000") == []
    client.clear("bench_000", "bf-1__2010-01-01T00:00:00+00:00")
    assert client.get_run("bench_000", "bf-1__2010-01-01T00:00:00+00:00").state == "queued"
    client.fail_run("bench_000", "bf-1__2010-01-01T00:00:00+00:00")
    assert client.get_run("bench_000", "bf-1__2010-01-01T00:00:00+00:00").state == "failed"
    assert st.max_active == 1 and st.stats()["requests"] == client.requests


def test_the_watchers_lists(standin: tuple[Standin, AirflowClient]) -> None:
    """``POST /dags/~/dagRuns/list`` as the watcher asks it: runs started since, or ended since."""
    _, client = standin
    before = time.time() - 1
    start = datetime(2010, 2, 1, tzinfo=UTC)
    client.trigger("bench_000", "bf-2__a", Window(start, start + timedelta(days=1)), conf={})
    time.sleep(0.2)
    started = client.started_runs_json(["bench_000"], since=before)
    assert [(r["dag_run_id"], r["state"]) for r in started] == [("bf-2__a", "running")]
    assert client.ended_runs_json(["bench_000"], since=before) == []
    time.sleep(0.3)
    assert [r["state"] for r in client.ended_runs_json(["bench_000"], since=before)] == ["success"]
    assert client.ended_runs_json(["bench_000"], since=time.time() + 5) == []
    assert client.started_runs_json(["other"], since=before) == []
