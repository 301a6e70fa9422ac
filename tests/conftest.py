"""Fixtures shared by all tests: one private stack per session, started lazily.

- ``compose``: docker-compose.yaml's services run as processes (``tests/compose_stack.py``):
  the stack every test runs against is the compose file's, command by command;
- ``redis_url``: the compose file's Redis (password, AOF) on a free port (unit tests of locks
  and records use database 1, the orchestrator database 0);
- ``airflow``: a real Airflow 3.3 as the compose file runs it (init, api-server, scheduler,
  dag-processor, triggerer, each a process) on a private PostgreSQL, with the project's example
  DAGs (``BACKFILL_AIRFLOW_BIN`` picks another Airflow 3.x, see scripts/compat.py);
- ``orch``: a real ``celery -A workers worker`` subprocess (2 processes) against both, and the
  orchestrator's modules imported in this process with the same configuration.

Every process is started by ``devstack.Stack`` and stopped by its pid at the end.
"""

from __future__ import annotations

import gc
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from backfill.airflow import AirflowClient, AirflowConfig
from devstack import Stack
from tests.compose_stack import ComposeStack

EXAMPLE_DAG_COUNT = 4 + 50 + 12 + 9  # etl_* + fleet_00..49 + exp_* (experiments) + user_* (user_schedules.py)

# Small segments so that every multi-window test also crosses chain segments; short waits so
# the suite is quick. The worker and this process read the same values.
WORKER_ENV = {
    "BACKFILL_SEGMENT_SIZE": "3",
    "BACKFILL_BUSY_POLL": "1",
    "BACKFILL_POLL_MAX": "5",
    "BACKFILL_RETRY_MAX": "10",
    # A killed worker's messages come back after this (the tests kill workers on purpose).
    "BACKFILL_VISIBILITY_TIMEOUT": "30",
    # A parked window looks at its run itself this often should the watcher miss its end.
    "BACKFILL_WATCH_FALLBACK": "10",
}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("stack")))
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="session")
def compose(stack: Stack) -> ComposeStack:
    return ComposeStack(stack)


@pytest.fixture(scope="session")
def redis_url(compose: ComposeStack) -> str:
    return compose.start_redis()


@pytest.fixture
def scratch_redis(redis_url: str) -> Iterator[redis.Redis]:
    """Database 1 of the session's redis-server, emptied before and after the test."""
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def airflow(stack: Stack, compose: ComposeStack, redis_url: str) -> AirflowClient:
    compose.start_postgres()
    compose.start_airflow(expect_dags=EXAMPLE_DAG_COUNT)
    return AirflowClient(
        AirflowConfig(url=stack.airflow_url, username=stack.airflow_user, password=stack.airflow_password)
    )


@pytest.fixture(scope="session")
def orch(stack: Stack, airflow: AirflowClient) -> Iterator[SimpleNamespace]:
    os.environ.update({k: v for k, v in stack.env(**WORKER_ENV).items() if k != "PATH"})
    worker = stack.start_worker("w1", concurrency=2, **WORKER_ENV)
    tasks = importlib.import_module("workers.tasks")
    ctx = tasks.context()
    yield SimpleNamespace(stack=stack, worker=worker, tasks=tasks, ctx=ctx, record=ctx.record, airflow=airflow)
    # Let pending AsyncResults unsubscribe while Redis is still up.
    gc.collect()
    tasks.app.close()
