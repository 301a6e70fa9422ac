"""The Celery application, configured from ``celeryconfig.py``."""

import logging
from typing import Any

from celery import Celery, signals

app = Celery("backfill", include=["workers.tasks"])
app.config_from_object("celeryconfig")


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: logging.Logger | None = None, **_: Any) -> None:
    if app.conf.backfill_settings.log_format == "json":
        from backfill.logs import use_json

        use_json(*([logger] if logger else []))
