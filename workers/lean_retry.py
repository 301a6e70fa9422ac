"""Celery records a retry the way it records an error, which makes every look at a run costly.

A window's look at its run is a Celery retry (``run_window`` raises ``Retry`` with a countdown):
Flower shows the task as RETRY, the task id and the rest of the chain stay with it. But for a
retry, Celery's tracer builds a ``billiard.einfo.ExceptionInfo``: it copies every frame of the
traceback with its code's positions, formats the traceback with source lines, and returns it,
pickled (about 32 KB), from the pool process to the worker's main process, which unpickles it.
At every look. In bench B4 (200 DAGs in flight) that was the largest single cost of a look.

A look is not an error and its traceback says nothing, so for ``Retry`` only, the tracer here
keeps the exception and no traceback (the event Flower gets still names the reason, e.g.
"Retry in 19.0s"). Every other exception keeps Celery's full ``ExceptionInfo``.

``install()`` swaps the class the tracer uses (``celery.app.trace.ExceptionInfo``);
``tests/unit/test_lean_retry.py`` checks it still takes effect with the Celery in use.
"""

from __future__ import annotations

import sys
from types import TracebackType

from billiard.einfo import ExceptionInfo
from celery.app import trace
from celery.exceptions import Retry

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class LeanRetryInfo(ExceptionInfo):  # type: ignore[misc]  # celery ships no types
    """``ExceptionInfo``, without the traceback when the exception is a ``Retry``."""

    def __init__(self, exc_info: ExcInfo | None = None, internal: bool = False) -> None:
        type_, exc, tb = exc_info or sys.exc_info()
        if not isinstance(exc, Retry):
            super().__init__((type_, exc, tb), internal)
            return
        self.type, self.exception, self.tb = type_, exc, None
        self.traceback = ""
        self.internal = internal


def install() -> None:
    trace.ExceptionInfo = LeanRetryInfo
