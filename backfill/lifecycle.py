"""A backfill's life as Celery chains, in one place: dispatch, each window's step and what
follows it (the chain goes on, stops, or hands on to a duplicate), continuation, the end of a
DAG's part, giving up, and revokes. The Celery tasks (``workers/tasks.py``) are thin: they call
this module and turn its answer (``Next``) into Celery's terms; the fault-injection harness
(``backfill/sim``) calls the same functions under its own simulated broker.

Every entry point is safe to repeat, whatever a crash or a Redis error interrupted:

- ``submit`` publishes the chains *before* it marks the backfill dispatched: a crash between
  the two publishes again on redelivery (a duplicate chain is harmless, see below) rather than
  never;
- ``window`` redoes the bookkeeping after a window's end on every delivery (marking the rest
  not run, closing the DAG: each is idempotent), so a delivery that died half-way through it
  is completed by the redelivered one;
- a delivery of a window that ended before hands on to the next link only if no delivery did
  yet (the next window is still planned); duplicate chains (a publish retried after a crash)
  therefore end by themselves, and each step follows the same run (one run id per window);
- Redis and Airflow errors outside the step are transient: the task is retried with backoff,
  never acked as failed (that would lose the rest of the chain). Other errors (a bug) are
  retried ``MAX_UNEXPECTED_ERRORS`` times, then the window fails as ``on_failure`` says: the
  chain stops (``stop``) or goes on (``continue``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from backfill import metrics
from backfill.context import Context
from backfill.errors import AirflowUnavailable, BackfillNotFound, WindowFailed, describe
from backfill.model import BackfillParams
from backfill.notify import message, notification_id, target
from backfill.record import WindowRecord, text
from backfill.request import check_history, check_in_airflow, concurrency_warnings, new_backfill_id, with_schedules
from backfill.runner import Step, slot_member
from backfill.states import FINISHED, TERMINAL, DagState, WindowState
from backfill.watch import Watched

# The order the DAG's closing log line gives its counts in.
TERMINAL_ORDER = (
    WindowState.SUCCESS,
    WindowState.FAILED,
    WindowState.SKIPPED,
    WindowState.NOT_RUN,
    WindowState.CANCELLED,
)

log = logging.getLogger("backfill")

MAX_UNEXPECTED_ERRORS = 8
TRANSIENT = (RedisError, OperationalError, AirflowUnavailable, ConnectionError, TimeoutError)


def _counts(counts: dict[str, int]) -> dict[str, int]:
    return {str(s): counts.get(s, 0) for s in TERMINAL_ORDER}


def _count_redis_error(exc: BaseException, task: str) -> None:
    if isinstance(exc, RedisError):
        metrics.REDIS_ERRORS.labels(task).inc()


class Publisher(Protocol):
    """How chains reach the broker: Celery canvases in the workers, a simulated broker in the harness."""

    def dispatch(self, params: BackfillParams) -> None:
        """Publish the first segment of every DAG's chain (one group)."""

    def segment(self, params: BackfillParams, dag: str, first_seq: int) -> None:
        """Publish the next segment of ``dag``'s chain, from ``first_seq``."""

    def notify(self, backfill_id: str, event: str, body: dict[str, Any]) -> None:
        """Publish one webhook notification (``backfill.notify``); sent apart from the backfill."""


class Delivery(Protocol):
    """The message being executed, as the broker sees it (Celery's request, or the harness's)."""

    def retry(self, countdown: float, changes: dict[str, Any]) -> BaseException:
        """Publish this message again after ``countdown`` s with ``changes`` to its kwargs (the
        rest of its chain kept); returns what the task raises to end this execution."""

    def hand_on(self) -> None:
        """Publish the chain's next link now (raises if it cannot be published)."""

    def park(self, countdown: float, changes: dict[str, Any], watched: Watched) -> BaseException | None:
        """Keep this message (with ``changes``) parked in Redis until ``watched`` ends or
        ``countdown`` s pass (``backfill.watch``); returns what the task raises to end this
        execution, or None if it could not be parked (then it is retried with a countdown)."""

    def end_chain(self) -> None:
        """Forget the rest of the chain: it is not run here."""


