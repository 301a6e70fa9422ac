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

import bisect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import redis

from backfill import pacing
from backfill.airflow import AirflowClient, RunInfo
from backfill.errors import AirflowConflict, AirflowError, AirflowNotFound, AirflowUnavailable, BackfillNotFound
from backfill.eta import estimate
from backfill.gates import held_back
from backfill.history import decide
from backfill.locks import DagLocks, WindowKeys
from backfill.model import BackfillParams
from backfill.order import blocked
from backfill.pacing import Pace
from backfill.record import DagRecord, Record, WindowRecord, text
from backfill.settings import Settings
from backfill.states import IN_FLIGHT, PENDING, TERMINAL, DagState, RunState, WindowState
from backfill.throttle import Throttle
from backfill.watch import Parking, Watched, window_key
from backfill.windows import Window

log = logging.getLogger("backfill")

WAIT_OUTAGE = "Airflow unavailable, retrying with backoff"
QUEUED_SLACK = 0.5  # s: a listed run queued this long before our trigger time is an earlier attempt's
MAX_UNEXPLAINED_CONFLICTS = 8  # 409s with no run at the window's date before the window fails


@dataclass(frozen=True, slots=True)
class Step:
    done: bool
    delay: float = 0.0  # not done: look again after this many seconds
    state: str = ""  # done: the window's final state
    reason: str | None = None
    repeat: bool = False  # done before this execution: a redelivery or a duplicate
    watch: Watched | None = None  # not done: the run whose start or end wakes it (backfill.watch)


