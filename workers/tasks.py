"""The Celery tasks of the orchestrator.

- ``backfill.submit_backfill``: validate, plan, record, then dispatch one chain per DAG as a
  group. Returns a summary; bad input raises ``InputError`` before anything is triggered.
- ``backfill.run_window``: one window of one DAG; polls its Airflow run through
  ``self.retry(countdown=...)`` so no worker process is held while it waits.
- ``backfill.continue_dag``: the last link of each chain segment; dispatches the next segment
  (at most ``segment_size`` windows per message) or closes the DAG.

Every task is stamped with ``backfill_id`` (revoke a whole backfill with
``celery -A workers control revoke_by_stamped_headers backfill_id=ID``) and carries the
backfill id, DAG and window in its kwargs, so Flower can show and search them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from celery import Task, chain, group, signals
from celery.canvas import Signature
from celery.exceptions import Reject, Retry
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state

from backfill.context import Context
from backfill.control import cancel_dag, close_dag, resume_params
from backfill.errors import BackfillError, WindowFailed
from backfill.plan import plan
from backfill.planning import (
    Request,
    check_history,
    check_in_airflow,
    check_on_conflict,
    concurrency_warnings,
    new_backfill_id,
    validate,
    with_schedules,
)
from backfill.record import BackfillParams
from workers.app import app

log = logging.getLogger("backfill")

_context: Context | None = None
_context_pid: int | None = None


def context() -> Context:
    """This process's clients (built after fork: sockets must not be shared across workers)."""
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        _context = Context.build(app.conf.backfill_settings)
        _context_pid = os.getpid()
    return _context


# -- submit -------------------------------------------------------------------------------


@app.task(bind=True, name="backfill.submit_backfill")
def submit_backfill(
    self: Task,
    dags: list[str] | None = None,
    start: str | date | datetime | None = None,
    end: str | date | datetime | None = None,
    batch: str = "daily",
    *,
    tz: str | None = None,
    reverse: bool = False,
    conf: dict[str, Any] | None = None,
    on_failure: str = "stop",
    reprocess: str = "none",
    unpause: bool = False,
    max_parallel_dags: int | None = None,
    on_conflict: str | None = None,
    dry_run: bool = False,
    resume: str | None = None,
) -> dict[str, Any]:
    """Plan a backfill of ``dags`` over [start, end] in ``batch`` windows and start it.

    ``dry_run=True`` returns the plan (windows per DAG in run order, what each does about the
    runs the DAG already has, Airflow's view of each DAG, an estimate) and starts nothing.
    ``on_conflict``: what becomes of a window whose logical date is held by a run covering
    something else: ``"refuse"`` the backfill (the default) or ``"skip"`` those windows.
    ``resume=ID`` starts a new backfill of the windows of backfill ``ID`` that did not
    succeed, with its rules (``on_conflict`` may be given anew); the other arguments are ignored.
    Raises ``InputError`` (nothing triggered) for bad input, unknown or paused DAGs.
    """
    ctx = context()
    if resume is not None:
        params = resume_params(ctx, resume)
        if on_conflict is not None:
            params = replace(params, on_conflict=check_on_conflict(on_conflict))
    else:
        request = Request(
            dags=dags or [], start=start, end=end, batch=batch, tz=tz, reverse=reverse, conf=conf,
            on_failure=on_failure, reprocess=reprocess, unpause=unpause, on_conflict=on_conflict or "refuse",
            max_parallel_dags=ctx.settings.max_parallel_dags if max_parallel_dags is None else max_parallel_dags,
        )  # fmt: skip
        params = validate(request, max_windows=ctx.settings.max_windows)
    if dry_run:
        return plan(ctx.airflow, params, unpause=unpause, global_limit=ctx.settings.global_max_runs)
    params = replace(params, backfill_id=_backfill_id_for(ctx, self.request.id))
    warnings: list[str] = []
    if ctx.redis.hexists(ctx.record.k_meta(params.backfill_id), "params"):
        # A redelivered submit: checked and recorded already. Checking again could refuse a
        # backfill that is running (a conflict made since), so go on to the dispatch.
        params = ctx.record.params(params.backfill_id)
    else:
        infos = check_in_airflow(ctx.airflow, params.dags, unpause=unpause)
        params = with_schedules(params, infos)
        check_history(ctx.airflow, params)  # conflicts refused before anything is triggered
        warnings = concurrency_warnings(infos)
        for dag in (d for d, info in infos.items() if info.is_paused):
            ctx.airflow.set_paused(dag, False)
            log.info("%s unpaused DAG %s (unpause=True)", params.backfill_id, dag)
        ctx.record.create(params)
    # A redelivered submit does not dispatch twice.
    if ctx.redis.hsetnx(ctx.record.k_meta(params.backfill_id), "dispatched", "1"):
        # add_to_parent=False: the chains are not "children" of this task's result, which
        # would otherwise carry (and make every caller rebuild) one result per chain.
        group(segment(params, dag, 0) for dag in params.dags).apply_async(add_to_parent=False)
        log.info(
            "%s submitted: %d DAG(s), %d %s window(s) in [%s, %s), %s first%s%s",
            params.backfill_id, len(params.dags), params.total, params.batch, params.start, params.end,
            "newest" if params.reverse else "oldest",
            f", max_parallel_dags={params.max_parallel_dags}" if params.max_parallel_dags else "",
            f", resuming {params.lineage[-1]}" if params.lineage else "",
        )  # fmt: skip
        for warning in warnings:
            log.warning("%s %s", params.backfill_id, warning)
    return {**summary(params), "warnings": warnings}


