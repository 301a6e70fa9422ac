"""The Celery application, configured from ``celeryconfig.py``."""

import logging
import os
from typing import Any

from celery import Celery, signals

from workers import lean_retry, metrics, transport

lean_retry.install()  # a look at a run is a Celery retry: no traceback for it (see the module)
transport.install()  # one Redis client per broker channel, not one per command (see the module)

app = Celery("backfill", include=["workers.tasks"])
app.config_from_object("celeryconfig")


# Celery logs every task it receives and every task that ends: here, every look at a run, i.e.
# hundreds of lines a minute that say nothing the orchestrator's own line per state change does
# not (and formatting them was a tenth of a worker's CPU, bench B4). Errors still show.
QUIET = ("celery.worker.strategy", "celery.app.trace")


@signals.worker_init.connect
def _reset_metrics(**_: Any) -> None:
    metrics.reset(os.environ)


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    metrics.serve(os.environ)  # after the pool forked: its processes must not inherit the socket


@signals.worker_ready.connect
def _check_redis(**_: Any) -> None:
    """Say at start what this Redis lacks for the orchestrator (docs/setup.md, Redis requirements)."""
    import redis

    from backfill.redis_check import redis_problems

    try:
        settings = app.conf.backfill_settings
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
        problems = redis_problems(client)
    except redis.RedisError as exc:
        logging.getLogger("backfill").warning("could not check Redis's configuration: %s", exc)
        return
    for level, message in problems:
        logging.getLogger("backfill").log(logging.ERROR if level == "error" else logging.WARNING, "Redis: %s", message)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: logging.Logger | None = None, **_: Any) -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
    if app.conf.backfill_settings.log_format == "json":
        from backfill.logs import use_json

        use_json(*([logger] if logger else []))
