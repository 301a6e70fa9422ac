"""Log output: one line per state change, as text (default) or JSON for log shippers.

The runner logs each window's state change with its facts in ``extra={"backfill": {...}}``
(backfill id, DAG, window, position, Airflow run id, state, duration, reason). The text
format shows them in the message; ``BACKFILL_LOG_FORMAT=json`` turns every record of the
worker (ours and Celery's) into one JSON object per line with those facts as fields.
Credentials are never logged: the Airflow client logs nothing and no setting is printed.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "backfill", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def use_json(*loggers: logging.Logger) -> None:
    """Give every handler of these loggers (and the root logger) the JSON format."""
    for logger in (logging.getLogger(), *loggers):
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
