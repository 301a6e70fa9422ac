"""The simulated world: a clock, actors taking turns, a Celery-like broker, and the faults.

Actors are threads, but only one runs at a time: the running actor hands the baton back at
every Redis or Airflow call (a *point*), and the world picks who goes next with its seeded
random generator. Interleavings, crashes and timings are therefore a function of the seed,
and a failing schedule replays exactly.

The broker models Celery with ``task_acks_late`` on Redis: a message is delivered at its ETA
(maybe late, maybe twice), executed by an actor, and acked at the end; an actor that crashes
leaves it unacked, and it comes back after the visibility timeout (or at once: a pool child
lost, ``task_reject_on_worker_lost``). Revoked stamps drop messages on delivery and call the
workers' revoke handler.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.exceptions import OperationalError

from backfill.clock import Clock
from backfill.errors import AirflowConflict, AirflowUnavailable

T0 = 1_750_000_000.0  # the world's clock starts here (a Unix time)


class Crash(BaseException):
    """The actor's worker process died at this point."""


@dataclass
class Fault:
    """A targeted fault: at the ``nth`` point matching ``kind`` and ``name`` ("*": any), and if
    given with ``inside`` among the caller's functions, ``when`` before or after its effect (or,
    for a pipeline, "midway": its first command applied, then a crash), do
    ``action``: "crash", "error" (the call fails), "bug" (an unexpected exception), "slow" (the
    longest a call can take) or "pause" (the actor sleeps ``seconds``: others run meanwhile);
    ``times`` times in a row."""

    kind: str
    name: str
    action: str
    when: str = "before"
    nth: int = 1
    inside: str | None = None
    times: int = 1
    seconds: float = 5.0
    redeliver: float | None = None  # a crash: its message comes back after this (default: at random)
    seen: int = 0
    fired: bool = False


@dataclass
class Rates:
    """Random faults, per point."""

    crash: float = 0.0
    redis_error: float = 0.0
    airflow_error: float = 0.0
    slow: float = 0.0
    publish_error: float = 0.0
    duplicate: float = 0.0  # a delivery made twice
    late: float = 0.0  # a delivery up to late_margin late


@dataclass
class Message:
    task: str  # "submit", "window" or "continue"
    kwargs: dict[str, Any]
    chain: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # the links after it, in order
    stamp: str | None = None  # the backfill id it is stamped with
    id: int = 0


class Actor:
    def __init__(self, world: World, name: str, fn: Callable[[], None], *, bf: str | None, seq: int | None) -> None:
        self.world, self.name, self.fn, self.bf, self.seq = world, name, fn, bf, seq
        self.go = threading.Lock()  # a baton: held (acquired) until the world hands it over
        self.go.acquire()
        self.wake_at: float | None = None
        self.done = False
        self.crashed = False
        self.error: BaseException | None = None
        self.on_crash: Callable[[], None] | None = None
        self.redeliver_after: float | None = None
        self.skew = world.rng.choice(world.skews)  # its worker's clock error
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        self.go.acquire()
        try:
            if self.world.stopping:
                raise Crash()
            self.fn()
        except Crash:
            self.crashed = True
            if self.bf:
                self.world.crashed_for.add(self.bf)
        except BaseException as exc:  # the harness reports it as a violation
            self.error = exc
            self.world.errors.append(f"{self.name}: {exc!r}\n{traceback.format_exc()}")
        finally:
            self.done = True
            self.world._back.release()


class WorldClock(Clock):
    """Each actor's worker clock (the world's time plus its skew); Redis's is the world's."""

    def __init__(self, world: World) -> None:
        self.world = world

    def now(self) -> float:
        actor = self.world.current
        return self.world.t + (actor.skew if actor else 0.0)

    def script_now(self) -> str:
        return str(int(self.world.t * 1000))