class WindowRunner:
    def __init__(
        self, *, settings: Settings, airflow: AirflowClient, record: Record, locks: DagLocks, throttle: Throttle,
        parking: Parking | None = None,
    ) -> None:  # fmt: skip
        self.clock = record.clock
        self._lease_until = 0.0
        self._step_start = 0.0
        self._idx = 0
        self._flying = False
        self._clear_sent = False
        self._dag = ""
        self._executions = 0
        self._pace = Pace()  # this step's view of the DAG's learnt durations
        self.settings = settings
        self.airflow = airflow
        self.record = record
        self.locks = locks
        self.throttle = throttle
        self.parking = parking  # windows in flight wait parked while a watcher is alive
        self._calls = (0, 0)  # (requests of earlier steps, client counter at this step's start)
        self._woken: bytes | None = None  # the run the watcher woke this window for, as listed

    # -- the step -------------------------------------------------------------------------

    def step(self, params: BackfillParams, dag: str, seq: int, *, calls: int = 0, executions: int = 0) -> Step:
        """``calls``: Airflow requests this window made in its earlier steps; the total is
        recorded with the window's outcome (``api_calls``), to measure the load on Airflow;
        ``executions``: this one's number among the window's task executions (``steps``, the
        same for the load on the workers), if known."""
        self._calls = (calls, self.airflow.requests)
        self._dag = dag
        self._executions = executions
        self._clear_sent = False  # this step sent a clear (it may be on its way even if it failed)
        self._step_start = self.clock.now()
        idx = self._idx = params.index_at(seq, dag)
        window = params.spec.window(idx)
        run_id = params.run_id(window)
        woken_key = None
        if self.parking is not None and self.settings.watch_every:
            woken_key = (self.parking.k_ended, window_key(params.backfill_id, dag, seq))
        rec, cancelled, self._pace, (lock_holder, ttl_ms), self._woken = self.record.snapshot(
            params.backfill_id, dag, idx, lock_key=self.locks.key(dag), also=woken_key
        )
        # Until when (this process's clock) the lock is ours, as far as this step knows.
        self._lease_until = self.clock.now() + ttl_ms / 1000 if lock_holder == run_id else 0.0
        self._flying = rec.in_flight  # kept up to date by _set
        if rec.state in TERMINAL:
            return self._repeat(params, dag, window, rec)
        if cancelled:
            return self._finish(params, dag, idx, window, WindowState.CANCELLED, reason="backfill cancelled")
        try:
            step = self._advance(params, dag, idx, window, run_id, rec)
        except AirflowUnavailable as exc:
            step = self._outage(params, dag, idx, window, run_id, rec, exc)
        except AirflowError as exc:
            # 401/403/404/4xx: retrying cannot help; say why and stop this window.
            return self._finish(params, dag, idx, window, WindowState.FAILED, reason=str(exc))
        else:
            if rec.unavailable_since:
                self.record.note(params, dag, idx, unavailable_since=None, outage_attempts=0)
        if not step.done and self._flying:
            if step.watch is None:
                self._keep(params, dag, run_id, step.delay)
            else:  # parked: the watcher renews what it holds (``Parking.hold_all``)
                keys, member = self._keys(params, dag, idx), slot_member(dag, run_id)
                hold = self.locks.hold_spec(dag, run_id, window=keys, member=member, slot_keys=self._slot_keys(params))
                # Until the watcher's next renewal, or a countdown's look should the park fail.
                self._keep(params, dag, run_id, min(step.delay, max(self.settings.hold_every, self.settings.poll_max)))
                step = replace(step, watch=replace(step.watch, hold=hold))
        return step

    def _repeat(self, params: BackfillParams, dag: str, window: Window, rec: WindowRecord) -> Step:
        """The window ended before: a redelivery, or a worker that died between the final state
        and the release. Release again (a no-op if done, or if someone else holds them now)."""
        self._release(params, dag, window)
        return Step(done=True, state=rec.state, reason=rec.reason, repeat=True)

    def _advance(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run_id: str, rec: WindowRecord
    ) -> Step:
        # The run this window follows (one it triggered or re-ran) is followed whoever holds
        # the lock now (ours expired and was taken: the taker's busy check sees our run and
        # waits); the lock and slots are kept at the step's end.
        if rec.in_flight and rec.run:
            try:
                run = self._woken_for(params, dag, idx, rec) or self.airflow.get_run(dag, rec.run)
            except AirflowNotFound:
                # Deleted in Airflow behind our back: start this window over.
                self.record.note(params, dag, idx, run_id=None, run=None, prev_end=None, clear_at=None)
                deleted = f"run {rec.run} was deleted in Airflow"
                self._set(params, dag, idx, window, WindowState.WAITING, reason=deleted, force=True)
                self._flying = False
                return Step(done=False, delay=self.settings.poll_min)
            return self._follow(params, dag, idx, window, run, rec)

        if rec.retry_at and self.clock.now() < rec.retry_at:  # an attempt failed: the next waits
            return self._retry_wait(params, dag, idx, window, rec)
        claimed = rec.run_id  # a run this window set out to re-run (clear)
        # Asked before the lock (a wait holds nothing), unless the lock is ours already (a step
        # that took it and waited: the check before the trigger asks) or a clear was claimed.
        if not claimed and not self._lease_until:
            held_back = self._start_gate(params, run_id, dag, rec.attempt, reserve=False)
            if held_back:
                return self._wait(params, dag, idx, window, *held_back)
            # Then the order across DAGs (a retry passed it; so did a step that took the lock).
            ups = (params.after or {}).get(dag)
            if ups and rec.attempt == 1:
                upstream = self._upstream(params, dag, idx, window, ups)
                if upstream is not None:
                    return upstream
        # In a DAG's line a place is a whole run: a priority level is one place there.
        taken = self.locks.take(dag, run_id, head_start=params.priority)
        if taken is not None:  # held by another window, or promised to the one first in line
            who, held = taken
            locked = f"DAG locked by {_describe(who)}" if held else f"DAG next for {_describe(who)}, first in line"
            return self._wait(params, dag, idx, window, locked, self.settings.busy_poll)
        self._lease_until = self.clock.now() + self.locks.ttl
        why = self._busy(dag, run_id, claimed)
        if why:
            return self._wait(params, dag, idx, window, why, self.settings.busy_poll)
        rerun: RunInfo | None = None
        if claimed:
            step, rerun = self._claimed(params, dag, idx, window, claimed, rec)
            if step is not None:
                return step
        if self._pace.total is None and params.seq_of(idx, dag) == 0:
            self._pace = self._seed_pace(params, dag)
        # The start reserved (max_starts_per_hour) once the DAG is free: a start counts when it
        # happens, not while the window waits.
        held_back = self._start_gate(params, run_id, dag, rec.attempt, reserve=True)
        if held_back:
            self.locks.release(dag, run_id)  # a gate's wait (quiet hours, the hourly cap) holds no lock
            self._lease_until = 0.0
            return self._wait(params, dag, idx, window, *held_back)
        # The slots last, then the final check: nothing between a grant and the trigger but
        # one script (lock_arm.lua, in the grant's round trip) that verifies lock, slots and
        # cancel flag together. Run ids repeat across the DAGs of a backfill: a slot is held
        # by (run id, DAG).
        member = slot_member(dag, run_id)

        def arm(pipe: redis.client.Pipeline) -> None:  # with the slot's grant: without it, "slot", and no effect
            self.locks.arm_on(pipe, dag, run_id, window=self._keys(params, dag, idx), member=member,
                              slot_keys=self._slot_keys(params))  # fmt: skip

        why, replies = self.throttle.acquire_then(params.backfill_id, member,
                                                  max_parallel_dags=params.max_parallel_dags,
                                                  priority=params.priority, then=arm)  # fmt: skip
        if why:
            return self._wait(params, dag, idx, window, why, self.settings.busy_poll)
        armed = self.locks.armed(replies[0])
        if armed == "cancelled":
            return self._finish(params, dag, idx, window, WindowState.CANCELLED, reason="backfill cancelled")
        if armed == "ended":  # ended by another delivery meanwhile: the next look says how
            return Step(done=False, delay=self.settings.poll_min)
        if armed != "ok":  # the lock or a slot expired during this step (a slow Airflow): look again
            self.throttle.release(params.backfill_id, member)  # not held while it waits again
            return self._wait(params, dag, idx, window, f"lost the DAG's {'lock' if armed == 'lost' else 'slot'} "
                              "before triggering, trying again", self.settings.poll_min)  # fmt: skip
        self._lease_until = self.clock.now() + self.locks.ttl
        if rerun is not None:  # a clear that never took effect: clear again, gated as a trigger is
            return self._rerun(params, dag, idx, window, rerun, rec, again=True)
        if rec.retry_at and rec.run:  # the next attempt: re-run the run that failed
            try:
                step = self._retry(params, dag, idx, window, rec)
            except AirflowError:
                if not self._clear_sent:  # nothing on its way to Airflow: a cancel may free the DAG
                    self.locks.disarm(dag, run_id)
                raise
            if step is not None:
                return step
        conf = {**params.conf, "window_start": window.start.isoformat(), "window_end": window.end.isoformat()}
        conf["backfill_id"] = params.backfill_id
        try:
            run = self.airflow.trigger(dag, run_id, window, conf=conf, note=f"backfill {params.backfill_id}")
        except AirflowConflict:
            # The logical date is taken (by an earlier run, or our own earlier try). Triggering
            # first and looking only on a conflict saves a request on every window.
            try:
                return self._date_taken(params, dag, idx, window, run_id, rec)
            except AirflowError:
                # Nothing of ours is on its way to Airflow unless a clear was sent: disarm, so a
                # cancel meanwhile frees the DAG instead of leaving it locked for lock_ttl.
                if not self._clear_sent:
                    self.locks.disarm(dag, run_id)
                raise
        now = self.clock.now()
        # Our clock minus Airflow's (plus half a round trip): places Airflow's start date on ours.
        skew = round(now - run.queued_at.timestamp(), 3) if run.queued_at else 0.0
        cancelled = self._triggered(params, dag, idx, window, run_id, run=run_id, triggered_at=now, skew=skew)
        if params.max_starts_per_hour:
            self.throttle.starts.started(params.backfill_id, start_member(dag, run_id, rec.attempt))
        rec.triggered_at = now
        if cancelled:
            # Cancelled while we triggered: the cancel may have listed the runs before ours.
            return self._cancelled(params, dag, idx, window, run_id)
        return self._look(rec, run_id, 0.0)

    def _date_taken(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run_id: str, rec: WindowRecord
    ) -> Step:
        """The trigger found the window's logical date taken: what the run holding it means for
        this window is ``backfill.history``'s rule, the same one ``plan`` and ``submit`` apply."""
        held = self.airflow.runs_at(dag, window.start)
        if not held:
            # A 409 with no run at the date: our run id is taken at another date, or the run
            # was deleted since (or a proxy answers 409). Try again, a bounded number of times.
            try:
                taken = self.airflow.get_run(dag, run_id)
            except AirflowNotFound:
                taken = None
            if taken is not None:
                reason = (f"run id {run_id} is taken in Airflow by a run at another logical date "
                          f"({_iso(taken.logical_date)}); delete that run to backfill this window")  # fmt: skip
                return self._finish(params, dag, idx, window, WindowState.FAILED, reason=reason)
            tries = rec.conflicts_unexplained + 1
            if tries >= MAX_UNEXPLAINED_CONFLICTS:
                reason = f"Airflow refused the trigger {tries} times (409) with no run at {window.key}"
                return self._finish(params, dag, idx, window, WindowState.FAILED, reason=reason)
            self.record.note(params, dag, idx, conflicts_unexplained=tries)
            return Step(done=False, delay=min(self.settings.busy_poll, self.settings.poll_min * 2**tries))
        verdict = decide(held[0], window, own_run_id=run_id, schedule=params.schedule_of(dag),
                         reprocess=params.reprocess, lineage=params.lineage)  # fmt: skip
        run = held[0]
        if verdict.action == "follow":
            return self._follow(params, dag, idx, window, run, rec)
        if verdict.action == "wait":
            fresh = self.record.window(params.backfill_id, dag, idx)
            if run.run_id in (fresh.run_id, fresh.run):  # re-run by a duplicate delivery: ours
                return Step(done=False, delay=self.settings.poll_min)
            self.throttle.release(params.backfill_id, slot_member(dag, run_id))
            return self._wait(params, dag, idx, window, verdict.reason, self.settings.busy_poll)
        if verdict.action == "conflict":
            # Appeared after the submit (the submit refuses or skips those it finds).
            state = WindowState.SKIPPED if params.on_conflict == "skip" else WindowState.FAILED
            return self._finish(params, dag, idx, window, state, reason=verdict.reason, run=run.run_id)
        if verdict.action == "skip":
            return self._finish(params, dag, idx, window, WindowState.SKIPPED, reason=verdict.reason, run=run.run_id)
        if verdict.action != "rerun":  # no other verdict for a held date: a bug, never a clear
            raise AssertionError(f"unexpected verdict {verdict.action!r} for run {run.run_id}")
        owner = self._followed_elsewhere(params, dag, run)
        if owner:  # its end is that window's to record: re-running it now would take it over
            self.throttle.release(params.backfill_id, slot_member(dag, run_id))
            return self._wait(params, dag, idx, window, f"run {run.run_id} is still followed by {owner}, waiting "
                              "for it to record its end", self.settings.busy_poll)  # fmt: skip
        # The DAG was found free and our slot taken just before the trigger.
        return self._rerun(params, dag, idx, window, run, rec)

    def _followed_elsewhere(self, params: BackfillParams, dag: str, run: RunInfo) -> str | None:
        """Which window of another backfill still follows ``run`` (its own run, in flight in its
        record: its worker may be away, its lock expired), if any. Not past the time its message
        takes to come back from a dead worker (visibility timeout) and its lock to expire: a
        window that never stepped again (its chain lost) does not hold the run for ever."""
        other, sep, _ = run.run_id.partition("__")
        if not sep or other == params.backfill_id:
            return None
        try:
            theirs = self.record.params(other)
        except BackfillNotFound:
            return None
        if dag not in theirs.dags or run.logical_date is None:
            return None
        spec = theirs.spec  # windows in order of their start: the run's is found by bisection
        i = bisect.bisect_left(range(len(spec)), run.logical_date, key=lambda j: spec.window(j).start)
        if i >= len(spec) or theirs.run_id(spec.window(i)) != run.run_id:
            return None
        found = self.record.window(other, dag, i)
        away = self.clock.now() - (found.at or 0.0)
        if found.state not in IN_FLIGHT or found.run != run.run_id or away > self._away_max():
            return None
        return f"backfill {other}'s window {spec.window(i).label()}"

    def _away_max(self) -> float:
        return 1.2 * self.settings.visibility_timeout + self.settings.lock_ttl + self.settings.watched_wait

    def _start_gate(
        self, params: BackfillParams, run_id: str, dag: str, attempt: int, *, reserve: bool
    ) -> tuple[str, float] | None:
        # Before the lock (not reserve) the wait holds nothing: it may last up to half the
        # visibility timeout (the bound every countdown keeps), quiet hours end on the minute.
        longest = self.settings.poll_max if reserve else self.settings.visibility_timeout / 2
        member = start_member(dag, run_id, attempt)
        return held_back(params, member, self.throttle.starts, self.clock.now(), reserve=reserve,
                         poll=(self.settings.poll_min, longest))  # fmt: skip

    def _keep(self, params: BackfillParams, dag: str, run_id: str, delay: float) -> None:
        """Keep the lock and slots of a window whose run is in flight until its next step has
        run: renewed when what is left would not cover the wait, how late a countdown can run
        on a busy worker, and a step as slow as Airflow can make it (``Settings.lease_margin``).
        Most looks skip it: the lease lasts several waits."""
        if self._lease_until - self.clock.now() >= delay + self.settings.lease_margin:
            return
        other = self.locks.hold(dag, run_id, window=self._keys(params, dag, self._idx), member=slot_member(dag, run_id),
                                slot_keys=self._slot_keys(params))  # fmt: skip
        if other is None:
            self._lease_until = self.clock.now() + self.locks.ttl

    def _keys(self, params: BackfillParams, dag: str, idx: int) -> WindowKeys:
        return WindowKeys(self.record.k_meta(params.backfill_id), self.record.k_windows(params.backfill_id, dag), idx)

    def _slot_keys(self, params: BackfillParams) -> list[str]:
        return self.throttle.slot_keys(params.backfill_id, max_parallel_dags=params.max_parallel_dags)

    def _cancelled(self, params: BackfillParams, dag: str, idx: int, window: Window, run_id: str) -> Step:
        if self.record.meta(params.backfill_id).get("fail_running") == "1":
            self.airflow.fail_run(dag, run_id)
        return self._finish(params, dag, idx, window, WindowState.CANCELLED, reason="backfill cancelled", run=run_id)

    def _claimed(
        self, params: BackfillParams, dag: str, idx: int, window: Window, claimed: str, rec: WindowRecord
    ) -> tuple[Step | None, RunInfo | None]:
        """The window claimed run ``claimed`` to clear it, and did not record the clear: did it go
        through (follow the run), may it still (wait), or did it never (clear again: the run)?"""
        try:
            run = self.airflow.get_run(dag, claimed)
        except AirflowNotFound:
            self.record.note(params, dag, idx, run_id=None, prev_end=None, clear_at=None)
            return Step(done=False, delay=self.settings.poll_min), None
        if run.active or _iso(run.end_date) != rec.prev_end:
            return self._follow(params, dag, idx, window, run, rec), None  # cleared: ours to follow
        wait = self.settings.write_max - (self.clock.now() - (rec.clear_at or 0.0))
        if wait > 0:  # a clear in flight (ours, or a duplicate delivery's) may yet land
            return Step(done=False, delay=min(wait, self.settings.busy_poll)), None
        return None, run

    def _busy(self, dag: str, run_id: str, claimed: str | None = None) -> str | None:
        others = [r for r in self.airflow.active_runs(dag) if r.run_id not in (run_id, claimed)]
        if not others:
            return None
        first = others[0]
        more = f" (+{len(others) - 1} more)" if len(others) > 1 else ""
        return f"DAG busy: run {first.run_id} is {first.state}{more}"

    def _rerun(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        window: Window,
        run: RunInfo,
        rec: WindowRecord,
        *,
        again: bool = False,
    ) -> Step:
        # Claim the run and remember its old end before clearing, so a redelivered task can
        # tell "cleared and finished again" from "died before the clear went through"; of two
        # deliveries racing here, only the one that wins the claim clears.
        now = self.clock.now()
        # A retry (an earlier attempt failed) of that same run clears its failed tasks only.
        retry = rec.retry_at is not None and rec.attempt > 1 and run.run_id == rec.run
        expect: dict[str, Any] = {"clear_at": rec.clear_at} if again else {"run_id": None}
        if retry:  # and only for this attempt: a stalled delivery of an earlier one claims nothing
            expect["attempt"] = rec.attempt
        if not self.record.claim_all(params, dag, idx, expect, run_id=run.run_id, prev_end=_iso(run.end_date),
                                     clear_at=now):  # fmt: skip
            return Step(done=False, delay=self.settings.poll_min)  # someone else is on it: follow
        self._clear_sent = True
        self.airflow.clear(dag, run.run_id, only_failed=retry)
        if retry:
            reason = f"attempt {rec.attempt} of {params.retries + 1}: re-running the failed tasks of run {run.run_id}"
        else:
            reason = (f"re-running existing run {run.run_id} ({run.run_type}, was {run.state}, "
                      f"reprocess={params.reprocess})")  # fmt: skip
        # The previous attempt's end is not this one's (cancel --fail-running, the report).
        erase = ("ended", "duration", "started") if retry else ()
        cancelled = self._triggered(params, dag, idx, window, params.run_id(window), reason=reason, run=run.run_id,
                                    triggered_at=self.clock.now(), erase=erase)  # fmt: skip
        if params.max_starts_per_hour:
            self.throttle.starts.started(params.backfill_id, start_member(dag, params.run_id(window), rec.attempt))
        if cancelled:  # as after a trigger: the cancel may have swept before
            return self._cancelled(params, dag, idx, window, run.run_id)
        rec.triggered_at = now  # this attempt's, as recorded above
        return self._look(rec, run.run_id, 0.0)

    def _follow(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run: RunInfo, rec: WindowRecord
    ) -> Step:
        now = self.clock.now()
        elapsed = now - (rec.triggered_at or now)
        if run.state not in tuple(RunState):
            why = f"run {run.run_id} is in a state this orchestrator does not know ({run.state!r})"
            return self._stalled(params, dag, idx, window, run, rec, why)
        if run.state == RunState.QUEUED:
            if rec.state != WindowState.TRIGGERED:
                self._set(params, dag, idx, window, WindowState.TRIGGERED, run=run.run_id, triggered_at=now)
            elif elapsed > max(5.0, 2 * self.settings.busy_poll):
                # Queued for a while: the usual cause is a DAG paused after the submit. Say so
                # (status shows it) and keep waiting: unpausing it lets the run go on.
                if self.airflow.get_dag(dag).is_paused:
                    why = f"DAG {dag} is paused in Airflow: run {run.run_id} stays queued until it is unpaused"
                    return self._stalled(params, dag, idx, window, run, rec, why)
                self._unstalled(params, dag, idx, window, run, rec)
                # Not started for a while, yet not paused: Airflow is short of capacity. Look
                # (and ask about the pause) no more often than at a busy DAG.
                return self._look(rec, run.run_id, elapsed, at_least=self.settings.busy_poll)
            return self._look(rec, run.run_id, elapsed)
        if run.state == RunState.RUNNING:
            if rec.state != WindowState.RUNNING:
                self._set(params, dag, idx, window, WindowState.RUNNING, run=run.run_id, started=_iso(run.start_date))
            elif elapsed > max(60.0, 3 * (self._pace.total or 0.0)) and self.airflow.get_dag(dag).is_paused:
                # Later than usual, and paused: Airflow does not schedule the tasks of a paused
                # DAG's running run, so it stalls. Say so, and give up if it lasts.
                why = f"DAG {dag} is paused in Airflow: run {run.run_id} is stalled until it is unpaused"
                return self._stalled(params, dag, idx, window, run, rec, why)
            else:
                self._unstalled(params, dag, idx, window, run, rec)
            return self._look(rec, run.run_id, elapsed, run)
        before: tuple[str, dict[str, Any]] | None = None
        if rec.state != WindowState.RUNNING and run.start_date is not None:
            # Paced looks can miss the running phase of a short run: record it anyway, so the
            # events show every window's start in order, live or afterwards (with the end, in
            # the same round trip).
            before = (WindowState.RUNNING, {"run": run.run_id, "started": _iso(run.start_date)})
        duration = (run.end_date - run.start_date).total_seconds() if run.end_date and run.start_date else None
        if run.state == RunState.SUCCESS:
            return self._finish(
                params, dag, idx, window, WindowState.SUCCESS, run=run.run_id, learnt=self._learn(run),
                started=_iso(run.start_date), ended=_iso(run.end_date), duration=duration, before=before,
            )  # fmt: skip
        ran: dict[str, Any] = {"started": _iso(run.start_date), "ended": _iso(run.end_date), "duration": duration}
        if rec.attempt <= params.retries:
            if before is not None:
                self._set(params, dag, idx, window, before[0], **before[1])
            return self._failed_attempt(params, dag, idx, window, run, rec, ran)
        of = f" (attempt {rec.attempt} of {params.retries + 1})" if params.retries else ""
        return self._finish(
            params, dag, idx, window, WindowState.FAILED, reason=f"Airflow run {run.run_id} failed{of}",
            run=run.run_id, before=before, **ran,
        )  # fmt: skip

    # -- ordering across DAGs ------------------------------------------------------------

    def _upstream(self, params: BackfillParams, dag: str, idx: int, window: Window, ups: list[str]) -> Step | None:
        """The same window of each upstream DAG (``backfill.order``), read from Redis in one
        round trip: None when all are done; else wait (holding nothing) or end as not run."""
        pipe = self.record.redis.pipeline(transaction=False)
        for up in ups:
            pipe.hget(self.record.k_windows(params.backfill_id, up), str(idx))
        states: dict[str, WindowState | None] = {
            up: WindowRecord.from_json(raw).state if params.runs_window(up, idx) else None
            for up, raw in zip(ups, pipe.execute(), strict=True)
        }
        verdict = blocked(states)
        if verdict is None:
            return None
        what, up = verdict
        if what == "ended":
            reason = f"not run: {up} {window.label()} ended {states[up]} (after={up}, on_failure={params.on_failure})"
            return self._finish(params, dag, idx, window, WindowState.NOT_RUN, reason=reason)
        return self._wait(params, dag, idx, window, f"waiting for {up} {window.label()}",
                          self._upstream_delay(params, up, idx))  # fmt: skip

    def _upstream_delay(self, params: BackfillParams, up: str, idx: int) -> float:
        """When to look again at an upstream window: at the upstream's own pace while its run is
        in flight (its DAG's learnt durations; at least a second, Redis only), at its retry's
        time while it waits for one, else as at a busy DAG."""
        bf, now = params.backfill_id, self.clock.now()
        pipe = self.record.redis.pipeline(transaction=False)
        pipe.hget(self.record.k_windows(bf, up), str(idx))
        pipe.hmget(self.record.k_dag(bf, up), list(pacing.FIELDS))
        raw, pace = pipe.execute()
        rec = WindowRecord.from_json(raw)
        if rec.in_flight and rec.triggered_at:
            look = pacing.next_look(Pace.from_record(pace), now - rec.triggered_at, floor=1.0,
                                    ceiling=10 * self.settings.busy_poll)  # fmt: skip
            return max(1.0, look)
        if rec.retry_at and rec.retry_at > now:
            return min(rec.retry_at - now + 1.0, self.settings.visibility_timeout / 2)
        return self.settings.busy_poll

    # -- retries ----------------------------------------------------------------------------

    def _failed_attempt(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run: RunInfo, rec: WindowRecord,
        ran: dict[str, Any],
    ) -> Step:  # fmt: skip
        """An attempt failed and retries are left: the window waits (holding nothing) until
        ``retry_wait`` has passed, then re-runs the same run. One change: the next attempt's
        number, its time and the end of the previous re-run's claim, only if no other delivery
        moved the attempt on first."""
        at = self.clock.now() + params.retry_wait(rec.attempt)
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
        reason = (f"run {run.run_id} failed (attempt {rec.attempt} of {params.retries + 1}): "
                  f"retrying at {when}")  # fmt: skip
        code = self._set(
            params, dag, idx, window, WindowState.WAITING, reason=reason, force=True, run=run.run_id,
            attempt=rec.attempt + 1, retry_at=at, erase=("run_id", "prev_end", "clear_at", "stalled_since"),
            expect=("attempt", rec.attempt if rec.attempt > 1 else None), **ran,
        )  # fmt: skip
        self._flying = False
        if code == 0:  # another delivery scheduled it (its next attempt may hold the DAG now), or it ended
            return Step(done=False, delay=self.settings.poll_min)
        self._release(params, dag, window)
        return Step(done=False, delay=min(at - self.clock.now(), self.settings.visibility_timeout / 2), reason=reason)

    def _retry_wait(self, params: BackfillParams, dag: str, idx: int, window: Window, rec: WindowRecord) -> Step:
        if self._lease_until:  # a redelivery of the step that scheduled the retry: let go, unless
            # another delivery (its clock ahead of ours) armed the DAG for the retry's clear
            if self.locks.release_idle(dag, params.run_id(window)) == 1:
                self.throttle.release(params.backfill_id, slot_member(dag, params.run_id(window)))
            self._lease_until = 0.0
        wait = (rec.retry_at or 0.0) - self.clock.now()
        return Step(done=False, delay=min(max(wait, self.settings.poll_min), self.settings.visibility_timeout / 2),
                    reason=rec.reason)  # fmt: skip

    def _retry(self, params: BackfillParams, dag: str, idx: int, window: Window, rec: WindowRecord) -> Step | None:
        """The window holds its DAG's lock and slots, armed: clear the failed tasks of its run
        (``_rerun``'s claim makes it safe to repeat). None: the run is gone, trigger anew."""
        try:
            run = self.airflow.get_run(dag, rec.run or "")
        except AirflowNotFound:
            self.record.note(params, dag, idx, run=None)
            return None
        if run.state != RunState.FAILED:  # re-run by someone else meanwhile: follow it
            self.locks.disarm(dag, params.run_id(window))
            return self._follow(params, dag, idx, window, run, rec)
        return self._rerun(params, dag, idx, window, run, rec)

    def _stalled(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run: RunInfo, rec: WindowRecord, why: str
    ) -> Step:
        """The run cannot end by itself (a paused DAG, a state we do not know): say so in the
        record and the log, look again at the busy pace, and fail the window if it lasts
        longer than ``give_up_after`` (the run is left as it is in Airflow)."""
        now = self.clock.now()
        since = rec.stalled_since or now
        if now - since > self.settings.give_up_after:
            reason = f"{why}, for {now - since:.0f} s (BACKFILL_GIVE_UP_AFTER); the run is left as it is"
            return self._finish(params, dag, idx, window, WindowState.FAILED, reason=reason, run=run.run_id)
        state = rec.state if rec.state in IN_FLIGHT else WindowState.TRIGGERED
        if rec.reason != why:
            log.warning("%s %s %s: %s", params.backfill_id, dag, window.label(), why)
        self._set(params, dag, idx, window, state, reason=why, run=run.run_id)
        if not rec.stalled_since:
            self.record.note(params, dag, idx, stalled_since=since)
        return Step(done=False, delay=self.settings.busy_poll, reason=why)

    def _unstalled(
        self, params: BackfillParams, dag: str, idx: int, window: Window, run: RunInfo, rec: WindowRecord
    ) -> None:
        if rec.stalled_since:
            self.record.note(params, dag, idx, stalled_since=None)
            self._set(params, dag, idx, window, rec.state, reason=None, run=run.run_id)

    def calls(self) -> int:
        """Airflow requests of the current window so far, this step's included."""
        before, start = self._calls
        return before + self.airflow.requests - start

    # -- outcomes -------------------------------------------------------------------------

    def _wait(self, params: BackfillParams, dag: str, idx: int, window: Window, reason: str, delay: float) -> Step:
        if self._set(params, dag, idx, window, WindowState.WAITING, reason=reason) == 0:
            # In flight or ended meanwhile (a duplicate delivery got further): look again at once.
            return Step(done=False, delay=self.settings.poll_min)
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
        before: tuple[str, dict[str, Any]] | None = None,
        **extra: Any,
    ) -> Step:
        if self._executions:
            extra["steps"] = self._executions

        def then(pipe: redis.client.Pipeline) -> None:  # released after the record, in the same round trip
            self._queue_release(pipe, params, dag, window, learnt=learnt)
            if self.parking is not None:  # the run a wake left for it (read with the snapshot)
                pipe.hdel(self.parking.k_ended, window_key(params.backfill_id, dag, params.seq_of(idx, dag)))

        code, _ = self._set_then(params, dag, idx, window, state, then, reason=reason, before=before,
                                 api_calls=self.calls(), **extra)  # fmt: skip
        self._flying = False
        if code == 0:  # another delivery ended it first: that one hands on
            ended = self.record.window(params.backfill_id, dag, idx)
            return Step(done=True, state=ended.state, reason=ended.reason, repeat=True)
        return Step(done=True, state=state, reason=reason)

    def release(self, params: BackfillParams, dag: str, seq: int) -> None:
        """Give back what the ``seq``-th window of ``dag`` holds (idempotent)."""
        self._release(params, dag, params.window_at(seq, dag))

    def _release(self, params: BackfillParams, dag: str, window: Window) -> None:
        """Give back the window's lock and slots, in one round trip."""
        pipe = self.record.redis.pipeline(transaction=False)
        self._queue_release(pipe, params, dag, window)
        pipe.execute()

    def _queue_release(
        self, pipe: redis.client.Pipeline, params: BackfillParams, dag: str, window: Window, *,
        learnt: Pace | None = None,
    ) -> None:  # fmt: skip
        """Give back the window's lock and slots (and record what its run taught), queued. Our
        lock token is always our own run id, even when the window re-ran another run."""
        token = params.run_id(window)
        self.locks.release_on(pipe, dag, token)
        self.locks.leave_line_on(pipe, dag, token)
        self.throttle.release(params.backfill_id, slot_member(dag, token), client=pipe)
        if learnt is not None:
            self.record.set_dag(params.backfill_id, dag, client=pipe, **learnt.to_record())

    def _outage(
        self,
        params: BackfillParams,
        dag: str,
        idx: int,
        window: Window,
        run_id: str,
        rec: WindowRecord,
        exc: AirflowUnavailable,
    ) -> Step:
        now = self.clock.now()
        since = rec.unavailable_since or now
        attempts = rec.outage_attempts + 1
        if now - since > self.settings.give_up_after:
            reason = f"Airflow unreachable for {now - since:.0f} s (BACKFILL_GIVE_UP_AFTER): {exc}"
            return self._finish(params, dag, idx, window, WindowState.FAILED, reason=reason)
        self.record.note(params, dag, idx, unavailable_since=since, outage_attempts=attempts)
        delay = min(self.settings.retry_max, self.settings.poll_min * 2**attempts)
        log.warning(
            "%s %s %s: %s (attempt %d, next in %.1f s)", params.backfill_id, dag, window.label(), exc, attempts, delay
        )
        if rec.state in PENDING:
            self._set(params, dag, idx, window, WindowState.WAITING, reason=WAIT_OUTAGE)
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
        force: bool = False,
        **extra: Any,
    ) -> int:
        """Record a state (``Record.transition_code``'s answer: 0 if nothing changed)."""
        if state in IN_FLIGHT and extra.get("run"):
            self._flying = True
        code = self.record.transition_code(params, dag, idx, state, reason=reason, force=force, **extra)
        if code == 2:
            log_change(params, dag, idx, window, state, reason=reason, **extra)
        return code

    def _set_then(
        self, params: BackfillParams, dag: str, idx: int, window: Window, state: str,
        then: Callable[[redis.client.Pipeline], Any], *, reason: str | None = None,
        before: tuple[str, dict[str, Any]] | None = None, **extra: Any,
    ) -> tuple[int, list[Any]]:  # fmt: skip
        """``_set`` (after ``before``'s state and facts, if given), and what ``then`` queues
        after it, in one round trip: the transition's code and the answers of the rest."""
        if state in IN_FLIGHT and extra.get("run"):
            self._flying = True
        pipe = self.record.redis.pipeline(transaction=False)
        if before is not None:  # a state to record first (its log line first too)
            self.record.queue_transition(pipe, params, dag, idx, before[0], **before[1])
        self.record.queue_transition(pipe, params, dag, idx, state, reason=reason, **extra)
        then(pipe)
        results = pipe.execute()
        if before is not None and self.record.transitioned(params, dag, idx, before[0], results.pop(0)) == 2:
            log_change(params, dag, idx, window, before[0], **before[1])
        first, *rest = results
        code = self.record.transitioned(params, dag, idx, state, first)
        if code == 2:
            extra.pop("erase", None)
            log_change(params, dag, idx, window, state, reason=reason, **extra)
        return code, rest

    def _triggered(
        self, params: BackfillParams, dag: str, idx: int, window: Window, token: str, *, reason: str | None = None,
        **extra: Any,
    ) -> bool:  # fmt: skip
        """Record the trigger (or clear) sent, disarm the lock (a cancel may free it again) and
        read the cancel flag, in one round trip: True if the backfill is cancelled (the cancel
        may have listed the runs before this one)."""

        def then(pipe: redis.client.Pipeline) -> None:
            self.locks.disarm_on(pipe, dag, token)
            self.record.is_cancelled_on(pipe, params.backfill_id)

        _, (_, cancelled) = self._set_then(params, dag, idx, window, WindowState.TRIGGERED, then, reason=reason,
                                           **extra)  # fmt: skip
        return bool(cancelled == b"1")

    # -- polling --------------------------------------------------------------------------

    def _woken_for(self, params: BackfillParams, dag: str, idx: int, rec: WindowRecord) -> RunInfo | None:
        """The ended run the watcher woke this window for, if it is this attempt's run and end
        (a retry re-runs the same run id: an earlier attempt's end is not this one's)."""
        raw = json.loads(self._woken) if self._woken else None  # read with the snapshot
        if not raw:  # {}: woken with no run (a cancel)
            return None
        run = RunInfo.from_json(raw)
        if run.run_id != rec.run or run.queued_at is None or rec.triggered_at is None or _earlier_attempt(run, rec):
            return None  # (an earlier attempt's run is asked from Airflow instead)
        return run

    def _look(self, rec: WindowRecord, run_id: str, elapsed: float, run: RunInfo | None = None, *,
              at_least: float = 0.0) -> Step:  # fmt: skip
        """Wait for the run's end: woken by the watcher at its end (a look of its own only every
        ``watch_fallback``, should the watcher miss it), or, with no watcher alive, at the next
        paced look."""
        if self.parking is not None and self.settings.watch_every and self.parking.alive():
            # On Airflow's clock: it lists by its dates. A run this window follows without having
            # triggered it (found after a lost trigger answer) dates from its own queueing.
            if rec.triggered_at:
                since = rec.triggered_at - rec.skew
            elif run is not None and run.queued_at is not None:
                since = run.queued_at.timestamp()
            else:
                since = self.clock.now() - rec.skew
            running = run is not None and run.state == RunState.RUNNING
            return Step(done=False, delay=self.settings.watched_wait, watch=Watched(self._dag, run_id, since, running))
        return Step(done=False, delay=max(at_least, self._poll_delay(rec, elapsed, run)))

    def _poll_delay(self, rec: WindowRecord, elapsed: float, run: RunInfo | None = None) -> float:
        """When to look again at the window's run (``backfill.pacing``)."""
        started = None
        if run is not None and run.start_date is not None and rec.triggered_at:
            started = run.start_date.timestamp() + rec.skew - rec.triggered_at
        return pacing.next_look(
            self._pace, elapsed, started=started, floor=self.settings.poll_min, ceiling=self.settings.poll_max
        )

    def _seed_pace(self, params: BackfillParams, dag: str) -> Pace:
        """A DAG's first window: learn from its recent successes in Airflow (one request)."""
        runs = self.airflow.recent_successes(dag, limit=10)
        pace = pacing.seed([(r.end_date - r.start_date).total_seconds() for r in runs if r.end_date and r.start_date])
        if pace.total is not None:
            self.record.set_dag(params.backfill_id, dag, client=None, **pace.to_record())
            self._eta_at_submit(params)
        return pace

    def _eta_at_submit(self, params: BackfillParams) -> None:
        """Once every DAG's pace is seeded from Airflow's recent runs (each DAG's first window
        asks), record the ETA those give from the submit's time (``backfill.eta``): what was
        knowable at submit, shown next to the actual end. Kept once (HSETNX)."""
        bf = params.backfill_id
        pipe = self.record.redis.pipeline(transaction=False)
        pipe.hexists(self.record.k_meta(bf), "eta_at_submit")
        for dag in params.dags:
            pipe.hgetall(self.record.k_dag(bf, dag))
        known, *raw = pipe.execute()
        if known:
            return
        infos = {
            d: DagRecord.from_hash({text(k): text(v) for k, v in r.items()})
            for d, r in zip(params.dags, raw, strict=True)
        }
        _, end = estimate(
            params, {d: replace(i, state=DagState.RUNNING) for d, i in infos.items()}, {}, params.created_at
        )
        if end is not None:
            self.record.redis.hsetnx(self.record.k_meta(bf), "eta_at_submit", round(end, 1))

    def _learn(self, run: RunInfo) -> Pace:
        run_time = (run.end_date - run.start_date).total_seconds() if run.end_date and run.start_date else None
        return pacing.learn(self._pace, _trigger_to_end(run), run_time)


