"""Every state the orchestrator records or reads, defined once: a window's, a DAG's (and a
backfill's), and Airflow's DAG run states. ``StrEnum``: each member is its string, so records
in Redis, JSON and the Lua scripts hold the same text as before."""

from __future__ import annotations

from enum import StrEnum


class WindowState(StrEnum):
    PLANNED = "planned"  # not started
    WAITING = "waiting"  # for its DAG (busy, locked), a throttle slot or Airflow
    TRIGGERED = "triggered"  # its run exists in Airflow, not started yet
    RUNNING = "running"  # its run runs
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"  # the DAG already had the run (reprocess, on_conflict=skip)
    NOT_RUN = "not_run"  # an earlier window failed and on_failure=stop
    CANCELLED = "cancelled"


WINDOW_STATES = tuple(WindowState)
PENDING = frozenset({WindowState.PLANNED, WindowState.WAITING})
IN_FLIGHT = frozenset({WindowState.TRIGGERED, WindowState.RUNNING})  # a run of ours exists
TERMINAL = frozenset(WINDOW_STATES) - PENDING - IN_FLIGHT
DONE = frozenset({WindowState.SUCCESS, WindowState.SKIPPED})  # nothing left to do (resume skips them)


class DagState(StrEnum):
    """A DAG's chain within a backfill, and the backfill itself."""

    PENDING = "pending"  # a DAG none of whose windows changed state yet
    RUNNING = "running"
    CANCELLING = "cancelling"  # a backfill flagged cancelled, still running: shown, never stored
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({DagState.SUCCEEDED, DagState.FAILED, DagState.CANCELLED})


class RunState(StrEnum):
    """Airflow 3's ``DagRunState``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


ACTIVE_RUN_STATES = (RunState.QUEUED, RunState.RUNNING)