class World:
    def __init__(self, seed: int, *, rates: Rates | None = None, faults: list[Fault] | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.t = T0
        self.rates = rates or Rates()
        self.faults = faults or []
        self.actors: list[Actor] = []
        self.current: Actor | None = None
        self._back = threading.Lock()  # released by the running actor when it hands the baton back
        self._back.acquire()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._ids = itertools.count(1)
        self.errors: list[str] = []
        self.points = 0
        self.crashes = 0
        self.injected: list[str] = []  # what was injected, for the report
        self.fail_rate = 0.1
        self.durations = (5.0, 90.0)
        self.skews: tuple[float, ...] = (0.0,)
        self.visibility_timeout = 1800.0
        self.late_margin = 60.0
        self.call_max = 30.0
        self.revoked: set[str] = set()
        self.handlers: dict[str, Callable[[Message], None]] = {}
        self.clock = WorldClock(self)
        self.in_flight = 0  # messages published and not acked
        self.stopping = False
        self.crashed_for: set[str] = set()  # backfills one of whose deliveries crashed
        self.steps: dict[tuple[str, str, int], float] = {}  # (backfill, DAG, seq) -> its last step's start

    # -- actors and time --------------------------------------------------------------------

    def spawn(self, name: str, fn: Callable[[], None], *, bf: str | None = None, seq: int | None = None) -> Actor:
        actor = Actor(self, name, fn, bf=bf, seq=seq)
        self.actors.append(actor)
        return actor

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._ids), fn))

    def acting_for(self) -> tuple[str | None, int | None]:
        a = self.current
        return (a.bf, a.seq) if a else (None, None)

    def sleep(self, seconds: float) -> None:
        actor = self.current
        assert actor is not None
        actor.wake_at = self.t + max(0.0, seconds)
        self._yield()

    def _yield(self) -> None:
        actor = self.current
        assert actor is not None
        self._back.release()
        actor.go.acquire()
        if self.stopping:
            raise Crash()

    def run(self, *, until: float) -> None:
        """Run actors and timers until nothing is left to do or the clock reaches ``until``."""
        while True:
            ready = [a for a in self.actors if a.wake_at is None or a.wake_at <= self.t]
            if not ready:
                nxt = min([a.wake_at for a in self.actors if a.wake_at is not None] +
                          ([self._timers[0][0]] if self._timers else []), default=None)  # fmt: skip
                if nxt is None or nxt > until:
                    return
                self.t = max(self.t, nxt)
                while self._timers and self._timers[0][0] <= self.t:
                    heapq.heappop(self._timers)[2]()
                continue
            actor = self.rng.choice(ready)
            actor.wake_at = None
            self.current = actor
            actor.go.release()
            self._back.acquire()
            self.current = None
            if actor.done:
                self.actors.remove(actor)
                actor.thread.join()
                if actor.crashed and actor.on_crash:
                    actor.on_crash()

    def stop(self) -> None:
        """End the threads of actors still waiting (a schedule cut short)."""
        self.stopping = True
        for actor in self.actors:
            actor.on_crash = None
            actor.go.release()
            self._back.acquire()
            actor.thread.join(timeout=5)
        self.actors = []

    # -- points -----------------------------------------------------------------------------

    def point(self, kind: str, name: str) -> None:
        """A call is about to be made: maybe switch actors, crash, fail it, or slow it down."""
        if self.current is None:
            return
        if self.stopping:
            raise Crash()
        self._fault(kind, name, "before")
        self.points += 1
        if len([a for a in self.actors if a.wake_at is None or a.wake_at <= self.t]) > 1:
            self.current.wake_at = None  # type: ignore[union-attr]
            self._yield()

    def after(self, kind: str, name: str) -> None:
        """A call took effect: its caller may still die or lose the reply."""
        self._fault(kind, name, "after")

    def _fault(self, kind: str, name: str, when: str) -> None:
        actor = self.current
        if actor is None:
            return
        f = self._targeted(kind, name, when)
        if f is not None:
            if f.action == "pause":
                self.injected.append(f"t+{self.t - T0:.1f} {actor.name}: pause {f.seconds} s {when} {kind} {name} *")
                self.sleep(f.seconds)
                return
            actor.redeliver_after = f.redeliver
            self._do(f.action, kind, name, when, targeted=True)
            return
        r, rng = self.rates, self.rng
        if actor.name.startswith("user"):
            return  # a person's command: its own faults are not ours to survive
        if rng.random() < r.crash:
            self._do("crash", kind, name, when)
        elif (kind == "redis" and rng.random() < r.redis_error) or (
            kind == "airflow" and rng.random() < r.airflow_error
        ):
            self._do("error", kind, name, when)
        elif kind == "airflow" and when == "before" and rng.random() < r.slow:
            self._do("slow", kind, name, when)

    def midway(self, kind: str, name: str) -> bool:
        """Whether a targeted crash ``when="midway"`` is due at this pipeline: its caller applies
        the pipeline's first command only, then crashes (``crash_midway``), as a client killed
        while Redis runs what it had sent."""
        actor = self.current
        f = self._targeted(kind, name, "midway") if actor is not None else None
        if f is None or actor is None:
            return False
        actor.redeliver_after = f.redeliver
        return True

    def _targeted(self, kind: str, name: str, when: str) -> Fault | None:
        """The targeted fault due at this point, if any (counting the points each one matches)."""
        for f in self.faults:
            if f.fired or f.kind != kind or f.name not in (name, "*") or f.when != when:
                continue
            if f.inside and f.inside not in _callers():
                continue
            f.seen += 1
            if f.seen >= f.nth:
                f.fired = f.seen >= f.nth + f.times - 1
                return f
        return None

    def crash_midway(self, kind: str, name: str) -> None:
        self._do("crash", kind, name, "midway", targeted=True)

    def _do(self, action: str, kind: str, name: str, when: str, *, targeted: bool = False) -> None:
        actor = self.current
        assert actor is not None
        self.injected.append(
            f"t+{self.t - T0:.1f} {actor.name}: {action} {when} {kind} {name}{' *' if targeted else ''}"
        )
        if action == "crash":
            self.crashes += 1
            raise Crash()
        if action == "slow":
            self.sleep((1.0 if targeted else self.rng.uniform(0.5, 1.0)) * self.call_max)
            return
        if action == "bug":
            raise RuntimeError(f"injected: a bug ({name})")
        if action == "conflict":
            raise AirflowConflict(f"injected: HTTP 409 ({name})")
        if kind == "redis":
            raise redis.exceptions.TimeoutError(f"injected: Redis timed out ({name})")
        if kind == "broker":
            raise OperationalError(f"injected: could not publish ({name})")
        raise AirflowUnavailable(f"injected: Airflow unavailable ({name})")

    # -- the broker -------------------------------------------------------------------------

    def publish(self, msg: Message, *, countdown: float = 0.0) -> None:
        """Publish (may fail: the broker unreachable past the publish retries)."""
        if self.current is not None and not self.current.name.startswith("user"):
            self._fault("broker", msg.task, "before")
            if self.rng.random() < self.rates.publish_error:
                self._do("error", "broker", msg.task, "before")
        msg.id = next(self._ids)
        eta = self.t + countdown
        if self.rng.random() < self.rates.late:
            eta += self.rng.uniform(0, self.late_margin)
        self.in_flight += 1
        self.at(eta, lambda: self._deliver(msg))
        if self.rng.random() < self.rates.duplicate:
            self.in_flight += 1
            self.injected.append(f"t+{self.t - T0:.1f} duplicate delivery of {msg.task} {msg.kwargs}")
            # At once (a publish retried after a lost reply: both run side by side), or later (a
            # redelivery past the visibility timeout while the first is still held).
            later = self.rng.choice((self.rng.uniform(0, 2.0), self.rng.uniform(0, self.visibility_timeout)))
            self.at(eta + later, lambda: self._deliver(msg))

    def _deliver(self, msg: Message) -> None:
        kw = msg.kwargs
        name = f"{msg.task}:{kw.get('dag_id', '')}:{kw.get('seq', '')}#{msg.id}"

        def execute() -> None:
            if msg.task == "window":
                self.steps[(kw["backfill_id"], kw["dag_id"], kw["seq"])] = self.t
            if msg.stamp in self.revoked and msg.task != "submit":
                self.handlers["revoked"](msg)
            else:
                self.handlers[msg.task](msg)
            self.point("broker", "ack")
            self.in_flight -= 1

        actor = self.spawn(name, execute, bf=kw.get("backfill_id"), seq=kw.get("seq"))

        def redeliver() -> None:  # unacked: back after the visibility timeout, or at once (pool child lost)
            delay = self.rng.choice((self.visibility_timeout, 1.0))
            if actor.redeliver_after is not None:
                delay = actor.redeliver_after
            self.at(self.t + delay, lambda: self._deliver(msg))

        actor.on_crash = redeliver


