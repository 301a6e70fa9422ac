"""The named regression cases: each a small schedule with the fault that exposes one hole, and
the hole itself (``bug``: the code as it was, patched back in). A case passes when the current
code shows no violation, and the code with the hole shows the violation named (``expect``):
proof that the case would fail if the fix were undone.

    python -m faults --cases            # run every case, with and without its hole
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from unittest import mock

import faults.run
from backfill import lifecycle, runner, settings
from backfill.lifecycle import Lifecycle, Next
from backfill.locks import DagLocks, WindowKeys
from backfill.record import Record, WindowRecord
from backfill.runner import Step, WindowRunner
from backfill.states import TERMINAL
from faults.airflow import Dag
from faults.run import BackfillSpec, Schedule, UserAction
from faults.world import Fault, Rates, WorldClock


@dataclass
class Case:
    name: str
    why: str  # the hole, as the review found it
    schedule: Schedule
    bug: Callable[[], contextlib.AbstractContextManager[Any]]
    expect: str  # a violation line starting with this shows when the hole is back
    bug_schedule: dict[str, Any] = field(default_factory=dict)  # what the schedule had with the hole


def small(seed: int, *, dags: int = 1, backfills: list[BackfillSpec], **kw: Any) -> Schedule:
    """A quiet schedule: no random faults, runs that succeed, one worker clock."""
    base: dict[str, Any] = dict(seed=seed, dags=[Dag(f"d{i}", queue_delay=1.0) for i in range(dags)], history=[],
                                backfills=backfills, users=[], rates=Rates(), fail_rate=0.0, segment_size=20,
                                skews=(0.0,))  # fmt: skip
    base.update(kw)
    return Schedule(**base)


def bf(seed: int, n: int = 0, *, at: float = 0.0, dags: tuple[str, ...] = ("d0",), start: int = 0, days: int = 1,
       **kw: Any) -> BackfillSpec:  # fmt: skip
    return BackfillSpec(id=f"bf-s{seed}-{n}", at=at, dags=list(dags), start=start, days=days, **kw)


def patched(target: Any, name: str, value: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    return lambda: mock.patch.object(target, name, value)


# -- the holes, as the code had them ------------------------------------------------------


def _after_duplicate_first(
    self: Lifecycle, params: Any, dag: str, seq: int, step: Step, *, repeat_check: bool = True
) -> Next:
    # The old order: a redelivered step that finds the next window not planned takes the
    # "duplicate" branch before it looks at why the window ended.
    if repeat_check and step.repeat and seq + 1 < params.count(dag):
        nxt = self.ctx.record.window(params.backfill_id, dag, params.index_at(seq + 1, dag))
        if nxt.state != "planned":
            return Next(chain=False, result={"duplicate": True})
    return ORIGINAL["after"](self, params, dag, seq, step, repeat_check=False)


def _dispatch_marked_first(self: Lifecycle, params: Any) -> bool:
    if not self.ctx.redis.hsetnx(self.ctx.record.k_meta(params.backfill_id), "dispatched", "1"):
        return False
    self.publisher.dispatch(params)
    return True


def _give_up_ends_chain(self: Lifecycle, bf: str, dag: str, seq: int, reason: str) -> Next:
    params = self.ctx.record.params(bf)
    self.ctx.record.transition(params, dag, params.index_at(seq, dag), "failed", reason=reason)
    self.ctx.runner.release(params, dag, seq)
    if params.on_failure == "stop":
        self.ctx.record.mark_not_run(params, dag, seq + 1, reason="not run")
    self.close_dag(params, dag, reason=reason)
    return Next(chain=False)


def _continue_unguarded(self: Lifecycle, backfill_id: str, dag: str, seq: int, *, errors: int = 0) -> Next:
    params = self.ctx.record.params(backfill_id)
    if seq < params.count(dag) and not self.ctx.record.is_cancelled(backfill_id):
        marker = f"{self.ctx.record.k_dag(backfill_id, dag)}:seg{seq}"
        if self.ctx.redis.exists(marker):
            return Next()
        self.publisher.segment(params, dag, seq)
        self.ctx.redis.set(marker, 1)
        return Next()
    return Next(result=self.close_dag(params, dag))


def _window_after_unguarded(self: Lifecycle, backfill_id: str, dag: str, seq: int, *, errors: int = 0,
                            calls: int = 0) -> Next:  # fmt: skip
    # The bookkeeping after a step ran outside the error handling: a Redis error there failed the task.
    try:
        params = self.ctx.record.params(backfill_id)
        step = self.ctx.runner.step(params, dag, seq, calls=calls)
    except Exception as exc:
        return self._error(backfill_id, dag, seq, exc, errors=errors, calls=calls)
    if not step.done:
        return Next(retry_in=step.delay)
    return self.after(params, dag, seq, step)


def _keep_from_snapshot(self: WindowRunner, params: Any, dag: str, run_id: str, delay: float) -> None:
    # Renewed only when, at the step's start, less than 3/4 of the ttl was left.
    if self._lease_until - self._step_start > 0.75 * self.locks.ttl:
        return
    self.locks.hold(dag, run_id, window=self._keys(params, dag, self._idx), member=runner.slot_member(dag, run_id),
                    slot_keys=self._slot_keys(params))  # fmt: skip


def _old_settings_check(self: settings.Settings) -> None:
    if max(self.poll_max, self.busy_poll, self.retry_max) * 2 > self.lock_ttl:
        raise ValueError("lock_ttl")


@contextlib.contextmanager
def _lease_from_snapshot() -> Iterator[None]:
    with mock.patch.object(WindowRunner, "_keep", _keep_from_snapshot), \
            mock.patch.object(settings.Settings, "__post_init__", _old_settings_check), \
            mock.patch.object(settings.Settings, "slot_ttl", property(lambda self: self.lock_ttl)):  # fmt: skip
        yield


def _no_arm(reply: Any) -> str:
    return "ok"  # the final check's answer ignored


@contextlib.contextmanager
def _unchecked_trigger() -> Iterator[None]:
    with mock.patch("backfill.locks.DagLocks.armed", staticmethod(_no_arm)), \
            mock.patch.object(settings.Settings, "__post_init__", _old_settings_check):  # fmt: skip
        yield


def _cancel_releases_any(self: Any, dag_id: str, prefix: str) -> int:
    holder = self.holder(dag_id)
    return int(bool(holder and holder.startswith(prefix) and self.release(dag_id, holder)))


def _worker_clock(self: Any) -> str:
    return str(int(self.now() * 1000))  # the worker's own clock, skew and all


def _note_in_python(self: Record, params: Any, dag: str, idx: int, **fields: Any) -> bool:
    raw = self.redis.hget(self.k_windows(params.backfill_id, dag), str(idx))
    current = json.loads(raw) if raw else {"state": "planned"}
    if current.get("state") in TERMINAL:
        return False
    current.update(fields)
    self.redis.hset(self.k_windows(params.backfill_id, dag), str(idx), json.dumps(current))
    return True


def _wait_forever(
    self: WindowRunner, params: Any, dag: str, idx: int, window: Any, run: Any, rec: Any, why: str
) -> Step:
    return Step(done=False, delay=self.settings.busy_poll, reason=why)


def _no_release_on_repeat(self: WindowRunner, params: Any, dag: str, window: Any, rec: WindowRecord) -> Step:
    return Step(done=True, state=rec.state, reason=rec.reason, repeat=True)


def _date_taken_retry_forever(
    self: WindowRunner, params: Any, dag: str, idx: int, window: Any, run_id: str, rec: Any
) -> Step:
    if not self.airflow.runs_at(dag, window.start):
        return Step(done=False, delay=self.settings.poll_min)
    return ORIGINAL["_date_taken"](self, params, dag, idx, window, run_id, rec)


def _unknown_is_failed(
    self: WindowRunner, params: Any, dag: str, idx: int, window: Any, run: Any, rec: Any, why: str
) -> Step:
    if "does not know" in why:
        return self._finish(
            params, dag, idx, window, "failed", reason=f"Airflow run {run.run_id} failed", run=run.run_id
        )
    return ORIGINAL["_stalled"](self, params, dag, idx, window, run, rec, why)


def _old_create(self: Record, params: Any) -> bool:
    meta = self.k_meta(params.backfill_id)
    if not self.redis.hsetnx(meta, "params", params.to_json()):
        return False
    pipe = self.redis.pipeline()
    pipe.hset(meta, mapping={"state": "running", "created_at": self.clock.now(), "dags_left": len(params.dags)})
    for dag in params.dags:
        pipe.hset(self.k_dag(params.backfill_id, dag), mapping={"state": "pending", "total": params.count(dag)})
    pipe.execute()
    return True


def _advance_recovering_unlocked(self: WindowRunner, params: Any, dag: str, idx: int, window: Any, run_id: str,
                                 rec: WindowRecord) -> Step:  # fmt: skip
    # A window that had claimed a run to clear followed it at once, and cleared it again if the
    # clear had not taken effect: without the DAG's lock, busy check or slot.
    if rec.run_id and not rec.in_flight:
        run = self.airflow.get_run(dag, rec.run_id)
        if run.state in ("success", "failed") and rec.prev_end == runner._iso(run.end_date):
            return self._rerun(params, dag, idx, window, run, rec, again=True)
        return self._follow(params, dag, idx, window, run, rec)
    return ORIGINAL["_advance"](self, params, dag, idx, window, run_id, rec)


def _revoked_if_open(self: Lifecycle, bf: str, dag: str, *, whole_backfill: bool) -> None:
    params = self.ctx.record.params(bf)
    if whole_backfill:
        self.ctx.record.request_cancel(bf)
    if self.ctx.record.dag(bf, dag).state not in ("succeeded", "failed", "cancelled"):
        self.cancel_dag(params, dag, reason="task revoked")


@contextlib.contextmanager
def _hold_after_cancel() -> Iterator[None]:
    original = DagLocks.hold

    def hold(self: DagLocks, dag_id: str, token: str, *, window: WindowKeys, **kw: Any) -> str | None:
        return original(self, dag_id, token, window=WindowKeys("none", "none", 0), **kw)  # no check of the window

    with mock.patch.object(DagLocks, "hold", hold), mock.patch.object(Lifecycle, "revoked", _revoked_if_open):
        yield


def _settle_unguarded(delivery: Any, nxt: Next, *, retry_max: float, window: bool) -> dict[str, Any]:
    if nxt.retry_in is not None:
        raise delivery.retry(nxt.retry_in, {"errors": nxt.errors, "calls": nxt.calls} if window else {"errors": 0})
    if nxt.chain and not nxt.failed:
        delivery.hand_on()  # Celery's tracer: a publish that fails records the task failed, acked
    if nxt.failed:
        raise lifecycle.WindowFailed(nxt.failed)
    return nxt.result


ORIGINAL: dict[str, Any] = {
    "after": Lifecycle.after,
    "_advance": WindowRunner._advance,
    "_date_taken": WindowRunner._date_taken,
    "_stalled": WindowRunner._stalled,
}


def cases() -> list[Case]:
    out = [
        Case(
            "stop-crash-before-close",
            "a worker killed inside stop_dag, after the not-run marks and before the "
            "DAG is closed: the redelivered step took the duplicate branch; the backfill stayed running",
            small(
                101,
                backfills=[bf(101, days=3)],
                fail_rate=1.0,
                faults=[Fault("redis", "dag_finish", "crash", inside="stop_dag")],
            ),
            patched(Lifecycle, "after", _after_duplicate_first),
            "6",
        ),
        Case(
            "dispatch-marked-before-publish",
            "the submit marked itself dispatched before publishing: a crash in between sent nothing",
            small(102, backfills=[bf(102, days=2)], faults=[Fault("broker", "window", "crash", inside="dispatch")]),
            patched(Lifecycle, "dispatch", _dispatch_marked_first),
            "6",
        ),
        Case(
            "give-up-under-continue",
            "giving up after repeated unexpected errors closed the DAG and ended its "
            "chain even under on_failure=continue: the other windows stayed planned",
            small(
                103,
                backfills=[bf(103, days=3, on_failure="continue")],
                faults=[Fault("airflow", "active_runs", "bug", times=9)],
            ),
            patched(Lifecycle, "give_up", _give_up_ends_chain),
            "4",
        ),
        Case(
            "continue-redis-error",
            "continue_dag failed for good on a Redis timeout (late acks: acked): the rest of the chain was lost",
            small(104, backfills=[bf(104, days=2)], segment_size=1, faults=[Fault("redis", "EXISTS", "error")]),
            patched(Lifecycle, "continue_dag", _continue_unguarded),
            "6",
        ),
        Case(
            "after-step-redis-error",
            "the bookkeeping after a step failed for good on a Redis timeout",
            small(
                105,
                backfills=[bf(105, days=2)],
                fail_rate=1.0,
                faults=[Fault("redis", "dag_finish", "error", inside="stop_dag")],
            ),
            patched(Lifecycle, "window", _window_after_unguarded),
            "6",
        ),
        Case(
            "lease-expires-under-a-slow-holder",
            "the lock and slots expired under a live holder: renewal skipped "
            "from a snapshot, settings not counting a step's calls or a late countdown: the global cap exceeded",
            small(
                200,  # was 106: the submit's single list of both DAGs' history moved its timing
                dags=2,
                backfills=[bf(106, dags=("d0", "d1"))],
                global_max_runs=1,
                durations=(900, 900),
                rates=Rates(late=1.0),
                faults=[Fault("airflow", "get_run", "slow", times=40)],
            ),
            _lease_from_snapshot,
            "8",
            bug_schedule={"lock_ttl": 120},
        ),
        Case(
            "lock-expires-before-trigger",
            "the lock expired between the busy check and the trigger: another "
            "backfill passed its busy check and both runs overlapped",
            small(
                107,
                backfills=[bf(107, start=0), bf(107, 1, at=20, start=1)],
                durations=(600, 600),
                faults=[Fault("airflow", "recent_successes", "pause", seconds=330)],
            ),
            _unchecked_trigger,
            "1",
            bug_schedule={"lock_ttl": 120},
        ),
        Case(
            "cancel-frees-an-armed-lock",
            "cancel released a lock whose holder was about to trigger: another "
            "backfill took the DAG and both runs overlapped",
            small(
                108,
                backfills=[bf(108, start=0), bf(108, 1, at=1, start=1)],
                durations=(200, 200),
                users=[UserAction(10, "cancel", "bf-s108-0")],
                faults=[Fault("airflow", "trigger", "pause", seconds=60)],
            ),
            patched(runner.DagLocks, "release_idle", _cancel_releases_any),
            "1",
        ),
        Case(
            "throttle-on-a-worker-clock",
            "the throttle's expiry used each worker's clock: one ahead removes live "
            "slots, one behind writes slots that have already expired; the global cap was exceeded",
            small(
                112,
                dags=2,
                backfills=[bf(109, dags=("d0", "d1"))],
                global_max_runs=1,
                durations=(400, 400),
                skews=(0.0, -3000.0),
            ),
            patched(WorldClock, "script_now", _worker_clock),
            "8",
        ),
        Case(
            "note-overwrites-a-cancel",
            "Record.note read in Python and wrote back: a cancel in between was "
            "overwritten and a cancelled window came back",
            small(
                110,
                backfills=[bf(110, days=2)],
                durations=(300, 300),
                users=[UserAction(10, "cancel", "bf-s110-0")],
                faults=[
                    Fault("airflow", "get_run", "error"),
                    Fault("redis", "HSET", "pause", inside="_note_in_python", seconds=30),
                ],
            ),
            patched(Record, "note", _note_in_python),
            "4",
        ),
        Case(
            "fail-running-misses-reruns",
            "cancel --fail-running swept only run ids with the backfill's prefix: a run it re-ran kept running",
            small(
                111,
                backfills=[bf(111, reprocess="failed")],
                durations=(300, 300),
                history=[("d0", 0, "window", "failed")],
                users=[UserAction(60, "cancel_fail", "bf-s111-0")],
            ),
            patched(__import__("backfill.commands").commands, "_reran", lambda ctx, params: []),
            "10",
        ),
        Case(
            "paused-while-running",
            "a DAG paused while its run was running made the window wait for ever",
            small(
                112, backfills=[bf(112)], durations=(300, 300), users=[UserAction(30, "pause", "d0")], horizon=86400.0
            ),
            patched(WindowRunner, "_stalled", _wait_forever),
            "6",
        ),
        Case(
            "repeat-keeps-the-lock",
            "a repeated step did not release the lock after a crash between the final state and the release "
            "(one pipeline since 2026-12-01: the case cuts it after its first command)",
            # The final state and the release are one pipeline: the crash comes between its commands.
            small(
                113,
                backfills=[bf(113)],
                faults=[Fault("redis", "*", "crash", when="midway", inside="_finish", redeliver=1.0)],
            ),
            patched(WindowRunner, "_repeat", _no_release_on_repeat),
            "7",
        ),
        Case(
            "409-with-no-run",
            "a 409 with no run at the date was retried at the minimum interval with no limit",
            small(
                114, backfills=[bf(114)], horizon=900.0, faults=[Fault("airflow", "trigger", "conflict", times=10**9)]
            ),
            patched(WindowRunner, "_date_taken", _date_taken_retry_forever),
            "6",
        ),
        Case(
            "unknown-run-state",
            "an Airflow run state the orchestrator did not know was taken as failed",
            small(115, backfills=[bf(115)], durations=(300, 300), users=[UserAction(30, "odd", "d0")]),
            patched(WindowRunner, "_stalled", _unknown_is_failed),
            "9",
        ),
        Case(
            "create-half-done",
            "(found by the harness) a submit killed between storing the plan and its state: "
            "the redelivered submit took it as recorded; DAG counters went negative, the backfill never ended",
            small(116, backfills=[bf(116)], faults=[Fault("redis", "*", "crash", inside="_old_create", nth=2)]),
            patched(Record, "create", _old_create),
            "6",
        ),
        Case(
            "submit-error-after-record",
            "(found by the harness) a Redis or broker error after the plan was "
            "recorded failed the submit: a backfill recorded running with no chain",
            small(117, backfills=[bf(117)], faults=[Fault("broker", "window", "error", inside="dispatch")]),
            patched(Lifecycle, "retry_submit", lambda self, task_id: False),
            "6",
        ),
        Case(
            "next-link-not-published",
            "a next link that could not be published (broker down past the publish "
            "retries) failed the task and was acked, as Celery does: the rest of the chain was lost",
            small(118, backfills=[bf(118, days=2)], faults=[Fault("broker", "window", "error", inside="hand_on")]),
            patched(faults.run, "settle", _settle_unguarded),
            "6",
        ),
        Case(
            "rerun-recovery-without-the-lock",
            "(found by the harness, seed 1635) a window that claimed a run to "
            "re-run it and died before the clear cleared it on redelivery without the DAG's lock: its run "
            "overlapped another backfill's",
            small(
                119,
                backfills=[bf(119, start=1, reprocess="completed"), bf(119, 1, at=5, start=3)],
                history=[("d0", 1, "window", "success")],
                durations=(2500, 2500),
                faults=[Fault("redis", "window_note", "crash", when="after", inside="_rerun")],
            ),
            patched(WindowRunner, "_advance", _advance_recovering_unlocked),
            "1",
        ),
        Case(
            "slot-of-a-dead-holder",
            "(found by the harness, seed 2187) a dead worker's slots expired with its "
            "lock, long before its message came back (visibility timeout), while its run was still in flight: the "
            "caps were exceeded",
            small(
                202,  # was 120: the submit's single list of both DAGs' history moved its timing
                dags=2,
                backfills=[bf(120, dags=("d0", "d1"))],
                global_max_runs=1,
                durations=(1500, 1500),
                faults=[Fault("airflow", "get_run", "crash")],
            ),
            lambda: mock.patch.object(settings.Settings, "slot_ttl", property(lambda self: self.lock_ttl)),
            "8",
        ),
        Case(
            "renewal-after-a-cancel",
            "(found in review) a step looking at its run while a cancel freed the DAG's lock and slots renewed "
            "them afterwards, and the revoke left them: held until they expired",
            small(
                121,
                backfills=[bf(121)],
                durations=(600, 600),
                users=[UserAction(10, "cancel", "bf-s121-0")],
                faults=[Fault("airflow", "get_run", "pause", when="after", seconds=130)],
            ),
            _hold_after_cancel,
            "7",
        ),
        Case(
            "rerun-takes-over-a-followed-run",
            "(found by the harness, seed 894) a window away past its lock's lease found its run re-run meanwhile "
            "by another backfill "
            "(`reprocess=completed`), took that run's failure for its own attempt's and retried a run that had "
            "succeeded; a window now waits while another backfill's window still follows the run it would re-run",
            faults.run.generate(894),
            patched(WindowRunner, "_followed_elsewhere", lambda *_: None),
            "2",
        ),
    ]
    return out


def run_case(case: Case, redis_url: str, *, hole: bool) -> tuple[list[str], faults.run.Sim]:
    """The case's violations, on the current code or (``hole``) with the hole patched back in."""
    schedule = replace(case.schedule, **case.bug_schedule) if hole else case.schedule
    with case.bug() if hole else contextlib.nullcontext():
        sim = faults.run.Sim(schedule, redis_url)
        return sim.run(), sim
