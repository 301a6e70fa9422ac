"""A look at a run is a Celery retry: Celery's tracer must not capture its traceback
(``workers/lean_retry.py``), and must still capture every real error's."""

from __future__ import annotations

import pickle

from celery import Celery
from celery.app import trace
from celery.app.trace import build_tracer
from celery.exceptions import Retry

import workers  # noqa: F401  (installs the lean retry info, as in every worker)
from workers.lean_retry import LeanRetryInfo

app = Celery("lean_retry_test", broker="memory://")


@app.task(bind=True, ignore_result=True)
def looks_again(self: object) -> None:
    raise Retry(when=19.0)


@app.task(bind=True, ignore_result=True)
def breaks(self: object) -> None:
    raise ValueError("a real error")


def _trace(task: object) -> object:
    tracer = build_tracer(task.name, task, eager=False, propagate=False, app=app)  # type: ignore[attr-defined]
    request = {"id": "t1", "args": (), "kwargs": {}, "delivery_info": {}, "headers": {}}
    return tracer("t1", (), {}, request).retval


def test_the_worker_app_installs_it() -> None:
    assert trace.ExceptionInfo is LeanRetryInfo


def test_a_retry_reaches_the_main_process_without_its_traceback() -> None:
    info = _trace(looks_again)
    assert isinstance(info.exception, Retry) and info.traceback == "" and info.tb is None
    sent = pickle.dumps(info)  # what the pool process sends to the worker's main process
    assert len(sent) < 1024, len(sent)  # Celery's own: about 32 KB
    back = pickle.loads(sent)
    assert str(back.exception) == "Retry in 19.0s"


def test_a_real_error_keeps_its_traceback() -> None:
    info = _trace(breaks)
    assert "ValueError: a real error" in info.traceback
    assert "in breaks" in info.traceback and info.tb is not None
