"""A backfill orchestrator for Apache Airflow 3, built on Celery.

Users submit backfills through the ``workers.tasks.submit_backfill`` task or the ``backfill``
CLI. What this package exports is what a program may build on (everything else is internal and
may change): the window generator, request validation, the model and record of a backfill, the
settings, the Airflow client and the errors. Names load on first use, so importing one module
of the package does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # windows: fromDate -> toDate split into hourly/daily/weekly/monthly windows
    "BATCHES": "backfill.windows",
    "Window": "backfill.windows",
    "WindowSpec": "backfill.windows",
    "window_spec": "backfill.windows",
    # a request, checked before anything is triggered
    "Request": "backfill.request",
    "validate": "backfill.request",
    # the model and its record in Redis
    "BackfillParams": "backfill.model",
    "Record": "backfill.record",
    "WindowRecord": "backfill.record",
    "DagRecord": "backfill.record",
    "WINDOW_STATES": "backfill.states",
    "TERMINAL": "backfill.states",
    "WindowState": "backfill.states",
    "DagState": "backfill.states",
    "RunState": "backfill.states",
    # configuration and Airflow
    "Settings": "backfill.settings",
    "AirflowClient": "backfill.airflow",
    "AirflowConfig": "backfill.airflow",
    # errors (the tree is drawn in backfill.errors)
    "BackfillError": "backfill.errors",
    "InputError": "backfill.errors",
    "AirflowError": "backfill.errors",
    "AirflowUnavailable": "backfill.errors",
    "BackfillNotFound": "backfill.errors",
}

__all__ = [
    "BATCHES",
    "TERMINAL",
    "WINDOW_STATES",
    "AirflowClient",
    "AirflowConfig",
    "AirflowError",
    "AirflowUnavailable",
    "BackfillError",
    "BackfillNotFound",
    "BackfillParams",
    "DagRecord",
    "DagState",
    "InputError",
    "Record",
    "Request",
    "RunState",
    "Settings",
    "Window",
    "WindowRecord",
    "WindowSpec",
    "WindowState",
    "validate",
    "window_spec",
]

if TYPE_CHECKING:
    from backfill.airflow import AirflowClient, AirflowConfig
    from backfill.errors import AirflowError, AirflowUnavailable, BackfillError, BackfillNotFound, InputError
    from backfill.model import BackfillParams
    from backfill.record import DagRecord, Record, WindowRecord
    from backfill.request import Request, validate
    from backfill.settings import Settings
    from backfill.states import TERMINAL, WINDOW_STATES, DagState, RunState, WindowState
    from backfill.windows import BATCHES, Window, WindowSpec, window_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'backfill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