def _backfill_id_for(ctx: Context, task_id: str | None) -> str:
    candidate = new_backfill_id()
    if not task_id:
        return candidate
    key = f"{ctx.settings.key_prefix}:submit:{task_id}"
    ctx.redis.set(key, candidate, nx=True, ex=7 * 86400)
    return (ctx.redis.get(key) or candidate.encode()).decode()


def summary(params: BackfillParams) -> dict[str, Any]:
    return {
        "backfill_id": params.backfill_id,
        "batches": {dag: params.count(dag) for dag in params.dags},
        "windows": params.total,
        "batch": params.batch,
        "range": [params.start, params.end],
        "order": "newest first" if params.reverse else "oldest first",
        "on_failure": params.on_failure,
        "reprocess": params.reprocess,
        "on_conflict": params.on_conflict,
        "max_parallel_dags": params.max_parallel_dags,
        "resumes": params.lineage[-1] if params.lineage else None,
        "status": f"backfill status {params.backfill_id}",
    }


# -- chains -------------------------------------------------------------------------------


def segment(params: BackfillParams, dag: str, first_seq: int, *, size: int | None = None) -> Signature:
    """The chain of windows ``first_seq .. first_seq + segment_size`` of ``dag``, then a link that
    continues with the next segment. Bounding the links bounds every message's size."""
    last = min(first_seq + (size or app.conf.backfill_settings.segment_size), params.count(dag))
    bf = params.backfill_id
    links = [
        run_window.si(backfill_id=bf, dag_id=dag, seq=seq, window=params.window_at(seq, dag).label()).set(
            task_id=f"{bf}-{dag}-w{seq}"
        )
        for seq in range(first_seq, last)
    ]
    links.append(continue_dag.si(backfill_id=bf, dag_id=dag, seq=last).set(task_id=f"{bf}-{dag}-c{last}"))
    canvas = chain(*links)
    canvas.stamp(backfill_id=bf)
    return canvas


@app.task(bind=True, name="backfill.continue_dag", ignore_result=True)
def continue_dag(self: Task, *, backfill_id: str, dag_id: str, seq: int) -> dict[str, Any]:
    ctx = context()
    params = ctx.record.params(backfill_id)
    if seq < params.count(dag_id) and not ctx.record.is_cancelled(backfill_id):
        marker = f"{ctx.record.k_dag(backfill_id, dag_id)}:seg{seq}"
        if ctx.redis.exists(marker):
            return {"dag": dag_id, "continued_at": seq, "duplicate": True}
        segment(params, dag_id, seq).apply_async(add_to_parent=False)
        ctx.redis.set(marker, 1, ex=ctx.settings.record_ttl)
        return {"dag": dag_id, "continued_at": seq}
    return close_dag(ctx, params, dag_id)


# -- one window ---------------------------------------------------------------------------


