"""One schedule: generated from its seed, run in a fresh world, checked."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Any

from backfill.commands import cancel, resume_params
from backfill.context import Context
from backfill.errors import BackfillNotFound, InputError, WindowFailed
from backfill.lifecycle import TRANSIENT, Lifecycle, settle
from backfill.locks import DagLocks
from backfill.lua import source
from backfill.model import BackfillParams
from backfill.record import Record
from backfill.request import Request, validate
from backfill.runner import WindowRunner, record_started
from backfill.settings import Settings
from backfill.states import TERMINAL
from backfill.throttle import Throttle
from backfill.watch import ONE_LIST, Parking, Watched, Watcher, window_key
from faults.airflow import Dag, FakeAirflow, day
from faults.invariants import check
from faults.world import T0, Fault, Message, Rates, SimRedis, World

SCRIPTS = tuple(sorted(p.stem for p in files("backfill.lua").iterdir() if p.name.endswith(".lua")))
WATCH_EVERY = 5.0  # the watcher's rounds (seconds of the world's time)
IDLE_ROUNDS = 60.0  # its rounds while nothing is parked
HORIZON = 4 * 86400.0  # a schedule that has not ended by then is reported as never ending


@dataclass
class BackfillSpec:
    id: str
    at: float
    dags: list[str]
    start: int  # first day (index from 2024-01-01)
    days: int
    on_failure: str = "stop"
    reprocess: str = "none"
    max_parallel_dags: int = 0
    reverse: bool = False
    on_conflict: str = "refuse"
    unpause: bool = False
    quiet_hours: list[str] | None = None
    max_starts_per_hour: int = 0
    retries: int = 0
    retry_delay: float = 60.0
    after: dict[str, list[str]] | None = None
    priority: int = 0


@dataclass
class UserAction:
    at: float
    kind: str  # cancel, cancel_fail, resume, pause, unpause, trigger, odd
    target: str  # a backfill id or a DAG
    day: int = 0
    interval: str = "window"  # trigger: "window" (the day), "point" (no interval), "other" (two days)
    run_id: str | None = None  # trigger: the run id (default: a scheduled run's)


@dataclass
class Schedule:
    seed: int
    dags: list[Dag]
    history: list[tuple[str, int, str, str]]  # dag, day, interval kind, state
    backfills: list[BackfillSpec]
    users: list[UserAction]
    rates: Rates
    global_max_runs: int = 0
    fail_rate: float = 0.1
    faults: list[Fault] = field(default_factory=list)
    segment_size: int = 2
    durations: tuple[float, float] = (5.0, 90.0)  # a run's work, seconds (uniform)
    skews: tuple[float, ...] = (0.0, 0.0, 0.0, 1.5, -1.5, 10.0)  # the workers' clock errors
    horizon: float = HORIZON
    lock_ttl: float | None = None  # None: the default
    watch: bool = False  # windows in flight park and a watcher wakes them (backfill.watch)
    one_list: int = ONE_LIST  # up to this many runs watched, one list for all (Watcher.one_list)
    watch_fallback: float | None = None  # None: within the lock's lease, as a window's own looks


def generate(seed: int) -> Schedule:
    """A random schedule: a few DAGs shared by a few backfills, with history, runs by others,
    pauses, cancels, resumes, and random faults of a random intensity."""
    import random

    rng = random.Random(seed * 7919 + 17)
    dags = [Dag(f"d{i}", max_active_runs=rng.choice((1, 1, 2, 3)), queue_delay=rng.uniform(0.2, 5))
            for i in range(rng.randint(1, 3))]  # fmt: skip
    names = [d.dag_id for d in dags]
    history = [(rng.choice(names), rng.randint(0, 6), rng.choice(("window", "window", "point")),
                rng.choice(("success", "failed"))) for _ in range(rng.choice((0, 0, 1, 2, 3)))]  # fmt: skip
    backfills = []
    for b in range(rng.randint(1, 3)):
        backfills.append(BackfillSpec(
            id=f"bf-s{seed}-{b}", at=rng.uniform(0, 200), dags=rng.sample(names, rng.randint(1, len(names))),
            start=rng.randint(0, 3), days=rng.randint(1, 4), on_failure=rng.choice(("stop", "continue")),
            reprocess=rng.choice(("none", "none", "failed", "completed")),
            max_parallel_dags=rng.choice((0, 0, 1, 2)), reverse=rng.random() < 0.3,
            on_conflict=rng.choice(("refuse", "skip", "skip")),
        ))  # fmt: skip
    # Start gates, drawn apart so that the rest of a seed's schedule stays what it was. The
    # world starts at 15:06:40 UTC: quiet hours from a few minutes on, for 5 to 20 minutes.
    gates = random.Random(seed * 31 + 5)
    for spec in backfills:
        if gates.random() < 0.2:
            a = 15 * 60 + gates.randint(8, 20)
            b = a + gates.randint(5, 20)
            spec.quiet_hours = [f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"]
        if gates.random() < 0.2:
            spec.max_starts_per_hour = gates.choice((1, 2, 3))
    retries = random.Random(seed * 53 + 11)  # drawn apart too
    for spec in backfills:
        spec.retries = retries.choice((0, 0, 1, 2))
        spec.retry_delay = retries.choice((0.0, 5.0, 60.0))
    order = random.Random(seed * 97 + 3)  # and the order across DAGs
    for spec in backfills:
        if len(spec.dags) > 1 and order.random() < 0.4:
            spec.after = {d: order.sample(spec.dags[:i], order.randint(1, i)) for i, d in enumerate(spec.dags) if i}
        spec.priority = order.choice((0, 0, 0, 1, 5, -2))
    users: list[UserAction] = []
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        kind = rng.choice(("cancel", "cancel_fail", "resume", "resume", "pause", "trigger", "trigger", "odd"))
        at = rng.uniform(0, 1500)
        if kind in ("cancel", "cancel_fail", "resume"):
            users.append(UserAction(at, kind, rng.choice(backfills).id))
        elif kind == "pause":
            dag = rng.choice(names)
            users.append(UserAction(at, "pause", dag))
            users.append(UserAction(at + rng.choice((30, 300, 900, 2000)), "unpause", dag))
        elif kind == "odd":
            users.append(UserAction(at, "odd", rng.choice(names)))
        else:
            users.append(UserAction(at, "trigger", rng.choice(names), day=rng.randint(0, 7),
                                    interval=rng.choice(("window", "point", "other"))))  # fmt: skip
    intensity = rng.choice((0.0, 0.002, 0.01, 0.03))
    rates = Rates(
        crash=intensity, redis_error=intensity, airflow_error=2 * intensity, slow=intensity,
        publish_error=intensity, duplicate=rng.choice((0.0, 0.02, 0.1)), late=rng.choice((0.0, 0.1)),
    )  # fmt: skip
    return Schedule(seed, dags, history, backfills, users, rates, global_max_runs=rng.choice((0, 0, 1, 2)),
                    fail_rate=rng.choice((0.0, 0.1, 0.3)), segment_size=rng.choice((1, 2, 20)),
                    watch=random.Random(seed * 13 + 7).random() < 0.5,  # drawn apart too
                    # Half of the watched schedules as with many runs watched (two lists, of the DAGs due).
                    one_list=0 if random.Random(seed * 31 + 3).random() < 0.5 else ONE_LIST,
                    # A third with deadlines far beyond the locks' lease: only the watcher's renewals
                    # (Parking.hold_all) keep them.
                    watch_fallback=1000.0 if random.Random(seed * 41 + 9).random() < 1 / 3 else None)  # fmt: skip


class SimRecord(Record):
    """The record, noting on the world's clock when each window reached its final state."""

    def __init__(self, *args: Any, world: World, ended_at: dict[tuple[str, str, int], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._world, self._ended_at = world, ended_at

    def transitioned(self, params: BackfillParams, dag: str, idx: int, state: str, result: Any) -> int:
        code = super().transitioned(params, dag, idx, state, result)
        if code == 2 and state in TERMINAL:
            self._ended_at.setdefault((params.backfill_id, dag, idx), self._world.t)
        return code


class SimRetry(Exception):
    """The task ended by publishing itself again (a look later, or a requeue)."""


class SimDelivery:
    """``backfill.lifecycle.Delivery`` for a message of the simulated broker."""

    def __init__(self, sim: Sim, msg: Message) -> None:
        self.sim, self.msg = sim, msg

    def retry(self, countdown: float, changes: dict[str, Any]) -> BaseException:
        msg = self.msg
        try:
            self.sim.world.publish(replace(msg, kwargs={**msg.kwargs, **changes}), countdown=countdown)
        except TRANSIENT:
            self.sim.requeue(msg)  # Reject(requeue=True): the same message comes back
        return SimRetry()

    def hand_on(self) -> None:
        if self.msg.chain:
            (task, kwargs), *rest = self.msg.chain
            self.sim.world.publish(Message(task, kwargs, rest, self.msg.stamp))

    def end_chain(self) -> None:
        pass

    def park(self, countdown: float, changes: dict[str, Any], watched: Watched) -> BaseException | None:
        msg = self.msg
        kw = {**msg.kwargs, **changes}
        body = {"task": msg.task, "kwargs": kw, "chain": msg.chain, "stamp": msg.stamp}
        try:
            self.sim.parking.park(window_key(kw["backfill_id"], kw["dag_id"], kw["seq"]), body, countdown, watched)
        except TRANSIENT:
            return None  # waits on a countdown instead
        self.sim.watch()
        return SimRetry()


class Sim:
    """A schedule's world: the stand-in, Redis, the orchestrator, the broker's handlers."""

    def __init__(self, schedule: Schedule, redis_url: str) -> None:
        self.schedule = schedule
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        self.world = world = World(schedule.seed, rates=schedule.rates, faults=[replace(f) for f in schedule.faults])
        world.fail_rate, world.durations, world.skews = schedule.fail_rate, schedule.durations, schedule.skews
        self.airflow = FakeAirflow(world, [replace(d) for d in schedule.dags])
        for dag, d, kind, state in schedule.history:
            interval = (day(d), day(d + 1)) if kind == "window" else (day(d), day(d))
            if not any(r.logical_date == day(d) for r in self.airflow.runs[dag].values()):
                self.airflow.add_run(dag, f"scheduled__{day(d).isoformat()}", day(d), interval, "scheduled",
                                     state=state)  # fmt: skip
        self.settings = Settings(
            redis_url=redis_url, key_prefix="bf", notify_url="http://hook.invalid/x",  # invariant 11
            busy_poll=20, poll_max=60, retry_max=60, give_up_after=600,
            global_max_runs=schedule.global_max_runs, segment_size=schedule.segment_size,
            **({"lock_ttl": schedule.lock_ttl} if schedule.lock_ttl else {}),
            watch_every=WATCH_EVERY if schedule.watch else 0,
            watch_fallback=schedule.watch_fallback or min(100.0, max(1.0, (schedule.lock_ttl or 300.0) - 190.0)),
        )  # fmt: skip
        world.call_max, world.late_margin = self.settings.call_max, self.settings.late_margin
        world.visibility_timeout = float(self.settings.visibility_timeout)
        self.redis = SimRedis(world, socket_timeout=self.settings.redis_socket_timeout, **_parse(redis_url))
        self.redis.script_names = {hashlib.sha1(source(n).encode()).hexdigest(): n for n in SCRIPTS}
        self.redis.flushdb()
        for name in SCRIPTS:  # loaded up front: a schedule replays the same whatever ran before it
            self.redis.script_load(source(name))
        clock = world.clock
        self.ended_at: dict[tuple[str, str, int], float] = {}  # (bf, dag, idx) -> when it ended
        self.record = SimRecord(self.redis, prefix="bf", ttl=self.settings.record_ttl, clock=clock, world=world,
                                ended_at=self.ended_at)  # fmt: skip
        st = self.settings
        self.locks = DagLocks(self.redis, prefix="bf", ttl=st.lock_ttl, slot_ttl=st.slot_ttl, stale=st.waiter_stale,
                              clock=clock)  # fmt: skip
        self.throttle = Throttle(self.redis, prefix="bf", ttl=st.slot_ttl, stale=st.waiter_stale,
                                 global_limit=schedule.global_max_runs, clock=clock)  # fmt: skip
        self.submitted: dict[str, str] = {}  # backfill id -> "recorded" or why it was refused
        self.cancels: dict[str, float] = {}  # backfill id -> when a cancel was asked
        self.cancel_done: dict[str, float] = {}  # backfill id -> when a cancel --fail-running returned
        self.task_errors: list[str] = []
        self.parking = Parking(self.redis, prefix="bf", clock=clock)  # type: ignore[arg-type]
        self.watchers = 0  # watcher processes so far (a crashed one is replaced, its memory lost)
        self.watcher = self._new_watcher()
        self.watching = False  # a watcher round is scheduled
        world.handlers.update(submit=self.on_submit, window=self.on_window, revoked=self.on_revoked)
        world.handlers["continue"] = self.on_continue

    # -- building blocks --------------------------------------------------------------------

    def context(self) -> Context:
        """A worker process's view: shared clients, its own runner (per-step state)."""
        parking = Parking(self.redis, prefix="bf", clock=self.world.clock)  # type: ignore[arg-type]
        runner = WindowRunner(settings=self.settings, airflow=self.airflow, record=self.record,  # type: ignore[arg-type]
                              locks=self.locks, throttle=self.throttle, parking=parking)  # fmt: skip
        return Context(self.settings, self.redis, self.airflow, self.record, self.locks, runner, self.throttle,  # type: ignore[arg-type]
                       parking)  # fmt: skip

    # -- the watcher (backfill.watch) -------------------------------------------------------

    def _new_watcher(self) -> Watcher:
        self.watchers += 1
        holder = f"watcher-{self.watchers}"
        return Watcher(parking=self.parking, airflow=self.airflow, publish=self._publish_parked,  # type: ignore[arg-type]
                       every=WATCH_EVERY, ceiling=self.settings.poll_max, holder=holder,
                       started=functools.partial(record_started, self.record),
                       one_list=self.schedule.one_list, hold_every=self.settings.hold_every)  # fmt: skip

    def _publish_parked(self, body: dict[str, Any]) -> None:
        chain = [(task, kwargs) for task, kwargs in body["chain"]]
        self.world.publish(Message(body["task"], body["kwargs"], chain, body["stamp"]))
        if self.world.rng.random() < 0.5:
            # The message may be delivered, run and park again before the watcher goes on.
            self.world.sleep(0.001)

    def watch(self, after: float = WATCH_EVERY) -> None:
        """Keep watcher rounds going while anything may park or is parked (a worker's watcher
        runs all the time; rounds here stop when nothing is left, so a schedule can end)."""
        if self.watching or not self.settings.watch_every:
            return
        self.watching = True
        self.world.at(self.world.t + after, self._round)

    def _round(self) -> None:
        self.watching = False
        actor = self.world.spawn("watcher", self._tick)

        def crashed() -> None:  # the watcher's process died: a new one, its memory lost
            self.watcher = self._new_watcher()
            self.watch()

        actor.on_crash = crashed

    def _tick(self) -> None:
        wait = WATCH_EVERY
        try:
            wait = self.watcher.tick()
            parked = bool(self.parking.parked())
        except TRANSIENT:
            parked = True  # the next round tries again
        except Exception as exc:  # a bug: reported, and the rounds go on (a worker's thread would)
            self.task_errors.append(f"watcher raised {exc!r}")
            parked = True
        last_submit = T0 + max((b.at for b in self.schedule.backfills), default=0.0)
        if parked:
            self.watch(wait)
        elif self.world.in_flight > 0 or self.world.t < last_submit + 10:
            # Nothing parked: rounds only now and then here (a worker's watcher keeps its
            # heartbeat; here windows between rounds may find none and wait on countdowns).
            self.watch(IDLE_ROUNDS)

    def life(self) -> Lifecycle:
        return Lifecycle(self.context(), self)

    def dispatch(self, params: BackfillParams) -> None:  # Publisher
        for dag in params.dags:
            self.segment(params, dag, 0)

    def segment(self, params: BackfillParams, dag: str, first_seq: int) -> None:  # Publisher
        last = min(first_seq + self.settings.segment_size, params.count(dag))
        bf = params.backfill_id
        links: list[tuple[str, dict[str, Any]]] = [
            ("window", {"backfill_id": bf, "dag_id": dag, "seq": seq}) for seq in range(first_seq, last)
        ]
        if last < params.count(dag):  # the DAG's last window closes the DAG itself (Lifecycle.after)
            links.append(("continue", {"backfill_id": bf, "dag_id": dag, "seq": last}))
        (task, kwargs), *rest = links
        self.world.publish(Message(task, kwargs, rest, bf))

    def notify(self, backfill_id: str, event: str, body: dict[str, Any]) -> None:  # Publisher
        self.notifications.append((event, body))

    def requeue(self, msg: Message) -> None:
        self.world.in_flight += 1
        self.world.at(self.world.t + self.world.rng.choice((1.0, self.world.visibility_timeout)),
                      lambda: self.world._deliver(msg))  # fmt: skip

    # -- the tasks --------------------------------------------------------------------------

    def on_window(self, msg: Message) -> None:
        kw = msg.kwargs
        try:
            nxt = self.life().window(kw["backfill_id"], kw["dag_id"], kw["seq"], errors=kw.get("errors", 0),
                                     calls=kw.get("calls", 0))  # fmt: skip
            settle(SimDelivery(self, msg), nxt, retry_max=self.settings.retry_max, window=True)
        except (SimRetry, WindowFailed, BackfillNotFound):
            pass
        except Exception as exc:  # Celery would record the task failed and ack it: the chain is lost
            self.task_errors.append(f"window task {kw} raised {exc!r}")

    def on_continue(self, msg: Message) -> None:
        kw = msg.kwargs
        try:
            nxt = self.life().continue_dag(kw["backfill_id"], kw["dag_id"], kw["seq"], errors=kw.get("errors", 0))
            settle(SimDelivery(self, msg), nxt, retry_max=self.settings.retry_max, window=False)
        except (SimRetry, BackfillNotFound):
            pass
        except Exception as exc:
            self.task_errors.append(f"continue task {kw} raised {exc!r}")

    def on_revoked(self, msg: Message) -> None:
        kw = msg.kwargs
        try:
            self.life().revoked(kw["backfill_id"], kw["dag_id"], whole_backfill=True)
        except Exception as exc:  # the handler logs it; the revoke itself stands
            logging.getLogger("faults").debug("revoke handler: %r", exc)

    def on_submit(self, msg: Message) -> None:
        kw = msg.kwargs
        life = self.life()
        task_id = f"submit-{kw['id']}"
        try:
            if kw.get("resume"):
                params = resume_params(life.ctx, kw["resume"])
            else:
                spec: BackfillSpec = kw["spec"]
                request = Request(
                    dags=spec.dags, start=day(spec.start).isoformat(), end=day(spec.start + spec.days).isoformat(),
                    batch="daily", reverse=spec.reverse, on_failure=spec.on_failure, reprocess=spec.reprocess,
                    unpause=spec.unpause, on_conflict=spec.on_conflict, max_parallel_dags=spec.max_parallel_dags,
                    notify={"url": "http://hook.invalid/own", "failed_windows": True},  # invariant 11
                    quiet_hours=spec.quiet_hours, max_starts_per_hour=spec.max_starts_per_hour,  # invariant 12
                    retries=spec.retries, retry_delay=spec.retry_delay,  # invariant 2
                    after=spec.after, priority=spec.priority,  # invariant 13; 8 (the caps)
                )  # fmt: skip
                params = validate(request, max_windows=1000)
            params, _, _ = life.submit(params, task_id=task_id, unpause=False, new_id=lambda: kw["id"])
            self.submitted[params.backfill_id] = "recorded"
        except InputError as exc:
            self.submitted.setdefault(kw["id"], f"refused: {exc}")
        except TRANSIENT as exc:
            if life.retry_submit(task_id):  # half done (or cannot tell): retried until dispatched
                SimDelivery(self, msg).retry(5.0, {})
            else:
                self.submitted.setdefault(kw["id"], f"failed: {exc!r}")

    # -- users ------------------------------------------------------------------------------

    def user(self, action: UserAction) -> None:
        world = self.world
        if action.kind in ("cancel", "cancel_fail"):
            self.cancels.setdefault(action.target, world.t)
            with contextlib.suppress(InputError, BackfillNotFound):
                cancel(self.context(), action.target, fail_running=action.kind == "cancel_fail",
                       revoke=world.revoked.add, sleep=world.sleep, publisher=self)  # fmt: skip
                if action.kind == "cancel_fail":
                    self.cancel_done.setdefault(action.target, world.t)
        elif action.kind == "resume":
            state = self.redis.hget(self.record.k_meta(action.target), "state")
            if state in (b"failed", b"cancelled"):
                rid = f"{action.target}-r"
                world.publish(Message("submit", {"id": rid, "resume": action.target}))
            elif state == b"running" and world.t < T0 + HORIZON / 2:
                world.at(world.t + 600, lambda: world.spawn("user-resume", lambda: self.user(action)))
        elif action.kind in ("pause", "unpause"):
            self.airflow.set_pause(action.target, action.kind == "pause")
        elif action.kind == "trigger":
            d, runs = day(action.day), self.airflow.runs[action.target]
            interval = {"window": (d, day(action.day + 1)), "point": (d, d), "other": (d, day(action.day + 2))}
            run_id = action.run_id or f"scheduled__{d.isoformat()}"
            if not any(r.logical_date == d for r in runs.values()) and run_id not in runs:
                self.airflow.add_run(action.target, run_id, d, interval[action.interval], "scheduled")
        elif action.kind == "odd":  # the active runs report a state Airflow 3 does not have, for a while
            self.airflow.tick()
            for run in self.airflow.runs[action.target].values():
                if run.state in ("queued", "running"):
                    run.odd_until = world.t + 120

    # -- running ----------------------------------------------------------------------------

    def run(self) -> list[str]:
        world = self.world
        for spec in self.schedule.backfills:
            world.at(T0 + spec.at, lambda spec=spec: world.spawn(
                "user-submit", lambda: world.publish(Message("submit", {"id": spec.id, "spec": spec}))))  # fmt: skip
        for action in self.schedule.users:
            world.at(T0 + action.at, lambda a=action: world.spawn(f"user-{a.kind}", lambda: self.user(a)))
        self.watch()
        try:
            world.run(until=T0 + self.schedule.horizon)
        finally:
            world.stop()
        end = world.t
        world.t = end + 30 * 86400.0  # let Airflow finish what is left, to judge the runs' outcomes
        self.airflow.tick()
        world.t = end
        return check(self) + [e.splitlines()[0] for e in world.errors] + self.task_errors


def _parse(url: str) -> dict[str, Any]:
    """redis://[:password@]host:port/db or unix:///path?db=N, as keyword arguments of redis.Redis."""
    from redis.connection import parse_url

    kwargs = parse_url(url)
    kwargs.pop("connection_class", None)
    if "path" in kwargs:
        kwargs["unix_socket_path"] = kwargs.pop("path")
    kwargs.setdefault("db", 0)
    return kwargs
