"""An in-process Airflow 3 for the harness: the methods of ``backfill.airflow.AirflowClient`` the
orchestrator calls, with Airflow's rules: one run per DAG and logical date and per run id
(409), queued -> running -> success/failed, ``max_active_runs`` (queued runs wait), a clear
re-queues a run, a paused DAG starts nothing and stalls its running runs, a PATCH fails a run.

Every call is a point where the world may switch actors, crash the caller, fail the call
before or after its effect (``AirflowUnavailable``), or make it slow. The stand-in records
every execution of every run (who caused it, when it was active) for the invariants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from backfill.airflow import DagInfo, RunInfo
from backfill.errors import AirflowConflict, AirflowNotFound
from backfill.windows import Window

if TYPE_CHECKING:
    from faults.world import World


@dataclass
class Execution:
    by: str | None  # the backfill whose trigger or clear started it; None: someone else
    seq: int | None  # that backfill's window position (for the order invariant)
    active_from: float
    ended: float | None = None
    state: str | None = None


@dataclass
class Run:
    dag_id: str
    run_id: str
    logical_date: datetime
    interval: tuple[datetime | None, datetime | None]
    run_type: str
    conf: dict[str, Any]
    duration: float
    fails: bool
    state: str = "queued"
    queued_at: float = 0.0
    start: float | None = None
    end: float | None = None
    left: float = 0.0  # seconds of work left (frozen while the DAG is paused)
    resumed: float = 0.0  # when the work last (re)started
    executions: list[Execution] = field(default_factory=list)
    odd_until: float = 0.0  # until then, an active run reports a state Airflow 3 does not have

    def info(self, now: float = 0.0) -> RunInfo:
        state = "restarting" if self.state in ("queued", "running") and now < self.odd_until else self.state
        return RunInfo(
            dag_id=self.dag_id, run_id=self.run_id, state=state, run_type=self.run_type,
            logical_date=self.logical_date, data_interval_start=self.interval[0], data_interval_end=self.interval[1],
            start_date=_dt(self.start), end_date=_dt(self.end), queued_at=_dt(self.queued_at), conf=dict(self.conf),
        )  # fmt: skip


@dataclass
class Dag:
    dag_id: str
    max_active_runs: int = 1
    paused: bool = False
    schedule: str = "@daily"
    queue_delay: float = 1.0


def _json(info: RunInfo) -> dict[str, Any]:
    """A run as Airflow's API shows it (the fields RunInfo.from_json reads)."""
    body: dict[str, Any] = {"dag_id": info.dag_id, "dag_run_id": info.run_id, "state": info.state,
                            "run_type": info.run_type, "conf": info.conf}  # fmt: skip
    for name in ("logical_date", "data_interval_start", "data_interval_end", "start_date", "end_date", "queued_at"):
        value = getattr(info, name)
        body[name] = value.isoformat() if value is not None else None
    return body


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class FakeAirflow:
    def __init__(self, world: World, dags: list[Dag]) -> None:
        self.world = world
        self.dags = {d.dag_id: d for d in dags}
        self.runs: dict[str, dict[str, Run]] = {d.dag_id: {} for d in dags}
        self.requests = 0
        self.config = SimpleNamespace(url="sim://airflow")
        self.actions: list[tuple[float, str, str, str, str | None, int | None]] = []  # t, what, dag, run, by, seq

    # -- time -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Bring every run up to the world's time, event by event."""
        now = self.world.t
        for dag in self.dags.values():
            runs = self.runs[dag.dag_id]
            while True:
                nxt = self._next_event(dag, runs.values(), now)
                if nxt is None:
                    break
                when, run, what = nxt
                if what == "start":
                    run.state, run.start, run.resumed = "running", when, when
                else:
                    self._end(run, "failed" if run.fails else "success", when)

    def _next_event(self, dag: Dag, runs: Any, now: float) -> tuple[float, Run, str] | None:
        if dag.paused:
            return None
        best: tuple[float, Run, str] | None = None
        running = sum(1 for r in runs if r.state == "running")
        for r in runs:
            if r.state == "running":
                t = r.resumed + r.left
            elif r.state == "queued" and running < dag.max_active_runs:
                t = r.queued_at + dag.queue_delay
            else:
                continue
            if t <= now and (best is None or t < best[0]):
                best = (t, r, "end" if r.state == "running" else "start")
        return best

    def _end(self, run: Run, state: str, when: float) -> None:
        run.state, run.end, run.left = state, when, 0.0
        if run.executions and run.executions[-1].ended is None:
            run.executions[-1].ended, run.executions[-1].state = when, state

    def set_pause(self, dag_id: str, paused: bool) -> None:
        """Pause or unpause (by a user: no fault point)."""
        self.tick()
        dag = self.dags[dag_id]
        if dag.paused == paused:
            return
        now = self.world.t
        for r in self.runs[dag_id].values():
            if r.state == "running":
                if paused:
                    r.left = max(0.0, r.left - (now - r.resumed))
                else:
                    r.resumed = now
        dag.paused = paused

    # -- the client's methods ---------------------------------------------------------------

    def _enter(self, name: str) -> None:
        self.requests += 1
        self.world.point("airflow", name)
        self.tick()

    def _leave(self, name: str) -> None:
        self.world.after("airflow", name)

    def _dag(self, dag_id: str) -> Dag:
        if dag_id not in self.dags:
            raise AirflowNotFound(f"DAG {dag_id!r}: not found in Airflow")
        return self.dags[dag_id]

    def get_dag(self, dag_id: str) -> DagInfo:
        self._enter("get_dag")
        d = self._dag(dag_id)
        out = DagInfo(dag_id=dag_id, is_paused=d.paused, max_active_runs=d.max_active_runs, schedule=d.schedule,
                      timezone="UTC")  # fmt: skip
        self._leave("get_dag")
        return out

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._enter("set_paused")
        self._dag(dag_id)
        self.set_pause(dag_id, paused)
        self._leave("set_paused")

    def get_run(self, dag_id: str, run_id: str) -> RunInfo:
        self._enter("get_run")
        run = self.runs[self._dag(dag_id).dag_id].get(run_id)
        if run is None:
            raise AirflowNotFound(f"run {run_id!r} of DAG {dag_id!r}: not found in Airflow")
        out = run.info(self.world.t)
        self._leave("get_run")
        return out

    def _select(self, name: str, dag_id: str, keep: Any, key: Any = None, limit: int | None = None) -> list[RunInfo]:
        self._enter(name)
        runs = [r for r in self.runs[self._dag(dag_id).dag_id].values() if keep(r)]
        runs.sort(key=key or (lambda r: r.logical_date))
        out = [r.info() for r in runs[:limit]]
        self._leave(name)
        return out

    def runs_at(self, dag_id: str, logical_date: datetime) -> list[RunInfo]:
        return self._select("runs_at", dag_id, lambda r: r.logical_date == logical_date)

    def runs_between(self, dag_id: str, first: datetime, last: datetime) -> list[RunInfo]:
        return self._select("runs_between", dag_id, lambda r: first <= r.logical_date <= last)

    def runs_between_many(self, dag_ids: list[str], first: datetime, last: datetime) -> dict[str, list[RunInfo]]:
        self._enter("runs_between_many")
        out = {d: sorted((r.info() for r in self.runs[self._dag(d).dag_id].values() if first <= r.logical_date <= last),
                         key=lambda i: i.logical_date or first) for d in dag_ids}  # fmt: skip
        self._leave("runs_between_many")
        return out

    def latest_run(self, dag_id: str, *, until: datetime) -> RunInfo | None:
        found = self._select("latest_run", dag_id, lambda r: r.logical_date <= until,
                             key=lambda r: -r.logical_date.timestamp(), limit=1)  # fmt: skip
        return found[0] if found else None

    def runs_active_between(self, dag_id: str, first: datetime, last: datetime) -> list[RunInfo]:
        lo, hi = first.timestamp(), last.timestamp()
        return self._select("runs_active_between", dag_id, lambda r: r.state in ("queued", "running") or (
            r.end is not None and r.end >= lo and (r.start or r.queued_at) <= hi))  # fmt: skip

    def active_runs(self, dag_id: str) -> list[RunInfo]:
        return self._select("active_runs", dag_id, lambda r: r.state in ("queued", "running"), limit=20)

    def recent_successes(self, dag_id: str, limit: int = 20) -> list[RunInfo]:
        return self._select("recent_successes", dag_id, lambda r: r.state == "success",
                            key=lambda r: -(r.end or 0), limit=limit)  # fmt: skip

    def ended_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
        """The watcher's list of runs ended since (``POST /dags/~/dagRuns/list``), as Airflow's JSON."""
        self._enter("ended_runs")
        out = [_json(r.info(self.world.t)) for d in dag_ids if d in self.runs for r in self.runs[d].values()
               if r.state in ("success", "failed") and r.end is not None and r.end >= since]  # fmt: skip
        self._leave("ended_runs")
        return out

    def started_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
        """The watcher's other list: runs started since (running, or ended since)."""
        self._enter("started_runs")
        out = [_json(r.info(self.world.t)) for d in dag_ids if d in self.runs for r in self.runs[d].values()
               if r.state in ("running", "success", "failed") and r.start is not None and r.start >= since]  # fmt: skip
        self._leave("started_runs")
        return out

    def runs_by_prefix(self, dag_id: str, prefix: str, *, active: bool = False) -> list[RunInfo]:
        return self._select("runs_by_prefix", dag_id, lambda r: r.run_id.startswith(prefix) and (
            not active or r.state in ("queued", "running")))  # fmt: skip

    def trigger(
        self, dag_id: str, run_id: str, window: Window, *, conf: dict[str, Any], note: str | None = None
    ) -> RunInfo:
        self._enter("trigger")
        runs = self.runs[self._dag(dag_id).dag_id]
        if run_id in runs or any(r.logical_date == window.start for r in runs.values()):
            raise AirflowConflict(f"trigger run {run_id!r} of DAG {dag_id!r}: conflict in Airflow")
        run = self.add_run(dag_id, run_id, window.start, (window.start, window.end), "manual", conf)
        out = run.info()
        self._leave("trigger")
        return out

    def clear(self, dag_id: str, run_id: str, *, only_failed: bool = False) -> None:
        self._enter("clear")
        run = self.runs[self._dag(dag_id).dag_id].get(run_id)
        if run is None:
            raise AirflowNotFound(f"run {run_id!r} of DAG {dag_id!r}: not found in Airflow")
        now = self.world.t
        if run.executions and run.executions[-1].ended is None:
            run.executions[-1].ended, run.executions[-1].state = now, "cleared"
        run.state, run.queued_at, run.start, run.end = "queued", now, None, None
        run.left = run.duration
        run.fails = self.world.rng.random() < self.world.fail_rate
        self._execution(run, "clear")
        self._leave("clear")

    def fail_run(self, dag_id: str, run_id: str) -> None:
        self._enter("fail_run")
        run = self.runs[self._dag(dag_id).dag_id].get(run_id)
        if run is None:
            raise AirflowNotFound(f"run {run_id!r} of DAG {dag_id!r}: not found in Airflow")
        if run.state in ("queued", "running"):
            self._end(run, "failed", self.world.t)
        self._leave("fail_run")

    # -- runs ----------------------------------------------------------------------------------

    def add_run(
        self, dag_id: str, run_id: str, logical: datetime, interval: tuple[datetime | None, datetime | None],
        run_type: str, conf: dict[str, Any] | None = None, *, state: str = "queued",
    ) -> Run:  # fmt: skip
        world = self.world
        run = Run(dag_id, run_id, logical, interval, run_type, dict(conf or {}),
                  duration=world.rng.uniform(*world.durations), fails=world.rng.random() < world.fail_rate)  # fmt: skip
        run.queued_at, run.left = world.t, run.duration
        self.runs[dag_id][run_id] = run
        if state == "queued":
            self._execution(run, "trigger")
        else:  # history: ended long ago
            run.state, run.queued_at, run.start, run.end = state, world.t - 3600, world.t - 3500, world.t - 3400
        return run

    def _execution(self, run: Run, what: str) -> None:
        by, seq = self.world.acting_for()
        run.executions.append(Execution(by=by, seq=seq, active_from=self.world.t))
        self.actions.append((self.world.t, what, run.dag_id, run.run_id, by, seq))


def day(n: int) -> datetime:
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=n)
