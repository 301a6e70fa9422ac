"""The Celery tasks of the orchestrator.

- ``backfill.submit_backfill``: validate, plan, record, then dispatch one chain per DAG as a
  group. Returns a summary; bad input raises ``InputError`` before anything is triggered.
- ``backfill.run_window``: one window of one DAG; polls its Airflow run through
  ``self.retry(countdown=...)`` so no worker process is held while it waits.
- ``backfill.continue_dag``: the last link of a chain segment that does not reach the DAG's end;
  dispatches the next segment (at most ``segment_size`` windows per message). The DAG's last
  window closes the DAG.

Every task is stamped with ``backfill_id`` (revoke a whole backfill with
``celery -A workers control revoke_by_stamped_headers backfill_id=ID``) and carries the
backfill id, DAG and window in its kwargs, so Flower can show and search them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from dataclasses import replace
from datetime import date, datetime
from typing import Any, cast

from celery import Task, chain, group, signals, signature
from celery.canvas import Signature
from celery.exceptions import Reject, Retry
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from redis.exceptions import RedisError

from backfill import metrics
from backfill.airflow import AirflowClient
from backfill.commands import resume_params
from backfill.context import Context
from backfill.errors import BackfillNotFound, WindowFailed, describe
from backfill.lifecycle import TRANSIENT, Lifecycle, Next, settle
from backfill.model import BackfillParams
from backfill.notify import ATTEMPTS, TIMEOUT, WebhookError, post, redacted, target
from backfill.preview import preview
from backfill.request import (
    Request,
    check_on_conflict,
    validate,
)
from backfill.runner import record_started
from backfill.watch import Watched, Watcher, window_key
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


class CeleryPublisher:
    """Chains as Celery canvases (``backfill.lifecycle.Publisher``)."""

    def dispatch(self, params: BackfillParams) -> None:
        # add_to_parent=False: the chains are not "children" of the submit's result, which
        # would otherwise carry (and make every caller rebuild) one result per chain.
        group(segment(params, dag, 0) for dag in params.dags).apply_async(add_to_parent=False)

    def segment(self, params: BackfillParams, dag: str, first_seq: int) -> None:
        segment(params, dag, first_seq).apply_async(add_to_parent=False)

    def notify(self, backfill_id: str, event: str, body: dict[str, Any]) -> None:
        # A few quick tries only: the window publishing it must not wait minutes on a broker outage.
        notify.apply_async(kwargs={"backfill_id": backfill_id, "event": event, "body": body}, add_to_parent=False,
                           retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})  # fmt: skip


def lifecycle() -> Lifecycle:
    return Lifecycle(context(), CeleryPublisher())


# -- submit -------------------------------------------------------------------------------


class _SubmitTask(Task):  # type: ignore[misc]
    """``submit_backfill``'s class: a webhook URL given as ``notify`` is a secret (Slack's carry
    their token), and Flower, ``celery inspect`` and the workers' logs show a task's arguments
    from the message's ``kwargsrepr``: that shows the URL's host only."""

    def apply_async(self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        if kwargs and kwargs.get("notify") and "kwargsrepr" not in options:
            options["kwargsrepr"] = repr({**kwargs, "notify": redacted(kwargs["notify"])})
        return super().apply_async(args, kwargs, **options)


@app.task(bind=True, base=_SubmitTask, name="backfill.submit_backfill", max_retries=None)
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
    notify: str | dict[str, Any] | None = None,
    quiet_hours: str | list[str] | None = None,
    max_starts_per_hour: int | None = None,
    retries: int | None = None,
    retry_delay: float | None = None,
    after: dict[str, list[str]] | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """Plan a backfill of ``dags`` over [start, end] in ``batch`` windows and start it.

    ``dry_run=True`` returns the plan (windows per DAG in run order, what each does about the
    runs the DAG already has, Airflow's view of each DAG, an estimate) and starts nothing.
    ``on_conflict``: what becomes of a window whose logical date is held by a run covering
    something else: ``"refuse"`` the backfill (the default) or ``"skip"`` those windows.
    ``resume=ID`` starts a new backfill of the windows of backfill ``ID`` that did not
    succeed, with its rules (``on_conflict`` may be given anew); the other arguments are ignored.
    ``notify``: a webhook URL (or ``{"url": ..., "failed_windows": true}``) told when the
    backfill ends and when a DAG ends failed (``backfill.notify``); default BACKFILL_NOTIFY_URL.
    ``quiet_hours``: ``"08:00-20:00"`` (several with commas, in ``tz``): no window starts then;
    ``max_starts_per_hour``: at most that many windows start in any hour (``backfill.gates``).
    ``retries``: a window whose run fails is re-run (failed tasks cleared) up to that many times,
    ``retry_delay`` seconds later (default 60), doubling each time, at most an hour apart.
    ``after``: ``{"marts": ["staging"]}``: each window of marts starts only once the same
    window of staging succeeded (``backfill.order``); cycles and unknown DAGs are refused.
    ``priority`` (-9 to 9, default 0): under the global cap, a higher one's windows get freed
    slots first, never starving the others (``backfill.throttle.PRIORITY_PLACES``).
    Raises ``InputError`` (nothing triggered) for bad input, unknown or paused DAGs.
    """
    ctx = context()
    if notify:  # the result backend keeps the task's kwargs (result_extended): not the URL
        self.request.kwargs = {**(self.request.kwargs or {}), "notify": redacted(notify)}
    if resume is not None:
        params = resume_params(ctx, resume)
        if on_conflict is not None:
            params = replace(params, on_conflict=check_on_conflict(on_conflict))
    else:
        request = Request(
            dags=dags or [], start=start, end=end, batch=batch, tz=tz, reverse=reverse, conf=conf,
            on_failure=on_failure, reprocess=reprocess, unpause=unpause, on_conflict=on_conflict or "refuse",
            notify=notify, quiet_hours=quiet_hours, max_starts_per_hour=max_starts_per_hour,
            retries=retries, retry_delay=retry_delay, after=after, priority=priority,
            max_parallel_dags=ctx.settings.max_parallel_dags if max_parallel_dags is None else max_parallel_dags,
        )  # fmt: skip
        params = validate(request, max_windows=ctx.settings.max_windows)
    if dry_run:
        return preview(ctx.airflow, params, unpause=unpause, global_limit=ctx.settings.global_max_runs)
    life = lifecycle()
    try:
        params, warnings, published = life.submit(params, task_id=self.request.id, unpause=unpause)
    except TRANSIENT as exc:
        if isinstance(exc, RedisError):
            metrics.REDIS_ERRORS.labels("submit_backfill").inc()
        if not life.retry_submit(self.request.id):
            raise  # nothing recorded: the caller gets the error, nothing runs
        raise _again(self, min(ctx.settings.retry_max, 5.0), {**self.request.kwargs, "notify": notify}) from exc
    if published:
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


def summary(params: BackfillParams) -> dict[str, Any]:
    return {
        "backfill_id": params.backfill_id,
        "batches": {dag: params.count(dag) for dag in params.dags},
        **params.outline(),
        "resumes": params.lineage[-1] if params.lineage else None,
        "status": f"backfill status {params.backfill_id}",
    }


# -- notifications ------------------------------------------------------------------------


# A notification shares the workers' queue; it holds a process for one POST at most (the
# retries are countdowns), and the limits cut a webhook that never answers.
@app.task(
    bind=True, name="backfill.notify", ignore_result=True, max_retries=ATTEMPTS - 1,
    soft_time_limit=3 * TIMEOUT, time_limit=4 * TIMEOUT,
)  # fmt: skip
def notify(self: Task, *, backfill_id: str, event: str, body: dict[str, Any]) -> int | None:
    """POST one notification to the backfill's webhook (``backfill.notify``). The URL is read
    from the record or the settings here, not carried in the message: Flower shows a task's
    arguments, and the URL is a secret. Retried with backoff; never fails the backfill.

    Sent once in normal operation though it may be published twice (a cancel from the CLI and
    a worker's revoke both close the backfill): a send claims the notification's id for the
    time a POST may take, and its success marks it delivered; a copy that finds it delivered
    drops itself, one that finds it being sent looks again shortly. A crash mid-send lets the
    claim expire and the redelivered task send it (at least once)."""
    ctx = context()
    try:
        to = target(ctx.record.params(backfill_id).notify, ctx.settings.notify_url)
        if to is None:
            return None
        done = f"{ctx.record.k_meta(backfill_id)}:delivered:{body.get('id') or event}"
        if ctx.redis.exists(done):
            return None
        if not ctx.redis.set(f"{done}:sending", 1, nx=True, ex=int(4 * TIMEOUT)):
            raise self.retry(countdown=5.0, max_retries=None)
    except BackfillNotFound:
        return None
    except RedisError as exc:
        metrics.REDIS_ERRORS.labels("notify").inc()
        raise self.retry(countdown=5.0, max_retries=None) from exc
    try:
        status = post(to.url, body)
    except WebhookError as exc:
        ctx.redis.delete(f"{done}:sending")
        if exc.retry and self.request.retries < ATTEMPTS - 1:
            delay = 2.0 ** (self.request.retries + 1)
            log.warning("%s %s notification: %s, retrying in %.0f s", backfill_id, event, exc, delay)
            raise self.retry(countdown=delay) from None
        log.error("%s %s notification not delivered: %s (after %d tries)", backfill_id, event, exc,
                  self.request.retries + 1)  # fmt: skip
        return None
    ctx.redis.set(done, 1, ex=ctx.settings.record_ttl)
    ctx.redis.delete(f"{done}:sending")
    return status


# -- chains -------------------------------------------------------------------------------


def segment(params: BackfillParams, dag: str, first_seq: int, *, size: int | None = None) -> Signature:
    """The chain of windows ``first_seq .. first_seq + segment_size`` of ``dag``, then, unless
    it reaches the DAG's last window (which closes the DAG), a link that continues with the next
    segment. Bounding the links bounds every message's size."""
    last = min(first_seq + (size or app.conf.backfill_settings.segment_size), params.count(dag))
    bf = params.backfill_id
    links = [
        run_window.si(backfill_id=bf, dag_id=dag, seq=seq, window=params.window_at(seq, dag).label()).set(
            task_id=f"{bf}-{dag}-w{seq}"
        )
        for seq in range(first_seq, last)
    ]
    if last < params.count(dag):  # the DAG's last window closes the DAG itself (Lifecycle.after)
        links.append(continue_dag.si(backfill_id=bf, dag_id=dag, seq=last).set(task_id=f"{bf}-{dag}-c{last}"))
    links[0].set(**reprs(links[0].kwargs))  # the links after it get theirs when handed on
    canvas = chain(*links)
    canvas.stamp(backfill_id=bf)
    return canvas


@app.task(bind=True, name="backfill.continue_dag", ignore_result=True, max_retries=None)
def continue_dag(self: Task, *, backfill_id: str, dag_id: str, seq: int, errors: int = 0) -> str:
    """The last link of a chain segment: the next segment, or the DAG's end (backfill.lifecycle)."""
    return _follow_up(self, lifecycle().continue_dag(backfill_id, dag_id, seq, errors=errors))


# -- one window ---------------------------------------------------------------------------


# ignore_result: a window's outcome lives in the record, and Flower reads events, not results;
# storing STARTED/RETRY/SUCCESS in Redis at every look was a quarter of a worker's CPU (bench B4).
@app.task(bind=True, name="backfill.run_window", max_retries=None, throws=(WindowFailed,), ignore_result=True)
def run_window(
    self: Task, *, backfill_id: str, dag_id: str, seq: int, window: str = "", errors: int = 0, calls: int = 0
) -> str:
    """Advance one window; retried with a countdown until its Airflow run has ended."""
    executions = self.request.retries + 1  # every look is a retry or a parked message's return
    return _follow_up(self, lifecycle().window(backfill_id, dag_id, seq, errors=errors, calls=calls,
                                               executions=executions))  # fmt: skip


class CeleryDelivery:
    """The task's own message (``backfill.lifecycle.Delivery``)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def retry(self, countdown: float, changes: dict[str, Any]) -> BaseException:
        return _again(self.task, countdown, {**self.task.request.kwargs, **changes})

    def hand_on(self) -> None:
        """Publish the chain's next link as Celery's tracer would after the task returns."""
        request = self.task.request
        if request.chain:
            nxt = signature(request.chain[-1], app=app)
            nxt.apply_async(
                chain=request.chain[:-1],
                parent_id=request.id,
                root_id=request.root_id or request.id,
                **reprs(nxt.kwargs),
            )

    def end_chain(self) -> None:
        self.task.request.chain = None

    def park(self, countdown: float, changes: dict[str, Any], watched: Watched) -> BaseException | None:
        """The message a retry would publish, parked in Redis instead (``backfill.watch``):
        the watcher publishes it when the run ends, or after ``countdown`` s."""
        task, request = self.task, self.task.request
        kwargs = {**request.kwargs, **changes}
        try:
            sig = task.signature_from_request(request, None, kwargs, retries=request.retries + 1)
            context().parking.park(window_key(kwargs["backfill_id"], kwargs["dag_id"], kwargs["seq"]), dict(sig),
                                   countdown, watched)  # fmt: skip
        except Exception as exc:  # never lose the window over it: a countdown, as with no watcher
            if isinstance(exc, RedisError):
                metrics.REDIS_ERRORS.labels("run_window").inc()
            settings = context().settings
            log.warning("%s: could not park its next look (%s): waiting on a countdown", request.id, describe(exc))
            return self.retry(min(countdown, settings.poll_max), changes)
        return cast(BaseException, Retry(when=countdown))  # acked; Flower shows the window waiting (RETRY)


def _follow_up(task: Task, nxt: Next) -> str:
    """Carry out ``nxt``; the task's result is a line (``dag=... seq=... state=success``): Celery
    makes a ``saferepr`` of every result, even unstored, and a dict's cost more than the line."""
    retry_max = context().settings.retry_max
    result = settle(CeleryDelivery(task), nxt, retry_max=retry_max, window=task.name == run_window.name)
    return " ".join(f"{k}={v}" for k, v in result.items() if v is not None)


REPR_MAX = 1024  # characters of a message's kwargsrepr, as Celery's own (amqp.kwargsrepr_maxsize)


def reprs(kwargs: dict[str, Any] | None) -> dict[str, str]:
    """A message's ``argsrepr``/``kwargsrepr`` (what Flower, ``celery inspect`` and the logs
    show), made with ``repr``: Celery's own ``saferepr`` (pure Python, for arguments of any size)
    cost more than a task's own logic on every message (bench B4), and our kwargs are a few
    short values. A webhook URL (``notify``, a secret) shows its host only; at most ``REPR_MAX``
    characters."""
    shown = kwargs or {}
    if shown.get("notify"):
        shown = {**shown, "notify": redacted(shown["notify"])}
    text = repr(shown)
    return {"argsrepr": "()", "kwargsrepr": text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."}


def _again(task: Task, countdown: float, kwargs: dict[str, Any] | None) -> Exception:
    """``task.retry``, except that a retry which cannot be published (the broker is down past
    the publish retry policy) requeues this message instead of dropping it, as Celery would:
    dropping it would lose the window and the rest of its chain. Every step is safe to repeat."""
    try:
        task.retry(countdown=countdown, kwargs=kwargs, throw=False, **reprs(kwargs or task.request.kwargs))
    except Reject as exc:
        log.warning("%s: could not publish its next look (%s); requeueing", task.request.id, exc.reason)
        return cast(Exception, Reject(exc.reason, requeue=True))
    # Published. The Retry that tells the tracer so need not carry the retried signature (and
    # the rest of the chain) to the worker's main process, as Celery's own does.
    return cast(Exception, Retry(when=countdown))


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
    stamped = bf in maybe_list(worker_state.revoked_stamps.get("backfill_id") or [])
    for attempt in range(1, 4):  # Redis may be failing for a moment: the DAG must not stay open
        try:
            lifecycle().revoked(bf, dag, whole_backfill=stamped)
            return
        except BackfillNotFound:
            return
        except Exception:  # a signal handler must not take the worker down
            if attempt == 3:
                log.exception("%s %s: could not record the revoke", bf, dag)
            else:
                time.sleep(0.5 * attempt)


# -- the watcher --------------------------------------------------------------------------

_watcher_stop = threading.Event()


@signals.worker_ready.connect
def _start_watcher(**_: Any) -> None:
    """Every worker runs a watcher thread in its main process (``backfill.watch``); one at a
    time holds the lease and works, the others stand by to take over. With the watcher off
    (``BACKFILL_WATCH_EVERY=0``) the thread only publishes messages parked before, at their
    deadlines."""
    settings = app.conf.backfill_settings
    ctx = context()
    # Its requests go uncounted in Prometheus (a pool process forked while this thread held the
    # metrics' lock would inherit it held): the watcher counts its lists in Redis instead.
    airflow = AirflowClient(settings.airflow, record_metrics=False)
    watcher = Watcher(parking=ctx.parking, airflow=airflow, every=settings.watch_every or 1.0,
                      ceiling=settings.poll_max, publish=_publish_parked,
                      started=functools.partial(record_started, ctx.record),
                      hold_every=settings.hold_every, publish_many=_publish_parked_batch)  # fmt: skip
    _watcher_stop.clear()
    threading.Thread(target=watcher.run, args=(_watcher_stop,), kwargs={"drain_only": not settings.watch_every},
                     name="backfill-watcher", daemon=True).start()  # fmt: skip


# A few quick tries only: a claim lasts a minute, after which the message is due again.
_PARKED_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
# A woken window (its run ended: it records the end and hands on) queues behind a window about
# to trigger (the next link of a chain that just handed on). On Redis 0 goes first (kombu's
# priority steps 0, 3, 6, 9). When hundreds of runs end at once, each DAG's next trigger then
# follows its own end instead of the whole burst of ends (bench B4, longest handoff): behind at
# most the messages a worker has already fetched (worker_prefetch_multiplier x concurrency, less
# the running ones), which priorities in Redis no longer reorder.
WOKEN_PRIORITY = 3


def _publish_parked(message: dict[str, Any]) -> None:
    signature(message, app=app).apply_async(
        retry_policy=_PARKED_RETRY, priority=WOKEN_PRIORITY, **reprs(message.get("kwargs"))
    )


def _publish_parked_batch(messages: list[dict[str, Any]]) -> None:
    """The woken windows' messages in one round trip to the broker (kombu's publish batch): a
    thousand runs ending at once make hundreds of them (bench B4)."""
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            for message in messages:
                signature(message, app=app).apply_async(
                    producer=producer, priority=WOKEN_PRIORITY, **reprs(message.get("kwargs"))
                )
    except Exception as exc:  # some may have gone: every one again, each with retries (a duplicate costs a look)
        log.warning(
            "watcher: publishing %d woken window(s) at once failed (%s): one by one", len(messages), describe(exc)
        )
        for message in messages:
            _publish_parked(message)


@signals.worker_shutdown.connect
def _stop_watcher(**_: Any) -> None:
    _watcher_stop.set()