@dataclass(frozen=True, slots=True)
class Next:
    """What the task does after one execution."""

    retry_in: float | None = None  # look again after this many seconds (a Celery retry)
    errors: int = 0  # consecutive errors so far (the retry carries it)
    calls: int = 0  # Airflow requests of the window so far (the retry carries it)
    chain: bool = True  # let the chain go on to its next link
    failed: str | None = None  # end the task as failed with this message (on_failure=stop)
    result: dict[str, Any] = field(default_factory=dict)
    park: Watched | None = None  # wait parked until this run ends (backfill.watch), at most retry_in


def settle(delivery: Delivery, nxt: Next, *, retry_max: float, window: bool) -> dict[str, Any]:
    """Carry out ``nxt`` on ``delivery``: a retry with a countdown, the next link, the chain's end.

    The next link is published here, inside the task, rather than by the broker's tracer after
    it: Celery records a task whose next link cannot be published as failed and acks it (the
    rest of the chain lost); here the task is retried instead, and the repeated step finds the
    window ended and hands on again."""
    changes: dict[str, Any] = {"errors": nxt.errors}
    if window:
        changes["calls"] = nxt.calls
    if nxt.retry_in is not None:
        parked = delivery.park(nxt.retry_in, changes, nxt.park) if nxt.park is not None else None
        raise parked if parked is not None else delivery.retry(nxt.retry_in, changes)
    if nxt.chain and not nxt.failed:
        try:
            delivery.hand_on()
        except Exception as exc:
            delay = min(retry_max, 2.0**nxt.errors)
            log.warning("could not publish the next link (%s), retrying in %.0f s", describe(exc), delay)
            raise delivery.retry(delay, {**changes, "errors": nxt.errors + 1}) from exc
    delivery.end_chain()  # handed on, or the rest of this segment is not run (or runs elsewhere)
    if nxt.failed:
        raise WindowFailed(nxt.failed)
    return nxt.result


