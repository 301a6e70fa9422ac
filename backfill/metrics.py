"""What a worker process measures for Prometheus: its Airflow requests and its Redis errors.

Only what no record holds is counted here; everything a backfill's record says (windows by
state, progress, waits and why, handoffs) is exported from Redis by ``backfill.exporter``,
so a worker's look pays no more than a counter increment for it.

A Celery worker runs its tasks in several forked processes: with ``BACKFILL_METRICS_PORT``
set, ``workers.metrics`` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory before this module
is imported, each process writes its values there (prometheus-client's multiprocess mode, a
few microseconds per increment), and the worker's main process serves their sum.

Labels are bounded: an endpoint is the API's path template (a dozen of them), never a DAG or
a run; an outcome is one of ``OUTCOMES``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# ok: 2xx; client_error: 4xx (an answer, not an outage); server_error: 5xx, 408, 429;
# unreachable: no answer (connection refused, timeout, TLS).
OUTCOMES = ("ok", "client_error", "server_error", "unreachable")

AIRFLOW_REQUESTS = Counter(
    "backfill_airflow_requests",
    "Requests sent to Airflow's REST API, by endpoint (method and path template) and outcome",
    ["endpoint", "outcome"],
)
AIRFLOW_SECONDS = Histogram(
    "backfill_airflow_request_seconds",
    "Time an Airflow API request took, answered or not, by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REDIS_ERRORS = Counter(
    "backfill_redis_errors",
    "Redis errors met by a task (the step is retried with backoff), by task",
    ["task"],
)
# Exported at 0 from the start, so that a rate over them (the dashboard, BackfillRedisErrors)
# has series before the first error.
for _task in ("submit_backfill", "run_window", "continue_dag", "notify"):
    REDIS_ERRORS.labels(_task)


def outcome_of(status: int | None) -> str:
    """The outcome label of an HTTP status (None: no answer)."""
    if status is None:
        return "unreachable"
    if 200 <= status < 300:
        return "ok"
    if status >= 500 or status in (408, 429):
        return "server_error"
    return "client_error"


def request_done(endpoint: str, status: int | None, seconds: float) -> None:
    """Count one request. Never raises: a metric must not change the request's outcome."""
    try:
        AIRFLOW_REQUESTS.labels(endpoint, outcome_of(status)).inc()
        AIRFLOW_SECONDS.labels(endpoint).observe(seconds)
    except Exception:
        pass