def _callers() -> set[str]:
    return {f.name for f in traceback.extract_stack(limit=40)}


class SimRedis(redis.Redis):
    """A real Redis client whose every command and pipeline is a point of the world."""

    def __init__(self, world: World, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.world = world
        self.script_names: dict[str, str] = {}

    def execute_command(self, *args: Any, **options: Any) -> Any:
        name = self._name(args)
        self.world.point("redis", name)
        out = super().execute_command(*args, **options)
        self.world.after("redis", name)
        return out

    def _name(self, args: tuple[Any, ...]) -> str:
        cmd = str(args[0]).upper()
        if cmd == "EVALSHA":
            return self.script_names.get(str(args[1]), "EVALSHA")
        if cmd == "EVAL":  # a script queued on a pipeline (backfill.lua.queue)
            return self.script_names.get(hashlib.sha1(str(args[1]).encode()).hexdigest(), "EVAL")
        return cmd

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        world, execute = self.world, pipe.execute

        def run(raise_on_error: bool = True) -> Any:
            names = ",".join(self._name(c[0]) for c in pipe.command_stack)
            world.point("redis", f"PIPELINE[{names}]")
            if world.midway("redis", f"PIPELINE[{names}]"):
                head = redis.Redis.pipeline(self, transaction=False)
                head.command_stack = pipe.command_stack[:1]
                head.execute()
                world.crash_midway("redis", f"PIPELINE[{names}]")
            out = execute(raise_on_error)
            world.after("redis", f"PIPELINE[{names}]")
            return out

        pipe.execute = run  # type: ignore[method-assign]
        return pipe