# ignore_result: a window's outcome lives in the record, and Flower reads events, not results;
# storing STARTED/RETRY/SUCCESS in Redis at every look was a quarter of a worker's CPU (bench B4).
@app.task(bind=True, name="backfill.run_window", max_retries=None, throws=(WindowFailed,), ignore_result=True)
def run_window(
    self: Task, *, backfill_id: str, dag_id: str, seq: int, window: str = "", errors: int = 0, calls: int = 0
) -> dict[str, Any]:
    """Advance one window; retried with a countdown until its Airflow run has ended."""
    ctx = context()
    try:
        params = ctx.record.params(backfill_id)
        step = ctx.runner.step(params, dag_id, seq, calls=calls)
    except BackfillError:
        raise
    except Exception as exc:
        # Redis trouble or a bug. Every step is safe to repeat, so try again with backoff;
        # give up (failing the window, freeing the DAG) only if it keeps happening.
        if errors < MAX_UNEXPECTED_ERRORS:
            delay = min(ctx.settings.retry_max, 2.0**errors)
            log.warning("%s %s %s: %r, retrying in %.0f s", backfill_id, dag_id, window, exc, delay)
            kwargs = {**self.request.kwargs, "errors": errors + 1, "calls": ctx.runner.calls()}
            raise _again(self, delay, kwargs) from exc
        log.exception("%s %s %s: giving up after %d unexpected errors", backfill_id, dag_id, window, errors)
        _give_up(ctx, backfill_id, dag_id, seq, f"orchestrator error: {exc!r}")
        raise
    if not step.done:
        raise _again(self, step.delay, {**self.request.kwargs, "errors": 0, "calls": ctx.runner.calls()})
    result = {"dag": dag_id, "seq": seq, "window": window, "state": step.state, "reason": step.reason}
    if step.repeat and seq + 1 < params.count(dag_id):
        nxt = ctx.record.window(backfill_id, dag_id, params.index_at(seq + 1, dag_id))
        if nxt["state"] != "planned":
            # A duplicate of a window already handed on: the chain goes on elsewhere.
            self.request.chain = None
            return {**result, "duplicate": True}
    if step.state == "cancelled":
        self.request.chain = None  # drop the rest of this segment
        close_dag(ctx, params, dag_id, reason="backfill cancelled")
        return result
    if step.state == "failed" and params.on_failure == "stop":
        stop_dag(ctx, params, dag_id, seq, window, step.reason)
    return result


MAX_UNEXPECTED_ERRORS = 8


def _again(task: Task, countdown: float, kwargs: dict[str, Any] | None) -> Exception:
    """``task.retry``, except that a retry which cannot be published (the broker is down past
    the publish retry policy) requeues this message instead of dropping it, as Celery would:
    dropping it would lose the window and the rest of its chain. Every step is safe to repeat."""
    try:
        task.retry(countdown=countdown, kwargs=kwargs, throw=False)
    except Reject as exc:
        log.warning("%s: could not publish its next look (%s); requeueing", task.request.id, exc.reason)
        return Reject(exc.reason, requeue=True)
    # Published. The Retry that tells the tracer so need not carry the retried signature (and
    # the rest of the chain) to the worker's main process, as Celery's own does.
    return Retry(when=countdown)


def stop_dag(ctx: Context, params: BackfillParams, dag_id: str, seq: int, window: str, why: str | None) -> None:
    """on_failure=stop: the DAG's remaining windows are recorded as not run; the chain ends."""
    reason = f"window {window} failed (on_failure=stop): {why}"
    ctx.record.mark_not_run(params, dag_id, seq + 1, reason=f"not run: {reason}")
    close_dag(ctx, params, dag_id, reason=reason)
    raise WindowFailed(f"{params.backfill_id} {dag_id}: {reason}")


def _give_up(ctx: Context, backfill_id: str, dag_id: str, seq: int, reason: str) -> None:
    try:
        params = ctx.record.params(backfill_id)
        window = params.window_at(seq, dag_id)
        ctx.record.transition(params, dag_id, params.index_at(seq, dag_id), "failed", reason=reason)
        ctx.locks.release(dag_id, params.run_id(window))
        if params.on_failure == "stop":
            ctx.record.mark_not_run(params, dag_id, seq + 1, reason=f"not run: window {window.label()} failed")
        close_dag(ctx, params, dag_id, reason=reason)
    except Exception:  # best effort: Redis itself may be what is failing
        log.exception("%s %s: could not record the failure", backfill_id, dag_id)


@signals.task_revoked.connect
def _on_revoked(sender: Task | None = None, request: Any = None, **_: Any) -> None:
    """A revoked window or continuation breaks its DAG's chain: record that DAG as cancelled.
    Revoked by the backfill's stamp (``revoke_by_stamped_headers backfill_id=ID``, from our
    CLI or Celery's), it cancels the whole backfill."""
    if sender is None or sender.name not in (run_window.name, continue_dag.name):
        return
    kwargs = getattr(request, "kwargs", None) or {}
    bf, dag = kwargs.get("backfill_id"), kwargs.get("dag_id")
    if not bf or not dag:
        return
    try:
        ctx = context()
        params = ctx.record.params(bf)
        if bf in maybe_list(worker_state.revoked_stamps.get("backfill_id") or []):
            ctx.record.request_cancel(bf)
        if ctx.record.dag(bf, dag).get("state") not in ("succeeded", "failed", "cancelled"):
            cancel_dag(ctx, params, dag, reason="task revoked")
    except Exception:  # a signal handler must not take the worker down
        log.exception("%s %s: could not record the revoke", bf, dag)
