"""Fair counting semaphores in Redis: how many windows may have an Airflow run in flight.

Two limits, both held in Redis so they hold across every worker and machine:

- a backfill's ``max_parallel_dags``: at most that many of its DAGs run a window at once;
- the global cap (``BACKFILL_GLOBAL_MAX_RUNS``, or ``backfill throttle --global N`` at run
  time): at most that many windows of all backfills together.

A window takes its backfill's slot first, then a global one, right before it triggers, and
gives both back when its run has ended. A window that finds no free slot joins a line ordered
by when it first asked (in the global line, less its backfill's ``priority`` head start:
``PRIORITY_PLACES`` per level); slots go to the head of the line, so no DAG starves, and since
a DAG queues again for every window, DAGs take turns. The global line only ever holds windows that
have their backfill's slot, so a backfill at its own limit never blocks the others.

A slot is held under the window's run id and DAG (``<run id>@<dag>``) with an expiry that
the window renews together with its DAG's lock (``DagLocks.hold``, one script): a dead
holder's slot comes back after ``ttl``. Expiries are judged on Redis's clock (the scripts read
``TIME``), never on a worker's. A place in line is kept only
while its window keeps asking (``stale`` seconds), so a cancelled or lost window leaves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from backfill.clock import SYSTEM, Clock
from backfill.lua import queue, source

# A backfill's priority, per level, in places in the global line: its windows go ahead of
# windows that asked up to that many asks before them, and never further, so a lower-priority
# backfill still advances (a waiting window is overtaken at most PRIORITY_PLACES x the
# difference of priorities times).
PRIORITY_PLACES = 100


@dataclass(frozen=True, slots=True)
class Grant:
    granted: bool
    position: int  # place in line when not granted (1 = next)
    in_use: int  # slots held, this one included when granted
    limit: int  # the limit that applied (0 = none)


def _grant(reply: Any) -> Grant:
    ok, pos, used, lim = reply
    return Grant(bool(ok), int(pos), int(used), int(lim))


class Semaphore:
    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        ttl: float,
        stale: float,
        limit_key: str | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._redis = client
        self.clock = clock
        self.key = key
        self.limit_key = limit_key or f"{key}:limit"
        self._ttl_ms = int(ttl * 1000)
        self._stale_ms = int(stale * 1000)
        self._lua_acquire = client.register_script(source("slot_acquire"))

    def _keys(self) -> list[str]:
        return [self.key, f"{self.key}:line", f"{self.key}:seen", self.limit_key, f"{self.key}:tickets"]

    def acquire(self, member: str, limit: int, *, head_start: int = 0) -> Grant:
        """Take (or keep) a slot for ``member``; ``limit`` applies unless Redis holds an override.
        ``head_start``: places ahead of its arrival ``member`` joins the line at (a priority)."""
        return _grant(self._lua_acquire(keys=self._keys(), args=self._args(member, limit, head_start)))

    def acquire_on(self, pipe: redis.client.Pipeline, member: str, limit: int, *, head_start: int = 0) -> None:
        """``acquire``, queued on a pipeline (its reply: ``_grant``)."""
        queue(self._lua_acquire, pipe, self._keys(), self._args(member, limit, head_start))

    def _args(self, member: str, limit: int, head_start: int) -> list[Any]:
        return [member, limit, self.clock.script_now(), self._ttl_ms, self._stale_ms, head_start]

    def release(self, *members: str, client: redis.client.Pipeline | None = None) -> None:
        """Give back slots and places in line. ``client``: a pipeline to queue it on."""
        if not members:
            return
        pipe = client or self._redis.pipeline(transaction=False)
        for k in self._keys()[:3]:
            pipe.zrem(k, *members)
        if client is None:
            pipe.execute()

    def members(self, prefix: str = "") -> list[str]:
        """Holders and waiters whose member starts with ``prefix``."""
        out: set[str] = set()
        for k in self._keys()[:2]:
            held = cast(list[bytes], self._redis.zrange(k, 0, -1))
            out.update(m.decode() for m in held if m.decode().startswith(prefix))
        return sorted(out)

    def in_use(self) -> int:
        given = self.clock.script_now()
        now = int(given) if given else self.clock.redis_ms(self._redis)
        return int(self._redis.zcount(self.key, f"({now}", "+inf"))

    def set_limit(self, limit: int | None) -> None:
        """Override the configured limit for every worker at once (None: back to the configured one)."""
        if limit is None:
            self._redis.delete(self.limit_key)
        else:
            self._redis.set(self.limit_key, int(limit))

    def limit_override(self) -> int | None:
        value = self._redis.get(self.limit_key)
        return None if value is None else int(value)


class Throttle:
    """The two limits a window passes before it triggers (see the module docstring)."""

    def __init__(
        self, client: redis.Redis, *, prefix: str, ttl: float, stale: float, global_limit: int, clock: Clock = SYSTEM
    ) -> None:
        self._client = client
        self.clock = clock
        self._prefix = prefix
        self._ttl = ttl
        self._stale = stale
        self.global_limit = global_limit
        self.glob = Semaphore(client, f"{prefix}:slots:global", ttl=ttl, stale=stale, clock=clock)
        self.starts = StartRate(client, prefix=prefix, clock=clock)

    def of_backfill(self, bf: str) -> Semaphore:
        # The limit of a backfill is its own parameter; no override key is ever set for it.
        key = f"{self._prefix}:bf:{bf}:slots"
        return Semaphore(self._client, key, ttl=self._ttl, stale=self._stale, clock=self.clock)

    def acquire(self, bf: str, member: str, *, max_parallel_dags: int, priority: int = 0) -> str | None:
        """None when the window may trigger, else why it waits. ``priority``: a head start of
        ``PRIORITY_PLACES`` per level in the global line (negative: behind)."""
        return self.acquire_then(bf, member, max_parallel_dags=max_parallel_dags, priority=priority)[0]

    def acquire_then(
        self, bf: str, member: str, *, max_parallel_dags: int, priority: int = 0,
        then: Callable[[redis.client.Pipeline], Any] | None = None,
    ) -> tuple[str | None, list[Any]]:  # fmt: skip
        """``acquire``, and what ``then`` queues after the last slot's grant, in the same round
        trip (the check before a trigger, which fails without the slot): why it waits (None: it
        may trigger), and the answers of ``then`` (none if it was not sent)."""
        if max_parallel_dags > 0:
            grant = self.of_backfill(bf).acquire(member, max_parallel_dags)
            if not grant.granted:
                # No position or count in the text: the reason is recorded (and logged) only
                # when it changes, and a waiting DAG should make one line, not one per move.
                return f"max_parallel_dags={grant.limit} reached, waiting for a turn in line", []
        pipe = self._client.pipeline(transaction=False)
        self.glob.acquire_on(pipe, member, self.global_limit, head_start=priority * PRIORITY_PLACES)
        if then is not None:
            then(pipe)
        reply, *rest = pipe.execute()
        grant = _grant(reply)
        if not grant.granted:
            return (
                f"global limit reached ({grant.limit} runs in flight across all backfills), waiting for a turn in line"
            ), rest
        return None, rest

    def slot_keys(self, bf: str, *, max_parallel_dags: int) -> list[str]:
        """The slot sets a window of ``bf`` holds (for ``DagLocks.hold`` and ``arm``)."""
        return ([self.of_backfill(bf).key] if max_parallel_dags > 0 else []) + [self.glob.key]

    def release(self, bf: str, *members: str, client: redis.client.Pipeline | None = None) -> None:
        pipe = client or self._client.pipeline(transaction=False)
        self.of_backfill(bf).release(*members, client=pipe)
        self.glob.release(*members, client=pipe)
        if client is None:
            pipe.execute()

    def release_backfill(self, bf: str) -> None:
        """Give back every slot and place in line of a backfill (on cancel)."""
        mine = set(self.glob.members(f"{bf}__")) | set(self.of_backfill(bf).members())
        self.release(bf, *mine)


class StartRate:
    """A backfill's ``max_starts_per_hour``: at most that many of its windows start (trigger or
    re-run) in any hour. A window reserves its start right before it triggers; a repeated step
    keeps its reservation, so a redelivery never counts twice. Judged on Redis's clock."""

    SPAN_MS = 3_600_000

    def __init__(self, client: redis.Redis, *, prefix: str, clock: Clock = SYSTEM) -> None:
        self._prefix = prefix
        self._client = client
        self.clock = clock
        self._lua = client.register_script(source("start_reserve"))

    def key(self, bf: str) -> str:
        return f"{self._prefix}:bf:{bf}:starts"

    def check(self, bf: str, member: str, limit: int, *, reserve: bool) -> tuple[float, float] | None:
        """None when ``member`` may start (reserved if ``reserve``); else when it may (Unix time on
        Redis's clock: the same answer on every look) and in how many seconds (on that clock too)."""
        args: list[str | int] = [member, limit, self.clock.script_now(), self.SPAN_MS, 2 * self.SPAN_MS // 1000,
                                 "1" if reserve else "0"]  # fmt: skip
        ok, at, *wait = self._lua(keys=[self.key(bf)], args=args)
        return None if ok else (int(at) / 1000, int(wait[0]) / 1000)

    def started(self, bf: str, member: str) -> None:
        """``member``'s trigger went out: its start counts from now."""
        self._lua(
            keys=[self.key(bf)], args=[member, 0, self.clock.script_now(), self.SPAN_MS, 2 * self.SPAN_MS // 1000, "2"]
        )