def _trigger_to_end(run: RunInfo) -> float | None:
    if run.queued_at is None or run.end_date is None:
        return None
    return (run.end_date - run.queued_at).total_seconds()


def slot_member(dag: str, run_id: str) -> str:
    return f"{run_id}@{dag}"


def start_member(dag: str, run_id: str, attempt: int) -> str:
    """A start counted by ``max_starts_per_hour``: each attempt of a window is one."""
    return slot_member(dag, run_id) + (f"#{attempt}" if attempt > 1 else "")


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


def record_started(record: Record, key: str, run: dict[str, Any]) -> bool:
    """The watcher saw a watched window's run running (``backfill.watch``): record it running,
    as the window's own look would have, without waking the window (a start costs no task
    execution). Only a window still ``triggered`` with this run moves: a window that moved on
    meanwhile (its end seen, cancelled, a retry waiting) is left as it is. True if recorded."""
    bf, dag, seq = key.rsplit("/", 2)
    params = record.params(bf)
    idx = params.index_at(int(seq), dag)
    rec = record.window(bf, dag, idx)
    if rec.state != WindowState.TRIGGERED or rec.run != run.get("dag_run_id"):
        return False
    run_info = RunInfo.from_json(run)
    if _earlier_attempt(run_info, rec):
        return False
    code = record.transition_code(
        params, dag, idx, WindowState.RUNNING, run=rec.run, started=_iso(run_info.start_date),
        expect=("state", WindowState.TRIGGERED),
    )  # fmt: skip
    if code == 2:
        log_change(params, dag, idx, params.spec.window(idx), WindowState.RUNNING, run=rec.run)
    return code == 2


def _earlier_attempt(run: RunInfo, rec: WindowRecord) -> bool:
    """Whether a run as listed is an earlier attempt's: queued (on our clock: skew is ours minus
    Airflow's at the trigger) before this attempt began. A retry clears the same run id, which
    queues it anew."""
    if run.queued_at is None or not rec.triggered_at:
        return False
    return run.queued_at.timestamp() + rec.skew < rec.triggered_at - QUEUED_SLACK


def log_change(
    params: BackfillParams, dag: str, idx: int, window: Window, state: str, *, reason: str | None = None, **extra: Any
) -> None:
    """The log line of a window's state change (``format_line``), with its fields for JSON logs."""
    fields = {
        "backfill_id": params.backfill_id, "dag_id": dag, "window_start": window.start.isoformat(),
        "window_end": window.end.isoformat(), "seq": params.seq_of(idx, dag) + 1, "of": params.count(dag),
        "state": state, "run_id": extra.get("run"), "duration": extra.get("duration"), "reason": reason,
    }  # fmt: skip
    log.info(format_line(params, dag, idx, window, state, reason=reason, **extra), extra={"backfill": fields})