class Lifecycle:
    def __init__(self, ctx: Context, publisher: Publisher | None = None) -> None:
        self.ctx = ctx
        self._publisher = publisher

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("this Lifecycle was built without a publisher: it cannot publish chains")
        return self._publisher

    # -- submit -----------------------------------------------------------------------------

    def submit(
        self, params: BackfillParams, *, task_id: str | None, unpause: bool = False,
        new_id: Callable[[], str] = new_backfill_id,
    ) -> tuple[BackfillParams, list[str], bool]:  # fmt: skip
        """Check a validated backfill against Airflow, record it and publish its chains.
        Returns the recorded params, the warnings, and whether the chains were published now.

        The backfill id is tied to the submit task's id: a redelivered submit finds the record
        and goes on to the dispatch, without checking again (a conflict made since could refuse
        a backfill that is already running). Raises ``InputError`` before anything is triggered."""
        ctx = self.ctx
        params = replace(params, backfill_id=self._backfill_id_for(task_id, new_id))
        warnings: list[str] = []
        if ctx.redis.hexists(ctx.record.k_meta(params.backfill_id), "params"):
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
        return params, warnings, self.dispatch(params)

    def retry_submit(self, task_id: str | None) -> bool:
        """After a transient error in ``submit``: whether to retry it (True) or report the error
        (nothing was recorded, nothing will run). A recorded backfill must be dispatched, or it
        would stay "running" with no chain; when Redis cannot say, retry."""
        if not task_id:
            return False
        try:
            bf = self.ctx.redis.get(f"{self.ctx.settings.key_prefix}:submit:{task_id}")
            return bf is not None and bool(self.ctx.redis.hexists(self.ctx.record.k_meta(text(bf)), "params"))
        except Exception:
            return True

    def _backfill_id_for(self, task_id: str | None, new_id: Callable[[], str]) -> str:
        candidate = new_id()
        if not task_id:
            return candidate
        key = f"{self.ctx.settings.key_prefix}:submit:{task_id}"
        self.ctx.redis.set(key, candidate, nx=True, ex=7 * 86400)
        return text(self.ctx.redis.get(key) or candidate)

    def dispatch(self, params: BackfillParams) -> bool:
        """Publish the chains of a recorded backfill unless done already. True if published now."""
        meta = self.ctx.record.k_meta(params.backfill_id)
        if self.ctx.redis.hget(meta, "dispatched") == b"1":
            return False
        self.publisher.dispatch(params)  # first: a crash before the mark publishes again
        self.ctx.redis.hset(meta, "dispatched", "1")
        return True

    # -- one window -------------------------------------------------------------------------

    def window(
        self, backfill_id: str, dag: str, seq: int, *, errors: int = 0, calls: int = 0, executions: int = 0
    ) -> Next:
        """Advance one window by one step, then do what follows its end (see the module)."""
        ctx = self.ctx
        try:
            params = ctx.record.params(backfill_id)
            step = ctx.runner.step(params, dag, seq, calls=calls, executions=executions)
            if not step.done:
                return Next(retry_in=step.delay, calls=ctx.runner.calls(), park=step.watch)
            nxt = self.after(params, dag, seq, step)
            # A repeat may be a retry of a hand-on that failed: keep its backoff growing.
            return replace(nxt, errors=errors) if step.repeat else nxt
        except BackfillNotFound:
            raise
        except Exception as exc:
            return self._error(backfill_id, dag, seq, exc, errors=errors, calls=calls)

    def _error(self, bf: str, dag: str, seq: int, exc: Exception, *, errors: int, calls: int) -> Next:
        delay = min(self.ctx.settings.retry_max, 2.0**errors)
        _count_redis_error(exc, "run_window")
        if isinstance(exc, TRANSIENT) or errors < MAX_UNEXPECTED_ERRORS:
            # Every step is safe to repeat: try again with backoff. Redis errors are never given
            # up on: recording the failure needs Redis too.
            log.warning("%s %s #%d: %s, retrying in %.0f s", bf, dag, seq + 1, describe(exc), delay)
            return Next(retry_in=delay, errors=errors + 1, calls=calls)
        log.error("%s %s #%d: giving up after %d unexpected errors: %s", bf, dag, seq + 1, errors, describe(exc))
        try:
            return self.give_up(bf, dag, seq, f"orchestrator error: {describe(exc)}")
        except Exception as again:
            log.warning("%s %s: could not record giving up (%s), retrying in %.0f s", bf, dag, describe(again), delay)
            return Next(retry_in=delay, errors=errors, calls=calls)

    def give_up(self, bf: str, dag: str, seq: int, reason: str) -> Next:
        """Fail a window the orchestrator cannot advance; the chain then does as ``on_failure`` says."""
        params = self.ctx.record.params(bf)
        idx = params.index_at(seq, dag)
        self.ctx.record.transition(params, dag, idx, WindowState.FAILED, reason=reason)
        rec = self.ctx.record.window(bf, dag, idx)
        step = Step(done=True, state=rec.state, reason=rec.reason, repeat=True)
        self.ctx.runner.release(params, dag, seq)
        return self.after(params, dag, seq, step, repeat_check=False)

    def after(self, params: BackfillParams, dag: str, seq: int, step: Step, *, repeat_check: bool = True) -> Next:
        """What follows a window's end. Idempotent: a redelivery does it again."""
        window = params.window_at(seq, dag)
        result = {"dag": dag, "seq": seq, "window": window.label(), "state": step.state, "reason": step.reason}
        if step.state == WindowState.CANCELLED:
            self.close_dag(params, dag, reason="backfill cancelled")
            return Next(chain=False, result=result)
        if step.state == WindowState.FAILED:
            # On every delivery (a crash may have come between the failure and this publish):
            # the notification's marker keeps it to one.
            self._notify(params, "window_failed", dag=dag, window=window.label(), reason=step.reason)
        if step.state == WindowState.FAILED and params.on_failure == "stop":
            return self.stop_dag(params, dag, seq, window.label(), step.reason, result)
        if step.state == WindowState.NOT_RUN and params.on_failure == "stop" and params.after:
            # Not run because an upstream window did not succeed (backfill.order): the DAG stops too.
            return self.stop_dag(params, dag, seq, window.label(), step.reason, result, ended="was not run")
        if seq + 1 == params.count(dag):
            # The DAG's last window closes it here: a link more (continue_dag) would cost every
            # DAG a message and a task execution (bench B4). On every delivery, as the close is
            # idempotent: a crash before it closes on redelivery.
            self.close_dag(params, dag)
            return Next(chain=False, result=result)
        if repeat_check and step.repeat:
            nxt = self.ctx.record.window(params.backfill_id, dag, params.index_at(seq + 1, dag))
            if nxt.state != WindowState.PLANNED:
                # Handed on already (this is a duplicate or a redelivery): the chain goes on there.
                return Next(chain=False, result={**result, "duplicate": True})
        return Next(result=result)

    def stop_dag(
        self, params: BackfillParams, dag: str, seq: int, label: str, why: str | None, result: dict[str, Any],
        *, ended: str = "failed",
    ) -> Next:  # fmt: skip
        """on_failure=stop: the DAG's remaining windows are recorded as not run; the chain ends."""
        reason = f"window {label} {ended} (on_failure=stop): {why or 'no reason recorded'}"
        self.ctx.record.mark_not_run(params, dag, seq + 1, reason=f"not run: {reason}")
        self.close_dag(params, dag, reason=reason)
        return Next(chain=False, failed=f"{params.backfill_id} {dag}: {reason}", result=result)

    # -- continuation and the end of a DAG --------------------------------------------------

    def continue_dag(self, backfill_id: str, dag: str, seq: int, *, errors: int = 0) -> Next:
        """The last link of a segment: publish the next segment, or close the DAG."""
        ctx = self.ctx
        try:
            params = ctx.record.params(backfill_id)
            if seq < params.count(dag) and not ctx.record.is_cancelled(backfill_id):
                marker = f"{ctx.record.k_dag(backfill_id, dag)}:seg{seq}"
                if ctx.redis.exists(marker):
                    return Next(result={"dag": dag, "continued_at": seq, "duplicate": True})
                self.publisher.segment(params, dag, seq)  # first: a crash before the marker publishes again
                ctx.redis.set(marker, 1, ex=ctx.settings.record_ttl)
                return Next(result={"dag": dag, "continued_at": seq})
            return Next(result=self.close_dag(params, dag))
        except BackfillNotFound:
            raise
        except Exception as exc:
            delay = min(ctx.settings.retry_max, 2.0**errors)
            _count_redis_error(exc, "continue_dag")
            log.warning("%s %s: could not continue at #%d (%s), retrying in %.0f s", backfill_id, dag, seq + 1,
                        describe(exc), delay)  # fmt: skip
            return Next(retry_in=delay, errors=errors + 1)

    def close_dag(self, params: BackfillParams, dag: str, *, reason: str | None = None) -> dict[str, Any]:
        """Record the end of ``dag``'s part (once) and, with the last DAG, of the backfill."""
        ctx = self.ctx
        counts = ctx.record.dag(params.backfill_id, dag).counts
        if ctx.record.is_cancelled(params.backfill_id) or counts[WindowState.CANCELLED]:
            state = DagState.CANCELLED
        elif counts[WindowState.FAILED] or counts[WindowState.NOT_RUN]:
            state = DagState.FAILED
        else:
            state = DagState.SUCCEEDED
        left = ctx.record.finish_dag(params, dag, state, reason=reason)
        to = target(params.notify, ctx.settings.notify_url)
        if to is not None and to.failed_windows and counts[WindowState.FAILED]:
            # A window's own step publishes its failure; one revoked (cancelled) after a crash
            # between its failure and that publish never will: the DAG's close makes sure.
            for idx, rec in sorted(ctx.record.windows(params.backfill_id, dag).items()):
                if rec.state == WindowState.FAILED:
                    label = params.spec.window(idx).label()
                    self._notify(params, "window_failed", dag=dag, window=label, reason=rec.reason)
        if to is not None:
            # Also when closed before (left == -1): a crash may have come between the close and
            # the publish. From the state recorded then: a cancel since may have changed the counts.
            recorded = state if left >= 0 else ctx.record.dag(params.backfill_id, dag).state
            if recorded == DagState.FAILED:
                self._notify(params, "dag_failed", dag=dag, reason=reason, counts=_counts(counts))
        if left >= 0:
            log.info(
                "%s %s DAG %s: %s success, %s failed, %s skipped, %s not run, %s cancelled%s",
                params.backfill_id, dag, state.upper(), *(counts[s] for s in TERMINAL_ORDER),
                f" ({reason})" if reason else "",
            )  # fmt: skip
        if left == 0 or (left < 0 and to is not None):
            meta = ctx.record.meta(params.backfill_id)
            ended = meta.get("state") in (DagState.SUCCEEDED, DagState.FAILED, DagState.CANCELLED)
            if left == 0:
                log.info("%s backfill %s", params.backfill_id, meta.get("state", "?").upper())
            if to is not None and ended:
                each = [ctx.record.dag(params.backfill_id, d).counts for d in params.dags]
                totals = {str(s): sum(c[s] for c in each) for s in TERMINAL_ORDER}
                self._notify(params, "backfill_ended", state=meta.get("state", "?"), counts=totals)
        return {"dag": dag, "state": state}

    def _notify(self, params: BackfillParams, event: str, *, state: str | None = None, **facts: Any) -> None:
        """Publish a notification if the backfill has a webhook (and wants this event), once.

        Called again by every redelivery of the step that caused it; a marker in Redis, set
        after the publish, keeps it to one (a crash between the two sends it twice: at least
        once, never lost). A Redis or broker error raises, as any in the step: the step is
        retried, and this with it (swallowing it would lose the notification)."""
        ctx = self.ctx
        to = target(params.notify, ctx.settings.notify_url)
        if to is None or (event == "window_failed" and not to.failed_windows) or self._publisher is None:
            return
        state = state or (WindowState.FAILED if event == "window_failed" else DagState.FAILED)
        key = notification_id(params.backfill_id, event, facts.get("dag"), facts.get("window"))
        marker = f"{ctx.record.k_meta(params.backfill_id)}:notified:{key}"
        if ctx.redis.exists(marker):
            return
        body = {**message(event, params.backfill_id, state=state, **facts), "id": key}
        self.publisher.notify(params.backfill_id, event, body)
        ctx.redis.set(marker, 1, ex=ctx.settings.record_ttl)

    def cancel_dag(self, params: BackfillParams, dag: str, *, reason: str, fail_running: bool = False) -> int:
        """Record every unfinished window of the DAG as cancelled, free its lock and slots, close it.

        Returns how many windows were cancelled. Safe to repeat and to race with a worker: final
        states are final, so whichever of the two records a window first wins. The DAG's lock
        is left to its holder if that window armed it for a trigger not yet recorded
        (``lock_release_idle.lua``).
        """
        ctx = self.ctx
        bf = params.backfill_id
        done = ctx.record.windows(bf, dag)
        n = 0
        for idx in params.indices(dag):
            rec = done.get(idx) or WindowRecord()
            if rec.state in TERMINAL:
                continue
            why = reason
            if rec.in_flight:
                fate = "marked failed" if fail_running else "left to finish in Airflow"
                why = f"{reason}; run {rec.run} {fate}"
            n += ctx.record.transition(params, dag, idx, WindowState.CANCELLED, reason=why, run=rec.run)
        ctx.locks.release_idle(dag, f"{bf}__")
        ctx.throttle.release(bf, *(slot_member(dag, params.run_id(params.spec.window(i))) for i in params.indices(dag)))
        self.close_dag(params, dag, reason=reason)
        return n

    def revoked(self, bf: str, dag: str, *, whole_backfill: bool) -> None:
        """A window or continuation of ``dag`` was revoked: its chain is broken, so the DAG is
        cancelled (``whole_backfill``: revoked by the backfill's stamp, the backfill is). Done
        even if the DAG was closed already: a step that was looking at its run when the cancel
        came may have kept the DAG's lock or slots since."""
        params = self.ctx.record.params(bf)
        if whole_backfill:
            self.ctx.record.request_cancel(bf)
        if self.ctx.record.dag(bf, dag).state not in FINISHED:
            self.cancel_dag(params, dag, reason="task revoked")
        else:
            self.ctx.locks.release_idle(dag, f"{bf}__")
            members = (slot_member(dag, params.run_id(params.spec.window(i))) for i in params.indices(dag))
            self.ctx.throttle.release(bf, *members)
            # Closed by a delivery whose notification did not get out (a cancel that raised
            # after its close, say): publish it now (once: its marker).
            self.close_dag(params, dag, reason="task revoked")
