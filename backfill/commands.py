"""Operator commands on a running or finished backfill: cancel it, and plan its resumption.

Cancel is layered so that it holds however it is asked for:

1. the record is flagged ``cancelled``; every worker checks the flag before each step, and a
   window that triggered while the cancel ran fails its own run if asked to;
2. every task stamped with the backfill id is revoked (``revoke_by_stamped_headers``), so
   waiting windows and chain continuations are dropped by the workers that hold them;
3. the remaining windows are recorded ``cancelled``, the backfill's DAG locks and throttle
   slots are released and its DAGs closed, at once, without waiting for any worker (a lock
   armed for a trigger that very moment is left to its holder, which releases it when it sees
   the flag, or to its expiry: freeing it could let another backfill miss that run);
4. with ``fail_running``, the backfill's queued or running Airflow runs are marked failed,
   looking again until a look finds none (a window triggering at that moment is caught):
   its own runs (by run id prefix) and the runs of others it re-ran (``reprocess``, resume).

A revoke from the Celery CLI (``celery -A workers control revoke_by_stamped_headers
backfill_id=ID``) does 1-3 too: the workers' ``task_revoked`` handler calls ``Lifecycle.revoked``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError

from backfill.airflow import RunInfo
from backfill.context import Context
from backfill.errors import InputError, describe
from backfill.lifecycle import Lifecycle, Publisher
from backfill.model import BackfillParams
from backfill.request import new_backfill_id
from backfill.states import DONE, FINISHED, DagState

log = logging.getLogger("backfill")

SWEEPS = 6  # --fail-running: at most this many looks for active runs, SWEEP_PAUSE apart
SWEEP_PAUSE = 1.0


def cancel(
    ctx: Context,
    bf: str,
    *,
    fail_running: bool = False,
    revoke: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    publisher: Publisher | None = None,
) -> dict[str, Any]:
    """Cancel backfill ``bf`` (see the module docstring). Touches nothing of another backfill.

    ``publisher``: where the backfill's "ended cancelled" notification is published (the
    CLI passes the workers' one); without it, no notification."""
    params = ctx.record.params(bf)
    state = ctx.record.meta(bf).get("state")
    if state in (DagState.SUCCEEDED, DagState.FAILED):
        raise InputError(f"backfill {bf}: already {state}, nothing to cancel")
    ctx.record.request_cancel(bf, fail_running=fail_running)
    if revoke is not None:
        revoke(bf)
    reason = "backfill cancelled"
    life = Lifecycle(ctx)  # the notification last, below: a broker error must not stop the cancel
    windows = sum(life.cancel_dag(params, dag, reason=reason, fail_running=fail_running) for dag in params.dags)
    with contextlib.suppress(RedisError):  # parked windows (backfill.watch) drop out now, not at their deadline
        ctx.parking.wake_backfill(bf)
    ctx.throttle.release_backfill(bf)
    failed: list[str] = []
    left: list[str] = []
    # A worker may be between its last check of the flag and its trigger right now; it fails
    # its own run when it sees the flag, but sweep again until a sweep finds nothing, so that
    # when this returns no run of the backfill is left active.
    for sweep in range(SWEEPS if fail_running else 1):
        found = [
            (dag, run) for dag in params.dags for run in ctx.airflow.runs_by_prefix(dag, f"{bf}__", active=True)
            if run.active
        ]  # fmt: skip
        found += [(dag, run) for dag, run in _reran(ctx, params) if run.active]
        if fail_running:
            for dag, run in found:
                ctx.airflow.fail_run(dag, run.run_id)
                if f"{dag}/{run.run_id}" not in failed:
                    failed.append(f"{dag}/{run.run_id}")
            if sweep and not found:
                break
            sleep(SWEEP_PAUSE)
        else:
            left = [f"{dag}/{run.run_id}" for dag, run in found]
    if publisher is not None:
        try:
            notifier = Lifecycle(ctx, publisher)
            for dag in params.dags:  # closed above: this publishes what the closes would have
                notifier.close_dag(params, dag, reason=reason)
        except Exception as exc:
            log.warning("%s: cancelled, but its notification could not be published (%s); a worker handling "
                        "the revoke publishes it", bf, describe(exc))  # fmt: skip
    log.info("%s backfill CANCELLED: %d window(s), %d run(s) marked failed", bf, windows, len(failed))
    return {"backfill_id": bf, "cancelled_windows": windows, "failed_runs": failed, "left_running": left}


def _reran(ctx: Context, params: BackfillParams) -> list[tuple[str, RunInfo]]:
    """Runs of others that the backfill's windows re-ran (cleared): they carry no run id of
    ours, so the prefix search does not find them (one request per such run still recorded
    as in flight)."""
    bf = params.backfill_id
    out: list[tuple[str, RunInfo]] = []
    for dag in params.dags:
        for w in ctx.record.windows(bf, dag).values():
            if w.run and w.triggered_at and not w.run.startswith(f"{bf}__") and not w.ended:
                out.append((dag, ctx.airflow.get_run(dag, w.run)))
    return out


def resume_params(ctx: Context, bf: str) -> BackfillParams:
    """A new backfill of the same DAGs and rules covering only ``bf``'s windows that did not
    succeed (failed, cancelled, not run, or never reached). Runs ``bf`` left at those dates
    are re-run (cleared) rather than skipped; ones that succeeded meanwhile are skipped."""
    old = ctx.record.params(bf)
    state = ctx.record.meta(bf).get("state")
    if state not in FINISHED:
        raise InputError(f"backfill {bf}: still {state}; wait for it or cancel it first (backfill cancel {bf})")
    only: dict[str, list[list[int]]] = {}
    for dag in old.dags:
        recs = ctx.record.windows(bf, dag)
        todo = sorted(i for i in old.indices(dag) if i not in recs or recs[i].state not in DONE)
        if todo:
            only[dag] = _ranges(todo)
    if not only:
        raise InputError(f"backfill {bf}: every window succeeded or was skipped; nothing to resume")
    return replace(
        old,
        backfill_id=new_backfill_id(),
        dags=[d for d in old.dags if d in only],
        only=only,
        lineage=[*old.lineage, bf],
        created_at=ctx.record.clock.now(),
    )


def _ranges(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out
