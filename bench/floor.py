"""Celery's own cost of a waiting window: the floor B4's CPU per window is measured against.

A worker started with ``celery -A bench.floor`` is the orchestrator's worker (the same app,
``celeryconfig.py``, patches and pool) with one more task, ``bench.floor_look``: a bare task
that re-schedules itself with a countdown, as a window looking at its run does, and does
nothing else (or, with ``url``, one HTTP GET per look, as a look at a run does). Chains of them,
one per DAG, sent as a group from a task on the same worker (``bench.floor_send``: the
orchestrator's group is sent by ``submit_backfill`` there, and counts), make the floor of the
orchestrator's shape: what any design on Celery pays for a window that waits without holding
a worker.
"""

from __future__ import annotations

import json
from typing import Any

import redis
import urllib3
from celery import Task

from workers.app import app
from workers.tasks import _again

DONE_KEY = "bench:floor:done"
_http = urllib3.PoolManager(maxsize=4)  # kept alive, as the Airflow client's pool is
_redis: dict[str, redis.Redis] = {}


@app.task(bind=True, name="bench.floor_look", max_retries=None, ignore_result=True)
def floor_look(self: Task, *, looks: int, every: float, done_url: str, url: str = "", look: int = 0) -> None:
    """One look; ``looks`` in all, ``every`` seconds apart; the last one counts the window done."""
    if url:
        json.loads(_http.request("GET", url).data)  # a look reads the run's state
    if look + 1 < looks:
        # Published as run_window's looks are (workers.tasks._again): the floor is the least
        # that Celery's countdown retry costs, not Celery's default, heavier, retry.
        raise _again(self, every, {**self.request.kwargs, "look": look + 1})
    client = _redis.get(done_url) or _redis.setdefault(done_url, redis.Redis.from_url(done_url))
    client.incr(DONE_KEY)


@app.task(name="bench.floor_send", ignore_result=True)
def floor_send(*, dags: list[str], looks: list[list[int]], every: float, done_url: str, urls: dict[str, str]) -> None:
    """The floor's chains sent from the worker, as the orchestrator's are (``submit_backfill``
    sends its group there): each side pays for sending its own chains."""
    send(dags, looks=looks, every=every, done_url=done_url, urls=urls)


def send(dags: list[str], *, looks: list[list[int]], every: float, done_url: str, urls: dict[str, str]) -> Any:
    """One chain per DAG, its windows making ``looks[i]`` looks each, all sent as one group (as a
    backfill is)."""
    from celery import chain, group

    def link(dag: str, n: int) -> Any:
        return floor_look.si(looks=n, every=every, done_url=done_url, url=urls.get(dag, ""))

    return group(chain(*(link(d, n) for n in ns)) for d, ns in zip(dags, looks, strict=True)).apply_async()
