"""Redis restarted and Airflow's API unreachable mid-backfill: the backfill completes, every
window runs once, serially, and nothing fails because of the outage alone.

Each test runs an orchestrator of its own (its own worker and Redis database or server) on the
session's Airflow, so the fault hits nothing else, and submits through the celery CLI as a user
would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from backfill.record import Record
from backfill.windows import window_spec
from tests.conftest import WORKER_ENV
from tests.integration.helpers import Proxy, assert_serial, runs, wait_done, wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def celery_submit(env: dict[str, str], **kwargs: object) -> None:
    out = subprocess.run(
        [BIN / "celery", "-A", "workers", "call", "backfill.submit_backfill", "--kwargs", json.dumps(kwargs)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def start_and_wait_for_a_first_window(
    env: dict[str, str], record: Record, dags: list[str], start: str, end: str
) -> str:
    """Submit through the celery CLI; return the backfill id once a first window succeeded."""
    celery_submit(env, dags=dags, start=start, end=end, conf={"sleep": 2})
    bf = wait_for(lambda: (record.recent(1) or [None])[0], timeout=60, what="the backfill's record")
    wait_for(lambda: any(record.dag(bf, d).counts["success"] for d in dags), 120, "a first window done")
    return bf


def assert_each_window_ran_once_serially(orch, bf: str, dags: list[str], start: str, end: str) -> None:
    spec = window_spec(start, end, "daily")
    for dag in dags:
        rs = runs(orch.airflow, dag, bf)
        assert Counter(r.logical_date for r in rs) == Counter(w.start for w in spec), dag
        assert {r.state for r in rs} == {"success"}, dag
        assert_serial(rs)


def test_redis_restarted_mid_backfill_loses_nothing(orch):
    redis_restart(orch, "2022-04-01", "2022-04-05")


def redis_restart(orch, start: str, end: str) -> None:
    stack = orch.stack
    session_url = stack.redis_url
    url = stack.start_redis(appendonly=True)  # as docker-compose.yaml runs it
    stack.redis_url = session_url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    env = {**WORKER_ENV, "BACKFILL_REDIS_URL": url}
    worker = stack.start_worker("redis-restart", concurrency=2, **env)
    client = redis.Redis.from_url(url, socket_timeout=5)
    record = Record(client, prefix="backfill", ttl=3600)
    dags = ["etl_orders", "etl_users"]
    try:
        bf = start_and_wait_for_a_first_window(stack.env(**env), record, dags, start, end)
        redis_proc = next(p for p in stack.procs if p.name == f"redis-{port}")
        redis_proc.signal(signal.SIGTERM)  # a restart: Redis writes its AOF and exits
        redis_proc.popen.wait(20)
        stack.procs.remove(redis_proc)
        time.sleep(3)
        stack.start_redis(port, appendonly=True)  # same port, same data directory
        stack.redis_url = session_url
        # kombu 5.7 can crash the worker's main process when the broker connection drops
        # ("Unrecoverable error: AttributeError ... 'hostname'" while restoring unacked
        # messages). Like docker-compose's `restart: unless-stopped`, start it again.
        restarts = 0

        def finished_or_supervised() -> dict[str, str] | None:
            nonlocal worker, restarts
            if not worker.alive():
                stack.stop(worker)
                worker = stack.start_worker("redis-restart", concurrency=2, **env)
                restarts += 1
            return _finished(record, bf)

        meta = wait_for(finished_or_supervised, timeout=300, what="the backfill to end after the restart")
        assert meta["state"] == "succeeded", meta
        print(f"worker restarts after the Redis restart: {restarts}")
        assert_each_window_ran_once_serially(orch, bf, dags, start, end)
        for dag in dags:
            assert record.dag(bf, dag).counts["success"] == window_spec(start, end, "daily").count
    finally:
        client.close()
        stack.stop(worker)


def _finished(record: Record, bf: str) -> dict[str, str] | None:
    try:
        meta = record.meta(bf)
    except redis.ConnectionError:
        return None
    return meta if meta["state"] != "running" else None


def test_airflow_api_unreachable_for_30_s_windows_wait_then_complete(orch):
    stack = orch.stack
    proxy = Proxy(int(stack.airflow_url.rsplit(":", 1)[1]))
    url = stack.redis_url.rsplit("/", 1)[0] + "/5"
    env = {**WORKER_ENV, "BACKFILL_REDIS_URL": url, "AIRFLOW_API_URL": f"http://127.0.0.1:{proxy.port}"}
    worker = stack.start_worker("api-outage", concurrency=2, **env)
    client = redis.Redis.from_url(url)
    client.flushdb()
    record = Record(client, prefix="backfill", ttl=3600)
    dags = ["etl_orders", "etl_users"]
    try:
        bf = start_and_wait_for_a_first_window(stack.env(**env), record, dags, "2022-05-01", "2022-05-05")
        proxy.cut()
        cut_at = time.monotonic()

        def noticed() -> bool:
            return any(
                w.unavailable_since or w.reason == "Airflow unavailable, retrying with backoff"
                for d in dags for w in record.windows(bf, d).values() if w.state not in ("success",)
            )  # fmt: skip

        wait_for(noticed, timeout=30, what="the windows noticing the outage")
        time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))
        assert record.meta(bf)["state"] == "running"
        assert not any(record.dag(bf, d).counts["failed"] for d in dags), "failed during the outage"
        proxy.restore()
        assert wait_done(record, bf, timeout=300)["state"] == "succeeded"
        assert_each_window_ran_once_serially(orch, bf, dags, "2022-05-01", "2022-05-05")
    finally:
        proxy.cut()
        client.flushdb()
        client.close()
        stack.stop(worker)
