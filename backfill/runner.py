"""One window's life, as a state machine advanced one step per task execution.

``WindowRunner.step`` looks at the window once — lock, Airflow, record — does at most one
thing (trigger, clear, record an outcome) and says either "done, in this state" or "look
again in N seconds". The Celery task turns "look again" into ``self.retry(countdown=N)``, so
no worker process is held while a run is queued or running, and the chain stays intact.

Every step is safe to repeat: a redelivered task finds its run by its deterministic run id
(or by the logical date) and follows it instead of triggering a second one.

The logical-date rule (Airflow keeps one run per DAG and logical date; a window's logical
date is its start) is ``backfill.history``'s: on a 409 the window follows its own run, waits
for an active one, skips or re-runs (clears) an ended run that is this window's run, as
``reprocess`` says, and fails (or, with ``on_conflict="skip"``, skips) on a run covering
something else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from backfill import pacing
from backfill.airflow import AirflowClient, RunInfo
from backfill.errors import AirflowConflict, AirflowError, AirflowNotFound, AirflowUnavailable
from backfill.history import decide
from backfill.locks import DagLocks
from backfill.pacing import Pace
from backfill.planning import schedule_of
from backfill.record import TERMINAL, BackfillParams, Record
from backfill.settings import Settings
from backfill.throttle import Throttle
from backfill.windows import Window

log = logging.getLogger("backfill")

WAIT_OUTAGE = "Airflow unavailable, retrying with backoff"


@dataclass(frozen=True, slots=True)
class Step:
    done: bool
    delay: float = 0.0  # not done: look again after this many seconds
    state: str = ""  # done: the window's final state
    reason: str | None = None
    repeat: bool = False  # done before this execution: a redelivery or a duplicate


class WindowRunner:
    def __init__(
        self, *, settings: Settings, airflow: AirflowClient, record: Record, locks: DagLocks, throttle: Throttle
    ) -> None:
        self.settings = settings
        self.airflow = airflow
        self.record = record
        self.locks = locks
        self.throttle = throttle
        self._calls = (0, 0)  # (requests of earlier steps, client counter at this step's start)

    # -- the step -------------------------------------------------------------------------

    def step(self, params: BackfillParams, dag: str, seq: int, *, calls: int = 0) -> Step:
        """``calls``: Airflow requests this window made in its earlier steps; the total is
        recorded with the window's outcome (``api_calls``), to measure the load on Airflow."""
        self._calls = (calls, self.airflow.requests)
        idx = params.index_at(seq, dag)
        window = params.spec.window(idx)
        run_id = params.run_id(window)
        rec, cancelled, pace, lock = self.record.snapshot(params.backfill_id, dag, idx, lock_key=self.locks.key(dag))
        rec["pace"] = Pace.from_record(pace)  # this step's view of the DAG's learnt durations
        rec["lock"] = lock  # (holder, ms to live)
        if rec["state"] in TERMINAL:
            return Step(done=True, state=rec["state"], reason=rec.get("reason"), repeat=True)
        if cancelled:
            return self._finish(params, dag, idx, window, "cancelled", reason="backfill cancelled")
        try:
            step = self._advance(params, dag, idx, window, run_id, rec)
        except AirflowUnavailable as exc:
            return self._outage(params, dag, idx, window, run_id, rec, exc)
        except AirflowError as exc:
            # 401/403/404/4xx: retrying cannot help; say why and stop this window.
            return self._finish(params, dag, idx, window, "failed", reason=str(exc))
        if rec.get("unavailable_since"):
            self.record.note(params, dag, idx, unavailable_since=None, outage_attempts=0)
        return step

    def _advance(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run_id: str, rec: dict[str, Any]
    ) -> Step:
        holder = self._hold(params, dag, run_id, rec)
        if holder is not None:
            return self._wait(params, dag, idx, window, f"DAG locked by {_describe(holder)}", self.settings.busy_poll)
        # The run this window follows: one it re-ran (run_id), or the one it triggered (run).
        followed = rec.get("run_id") or (rec.get("run") if rec["state"] in ("triggered", "running") else None)
        if followed:
            try:
                run = self.airflow.get_run(dag, followed)
            except AirflowNotFound:
                # Deleted in Airflow behind our back: start this window over.
                self.record.note(params, dag, idx, run_id=None, run=None, prev_end=None)
                return Step(done=False, delay=self.settings.poll_min)
            return self._follow(params, dag, idx, window, run, rec)

        why = self._busy(dag, run_id) or self._slot(params, dag, run_id)
        if why:
            return self._wait(params, dag, idx, window, why, self.settings.busy_poll)
        if rec["pace"].total is None and params.seq_of(idx, dag) == 0:
            rec["pace"] = self._seed_pace(params, dag)
        conf = {**params.conf, "window_start": window.start.isoformat(), "window_end": window.end.isoformat()}
        conf["backfill_id"] = params.backfill_id
        try:
            run = self.airflow.trigger(dag, run_id, window, conf=conf, note=f"backfill {params.backfill_id}")
        except AirflowConflict:
            # The logical date is taken (by an earlier run, or our own earlier try). Triggering
            # first and looking only on a conflict saves a request on every window.
            return self._held(params, dag, idx, window, run_id, rec)
        now = time.time()
        # Our clock minus Airflow's (plus half a round trip): places Airflow's start date on ours.
        skew = round(now - run.queued_at.timestamp(), 3) if run.queued_at else 0.0
        self._set(params, dag, idx, window, "triggered", run=run_id, triggered_at=now, skew=skew)
        if self.record.is_cancelled(params.backfill_id):
            # Cancelled while we triggered: the cancel may have listed the runs before ours.
            return self._cancelled(params, dag, idx, window, run_id)
        return Step(done=False, delay=self._poll_delay(rec, 0.0))

    def _held(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run_id: str, rec: dict[str, Any]
    ) -> Step:
        """The trigger found the window's logical date taken: what the run holding it means for
        this window is ``backfill.history``'s rule, the same one ``plan`` and ``submit`` apply."""
        held = self.airflow.runs_at(dag, window.start)
        if not held:  # gone since (deleted): try again
            return Step(done=False, delay=self.settings.poll_min)
        verdict = decide(held[0], window, own_run_id=run_id, schedule=schedule_of(params, dag),
                         reprocess=params.reprocess, lineage=params.lineage)  # fmt: skip
        run = held[0]
        if verdict.action == "follow":
            return self._follow(params, dag, idx, window, run, rec)
        if verdict.action == "wait":
            self.throttle.release(params.backfill_id, slot_member(dag, run_id))
            return self._wait(params, dag, idx, window, verdict.reason, self.settings.busy_poll)
        if verdict.action == "conflict":
            # Appeared after the submit (the submit refuses or skips those it finds).
            state = "skipped" if params.on_conflict == "skip" else "failed"
            return self._finish(params, dag, idx, window, state, reason=verdict.reason, run=run.run_id)
        if verdict.action == "skip":
            return self._finish(params, dag, idx, window, "skipped", reason=verdict.reason, run=run.run_id)
        if verdict.action != "rerun":  # no other verdict for a held date: a bug, never a clear
            raise AssertionError(f"unexpected verdict {verdict.action!r} for run {run.run_id}")
        # The DAG was found free and our slot taken just before the trigger.
        return self._rerun(params, dag, idx, window, run, rec)

    def _hold(self, params: BackfillParams, dag: str, run_id: str, rec: dict[str, Any]) -> str | None:
        """Take or renew the DAG's lock; a window whose run is in flight renews its throttle
        slots in the same round trip. Returns the lock's other holder, if any."""
        if rec["state"] not in ("triggered", "running"):
            return self.locks.acquire(dag, run_id)
        holder, ttl_ms = rec["lock"]
        if holder == run_id and ttl_ms > 750 * self.settings.lock_ttl:
            # Renewed less than a quarter of lock_ttl ago (the slots with it): ours for a while
            # yet. Settings keep lock_ttl at least twice the longest wait, so the next renewal
            # comes by 3/4 of it. Saves a round trip on most looks.
            return None
        member = slot_member(dag, run_id)
        mpd = params.max_parallel_dags
        return self.locks.acquire(
            dag,
            run_id,
            also=lambda pipe: self.throttle.renew(params.backfill_id, member, max_parallel_dags=mpd, client=pipe),
        )

    def _slot(self, params: BackfillParams, dag: str, run_id: str) -> str | None:
        # Run ids repeat across the DAGs of a backfill: a slot is held by (run id, DAG).
        member = slot_member(dag, run_id)
        return self.throttle.acquire(params.backfill_id, member, max_parallel_dags=params.max_parallel_dags)

    def _cancelled(self, params: BackfillParams, dag: str, idx: int, window: Window, run_id: str) -> Step:
        if self.record.meta(params.backfill_id).get("fail_running") == "1":
            self.airflow.fail_run(dag, run_id)
        return self._finish(params, dag, idx, window, "cancelled", reason="backfill cancelled", run=run_id)

    def _busy(self, dag: str, run_id: str) -> str | None:
        others = [r for r in self.airflow.active_runs(dag) if r.run_id != run_id]
        if not others:
            return None
        first = others[0]
        more = f" (+{len(others) - 1} more)" if len(others) > 1 else ""
        return f"DAG busy: run {first.run_id} is {first.state}{more}"

    def _rerun(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run: RunInfo, rec: dict[str, Any]
    ) -> Step:
        # Remember the run and its old end before clearing, so a redelivered task can tell
        # "cleared and finished again" from "crashed before the clear went through".
        self.record.note(params, dag, idx, run_id=run.run_id, prev_end=_iso(run.end_date))
        self.airflow.clear(dag, run.run_id)
        reason = f"re-running existing run {run.run_id} ({run.run_type}, was {run.state}, reprocess={params.reprocess})"
        self._set(params, dag, idx, window, "triggered", reason=reason, run=run.run_id, triggered_at=time.time())
        if self.record.is_cancelled(params.backfill_id):  # as after a trigger: the cancel may have swept before
            return self._cancelled(params, dag, idx, window, run.run_id)
        return Step(done=False, delay=self._poll_delay(rec, 0.0))

    def _follow(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run: RunInfo, rec: dict[str, Any]
    ) -> Step:
        if run.state in ("success", "failed") and rec.get("prev_end") and rec["prev_end"] == _iso(run.end_date):
            # Our clear never took effect (we died in between): clear again.
            return self._rerun(params, dag, idx, window, run, rec)
        elapsed = time.time() - float(rec.get("triggered_at") or time.time())
        if run.state == "queued":
            if rec["state"] not in ("triggered",):
                self._set(params, dag, idx, window, "triggered", run=run.run_id, triggered_at=time.time())
            elif elapsed > max(5.0, 2 * self.settings.busy_poll):
                # Queued for a while: the usual cause is a DAG paused after the submit. Say so
                # (status shows it) and keep waiting: unpausing it lets the run go on.
                paused = self.airflow.get_dag(dag).is_paused
                reason = f"DAG {dag} is paused in Airflow: run {run.run_id} stays queued until it is unpaused"
                if paused != (rec.get("reason") or "").startswith(f"DAG {dag} is paused"):
                    self._set(params, dag, idx, window, "triggered", reason=reason if paused else None, run=run.run_id)
                if paused:
                    return Step(done=False, delay=self.settings.busy_poll, reason=reason)
                # Not started for a while, yet not paused: Airflow is short of capacity. Look
                # (and ask about the pause) no more often than at a busy DAG.
                return Step(done=False, delay=max(self.settings.busy_poll, self._poll_delay(rec, elapsed)))
            return Step(done=False, delay=self._poll_delay(rec, elapsed))
        if run.state == "running":
            if rec["state"] != "running":
                self._set(params, dag, idx, window, "running", run=run.run_id, started=_iso(run.start_date))
            return Step(done=False, delay=self._poll_delay(rec, elapsed, run))
        if rec["state"] != "running" and run.start_date is not None:
            # Paced looks can miss the running phase of a short run: record it anyway, so the
            # events show every window's start in order, live or afterwards.
            self._set(params, dag, idx, window, "running", run=run.run_id, started=_iso(run.start_date))
        duration = (run.end_date - run.start_date).total_seconds() if run.end_date and run.start_date else None
        if run.state == "success":
            return self._finish(
                params, dag, idx, window, "success", run=run.run_id, learnt=self._learn(rec, run),
                started=_iso(run.start_date), ended=_iso(run.end_date), duration=duration,
            )  # fmt: skip
        return self._finish(
            params, dag, idx, window, "failed", reason=f"Airflow run {run.run_id} failed",
            run=run.run_id, started=_iso(run.start_date), ended=_iso(run.end_date), duration=duration,
        )  # fmt: skip

    def calls(self) -> int:
        """Airflow requests of the current window so far, this step's included."""
        before, start = self._calls
        return before + self.airflow.requests - start

    # -- outcomes -------------------------------------------------------------------------

    def _wait(self, params: BackfillParams, dag: str, idx: int, window: Window, reason: str, delay: float) -> Step:
        self._set(params, dag, idx, window, "waiting", reason=reason)
        return Step(done=False, delay=delay, reason=reason)

    def _finish(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        window: Window,
        state: str,
        *,
        reason: str | None = None,
        learnt: Pace | None = None,
        **extra: Any,
    ) -> Step:
        self._set(params, dag, idx, window, state, reason=reason, api_calls=self.calls(), **extra)
        # Our lock token is always our own run id, even when the window re-ran another run.
        token = params.run_id(window)
        member = slot_member(dag, token)

        def release(pipe: Any) -> None:  # the slots, and what the run taught, in the same round trip
            self.throttle.release(params.backfill_id, member, client=pipe)
            if learnt is not None:
                self.record.set_dag(params.backfill_id, dag, client=pipe, **learnt.to_record())

        self.locks.release(dag, token, also=release)
        return Step(done=True, state=state, reason=reason)

    def _outage(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        window: Window,
        run_id: str,
        rec: dict[str, Any],
        exc: AirflowUnavailable,
    ) -> Step:
        now = time.time()
        since = float(rec.get("unavailable_since") or now)
        attempts = int(rec.get("outage_attempts") or 0) + 1
        if now - since > self.settings.give_up_after:
            reason = f"Airflow unreachable for {now - since:.0f} s (BACKFILL_GIVE_UP_AFTER): {exc}"
            return self._finish(params, dag, idx, window, "failed", reason=reason)
        self.record.note(params, dag, idx, unavailable_since=since, outage_attempts=attempts)
        self._hold(params, dag, run_id, rec)  # keep our lock (and slots) alive through the outage
        delay = min(self.settings.retry_max, self.settings.poll_min * 2**attempts)
        log.warning(
            "%s %s %s: %s (attempt %d, next in %.1f s)", params.backfill_id, dag, window.label(), exc, attempts, delay
        )
        if rec["state"] in ("planned", "waiting"):
            self._set(params, dag, idx, window, "waiting", reason=WAIT_OUTAGE)
        return Step(done=False, delay=delay, reason=WAIT_OUTAGE)

    def _set(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        window: Window,
        state: str,
        *,
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        if self.record.transition(params, dag, idx, state, reason=reason, **extra):
            fields = {
                "backfill_id": params.backfill_id, "dag_id": dag, "window_start": window.start.isoformat(),
                "window_end": window.end.isoformat(), "seq": params.seq_of(idx, dag) + 1, "of": params.count(dag),
                "state": state, "run_id": extra.get("run"), "duration": extra.get("duration"), "reason": reason,
            }  # fmt: skip
            log.info(format_line(params, dag, idx, window, state, reason=reason, **extra), extra={"backfill": fields})

    # -- polling --------------------------------------------------------------------------

    def _poll_delay(self, rec: dict[str, Any], elapsed: float, run: RunInfo | None = None) -> float:
        """When to look again at the window's run (``backfill.pacing``)."""
        started = None
        if run is not None and run.start_date is not None and rec.get("triggered_at"):
            started = run.start_date.timestamp() + float(rec.get("skew") or 0.0) - float(rec["triggered_at"])
        return pacing.next_look(
            rec["pace"], elapsed, started=started, floor=self.settings.poll_min, ceiling=self.settings.poll_max
        )

    def _seed_pace(self, params: BackfillParams, dag: str) -> Pace:
        """A DAG's first window: learn from its recent successes in Airflow (one request)."""
        runs = self.airflow.recent_successes(dag, limit=10)
        pace = pacing.seed([(r.end_date - r.start_date).total_seconds() for r in runs if r.end_date and r.start_date])
        if pace.total is not None:
            self.record.set_dag(params.backfill_id, dag, **pace.to_record())
        return pace

    def _learn(self, rec: dict[str, Any], run: RunInfo) -> Pace:
        run_time = (run.end_date - run.start_date).total_seconds() if run.end_date and run.start_date else None
        return pacing.learn(rec["pace"], _trigger_to_end(run), run_time)


def _trigger_to_end(run: RunInfo) -> float | None:
    if run.queued_at is None or run.end_date is None:
        return None
    return (run.end_date - run.queued_at).total_seconds()


def slot_member(dag: str, run_id: str) -> str:
    return f"{run_id}@{dag}"


def _describe(token: str) -> str:
    bf, _, start = token.partition("__")
    return f"backfill {bf} (window starting {start})" if start else token


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def format_line(
    params: BackfillParams, dag: str, idx: int, window: Window, state: str, *, reason: str | None = None, **extra: Any
) -> str:
    """One log line per state change: backfill, DAG, window, position, state, run, reason, duration."""
    seq = params.seq_of(idx, dag)
    parts = [params.backfill_id, dag, window.label(), f"#{seq + 1}/{params.count(dag)}", state.upper()]
    if extra.get("run"):
        parts.append(f"run={extra['run']}")
    if extra.get("duration") is not None:
        parts.append(f"duration={extra['duration']:.1f}s")
    if reason:
        parts.append(f"reason={reason}")
    return " ".join(parts)
