"""Windows in flight wait parked in Redis; one watcher looks at all their runs at once.

Without it, each window in flight looks at its own run (one request per look, paced by what
its DAG taught, ``backfill.pacing``). With it:

- a window whose run is in flight ends its execution by *parking* its next message in Redis
  (the message a Celery retry would publish: same task id, kwargs, rest of the chain, stamps),
  with a deadline (``Settings.watched_wait``: its own look, should nothing wake it sooner);
- the watcher, a thread in every worker's main process of which one at a time holds a lease,
  asks when a watched run is due for a look (its start a second after its trigger; its end by
  its DAG's pace, ``backfill.pacing``) a list for it and for every run of its kind that may
  have started or ended by now (``POST /api/v2/dags/~/dagRuns/list``: many DAGs, by state and
  by start or end date). It wakes each window whose run it lists ended, or running and not yet
  seen so, with the run as listed (the woken step reads it instead of asking Airflow), and
  publishes every due message.

So a window costs its busy check and its trigger, and its share of lists that serve every
window in flight: a few DAGs cost what their own looks would, a thousand DAGs a few requests
a second (``docs/performance.md``, B2, B4 and B5).

What holds whatever crashes where:

- *At least once.* A claim moves a message's deadline a lease ahead before publishing it, and
  the message is removed only once published, unless parked again meanwhile
  (``park_claim.lua``, ``park_done.lua``): a watcher dying in between leaves it to the next
  round or the next watcher. A window's step is safe to repeat (``backfill.runner``), so a
  message published twice costs one look. Due messages are published first in every round,
  whatever the lists do.
- *One message per window.* Parking replaces what the window had parked: duplicate deliveries
  (a redelivery after a crash) collapse here instead of polling side by side.
- *The watcher is an accelerator.* A window parks only while a watcher holds its lease;
  otherwise it waits on a Celery countdown as before. A run the watcher misses (ended without
  starting, listed late) is seen at the window's own deadline. With the watcher turned off,
  every worker still publishes the messages parked before, at their deadlines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from backfill.airflow import AirflowClient
from backfill.clock import SYSTEM, Clock
from backfill.lua import source
from backfill.pacing import FIELDS, SCHEDULER_START, Pace, next_look

log = logging.getLogger("backfill")

ENDED = ("success", "failed")  # the states of a run that ended
CLAIM_LEASE = 60.0  # seconds a claimed message waits for its publish before it is due again
CLAIM_BATCH = 500  # messages claimed per script call
END_MARGIN = 5.0  # the end dates listed reach back this far before the last list (commit delays, skew)


def window_key(backfill_id: str, dag: str, seq: int) -> str:
    return f"{backfill_id}/{dag}/{seq}"  # a DAG id has no '/'


@dataclass(frozen=True, slots=True)
class Watched:
    dag: str
    run_id: str
    since: float  # when the run was triggered (the window's clock)
    running: bool = False  # the window has seen it started (else the watcher wakes it at its start too)


class Parking:
    """The parked messages and the watcher's lease and heartbeat, in Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str, clock: Clock = SYSTEM) -> None:
        self._redis = client
        self.clock = clock
        self.k_due = f"{prefix}:park:due"
        self.k_msg = f"{prefix}:park:msg"
        self.k_run = f"{prefix}:park:run"
        self.k_ended = f"{prefix}:park:ended"  # the run each woken window was woken for, as listed
        self.k_lease = f"{prefix}:watch:lease"
        self.k_lists = f"{prefix}:watch:lists"
        self._prefix = prefix
        self._park = client.register_script(source("park"))
        self._claim = client.register_script(source("park_claim"))
        self._done = client.register_script(source("park_done"))
        self._lease = client.register_script(source("watch_lease"))
        self._wake = client.register_script(source("park_wake"))
        self._alive = client.register_script(source("watch_alive"))
        self._alive_until = 0.0  # this process's cached answer of alive()

    # -- windows ----------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether a watcher is alive (its heartbeat is fresh). Cached for a second: asked at
        every look of every window in flight."""
        now = self.clock.now()
        if now < self._alive_until:
            return True
        if self._alive(keys=[self.k_lease], args=[self.clock.script_now()]):
            self._alive_until = now + 1.0
            return True
        return False

    def park(self, key: str, message: dict[str, Any], delay: float, watched: Watched) -> None:
        run = json.dumps([watched.dag, watched.run_id, watched.since, watched.running])
        meta = f"{self._prefix}:bf:{key.split('/')[0]}"  # Record.k_meta: its cancel flag
        self._park(keys=[self.k_due, self.k_msg, self.k_run, self.k_ended, meta],
                   args=[key, int(delay * 1000), json.dumps(message), run, self.clock.script_now()])  # fmt: skip

    def wake(self, runs: dict[str, dict[str, Any]]) -> int:
        """Make these windows' messages due now (those still parked, not being published), with
        the run each was woken for, as Airflow listed it (the woken step reads it instead of
        asking). Returns how many were woken."""
        if not runs:
            return 0
        args: list[str] = []
        for key, run in runs.items():
            args += [key, json.dumps(run), "1" if run.get("state") in ENDED else "0"]
        return int(self._wake(keys=[self.k_due, self.k_ended], args=args))

    def wake_now(self, keys: Iterable[str]) -> int:
        """Make these windows' messages due now, with no run for them (a cancel)."""
        return self.wake({k: {} for k in keys})

    def ended(self, key: str) -> dict[str, Any] | None:
        """The ended run a window was woken for, taken (read once): the step checks it is its
        own attempt's end before trusting it."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(self.k_ended, key)
        pipe.hdel(self.k_ended, key)
        raw = pipe.execute()[0]
        return json.loads(raw) or None if raw else None  # {}: woken with no run (a cancel)

    def wake_backfill(self, backfill_id: str) -> int:
        """Every parked window of a backfill, due now (a cancel: they see it at once)."""
        keys = [k for k in (_text(k) for k in self._redis.hkeys(self.k_run)) if k.startswith(f"{backfill_id}/")]
        return self.wake_now(keys)

    def parked(self, backfill_id: str | None = None) -> dict[str, float]:
        """Parked windows and their deadlines (epoch seconds on Redis's clock)."""
        rows: list[tuple[bytes, float]] = self._redis.zrange(self.k_due, 0, -1, withscores=True)  # type: ignore[assignment]
        keys = ((_text(k), float(s) / 1000) for k, s in rows)
        return {k: s for k, s in keys if backfill_id is None or k.startswith(f"{backfill_id}/")}

    # -- the watcher ------------------------------------------------------------------------

    def lease(self, holder: str, ttl: float) -> bool:
        """Take or renew the watcher's lease (one watcher at a time per Redis and prefix)."""
        return bool(self._lease(keys=[self.k_lease], args=[holder, int(ttl * 1000), self.clock.script_now()]))

    def give_up(self, holder: str) -> None:
        """Let the lease go (a worker shutting down): a stand-by takes over at its next round."""
        if _text(self._redis.hget(self.k_lease, "holder") or b"") == holder:
            self._redis.delete(self.k_lease)

    def holder(self) -> str | None:
        """Who holds the watcher's lease (``host:pid``), if anyone ever took it."""
        value = self._redis.hget(self.k_lease, "holder")
        return _text(value) if value else None

    def watched(self) -> dict[str, Watched]:
        out = {}
        for key, raw in self._redis.hgetall(self.k_run).items():
            dag, run_id, since, running = json.loads(raw)
            out[_text(key)] = Watched(dag, run_id, float(since), bool(running))
        return out

    def paces(self, pairs: list[tuple[str, str]]) -> list[Pace]:
        """The learnt pace of each (backfill, DAG) (``backfill.pacing``), one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for bf, dag in pairs:
            pipe.hmget(f"{self._prefix}:bf:{bf}:dag:{dag}", list(FIELDS))
        return [Pace.from_record(v) for v in pipe.execute()] if pairs else []

    def count_list(self) -> None:
        """Count one list request of the watcher (what it costs Airflow: bench B2 and B5)."""
        self._redis.incr(self.k_lists)

    def lists(self) -> int:
        return int(self._redis.get(self.k_lists) or 0)

    def claim(self, lease: float = CLAIM_LEASE) -> list[tuple[str, float, dict[str, Any]]]:
        flat = self._claim(
            keys=[self.k_due, self.k_msg], args=[self.clock.script_now(), int(lease * 1000), CLAIM_BATCH]
        )
        return [(_text(flat[i]), float(flat[i + 1]), json.loads(flat[i + 2])) for i in range(0, len(flat), 3)]

    def done(self, claimed: list[tuple[str, float]]) -> int:
        if not claimed:
            return 0
        args = [x for key, score in claimed for x in (key, score)]
        return int(self._done(keys=[self.k_due, self.k_msg, self.k_run], args=args))


class Watcher:
    """Rounds while holding the lease: list the watched runs that started or ended, wake their
    windows, publish every due message (``publish``: Celery's, in a worker).

    A round's lists are asked only when a watched run is due for a look by its DAG's pace
    (``backfill.pacing``: around its expected end; its start a second after its trigger, then
    backing off): one list serves every watched run, so a few DAGs cost what their own looks
    would and a thousand DAGs no more than a few lists a second."""

    def __init__(
        self, *, parking: Parking, airflow: AirflowClient, publish: Callable[[dict[str, Any]], None],
        every: float = 1.0, ceiling: float = 60.0, holder: str | None = None,
    ) -> None:  # fmt: skip
        self.parking = parking
        self.airflow = airflow
        self.publish = publish
        self.every = every  # the longest between two rounds (new windows, due messages)
        self.min_gap = every / 4  # the shortest between two rounds with lists
        self.ceiling = ceiling  # the longest between two lists while a run is watched
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.lists = 0  # list requests sent
        self._forget()

    def _forget(self) -> None:
        self._next: dict[str, float] = {}  # per watched window: when its pace says to look for its end
        self._start_next: dict[str, float] = {}  # per window not seen started: when to look for its start
        self._started: dict[str, float] = {}  # windows woken at their run's start: its start (epoch s)
        self._covered: dict[str, float] = {}  # per watched window: when a list of ends last covered its DAG

    @property
    def lease_ttl(self) -> float:
        """How long the lease outlives its holder's last round: a round takes a few Airflow
        requests (and a stand-by takes over this long after a watcher dies)."""
        return max(30.0, 5 * self.every)

    def tick(self) -> float:
        """One round; returns the seconds until the next one is due. Due messages are published
        first and again last, whatever the lists do: a parked window's deadline holds even when
        Airflow fails every list."""
        if not self.parking.lease(self.holder, self.lease_ttl):
            self._forget()  # another watcher's: start afresh if it comes back
            return self.every
        try:
            self._publish_due()
            watched = self.parking.watched()
            now = self.parking.clock.now()
            for memo in (self._next, self._start_next, self._started, self._covered):
                for key in [k for k in memo if k not in watched]:
                    del memo[key]
            if watched:
                self._wake(watched, now)
            else:
                self._forget()
        finally:
            # Still ours (a round can outlast the lease when Airflow is slow): publish what woke.
            if self.parking.lease(self.holder, self.lease_ttl):
                self._publish_due()
        soonest = min([*self._next.values(), *self._start_next.values()], default=now + self.every)
        return min(self.every, max(self.min_gap, soonest - self.parking.clock.now()))

    def _paces(self, keys: list[str], watched: dict[str, Watched]) -> list[Pace]:
        return self.parking.paces([(k.split("/")[0], watched[k].dag) for k in keys])

    def _expected(self, key: str, w: Watched, pace: Pace) -> tuple[float | None, float]:
        """When the run should end (epoch seconds; None: nothing learnt) and its deviation."""
        start = self._started.get(key)
        if start is not None and pace.run:
            return start + pace.run, pace.run_dev or 0.1 * pace.run
        if pace.total:
            return w.since + pace.total, pace.total_dev or 0.1 * pace.total
        return None, 0.0

    def _end_look(self, key: str, w: Watched, pace: Pace, now: float) -> float:
        """The next look at the run's end. A list costs one request whatever it answers for, so
        the first look comes a little after the expected end rather than before (one look
        usually sees it ended), and a run with nothing learnt is listed every round."""
        start = self._started.get(key)
        started = start - w.since if start is not None else None
        ceiling = self.ceiling if pace.total is not None else min(self.ceiling, self.every)
        return now + next_look(pace, max(0.0, now - w.since), started=started, floor=self.min_gap,
                               ceiling=ceiling, lead=-0.5)  # fmt: skip

    def _in_reach(self, key: str, w: Watched, pace: Pace, now: float) -> bool:
        """Whether the run may have ended by now (a list asked for another DAG covers it too)."""
        expected, dev = self._expected(key, w, pace)
        return expected is None or now >= expected - dev

    def _start_look(self, key: str, w: Watched, now: float) -> float | None:
        """The next look for the run's start, until it is seen (``status`` then shows it
        running): a second after the trigger, then backing off (a busy Airflow starts it late)."""
        if w.running or key in self._started:
            return None
        at = self._start_next.setdefault(key, w.since + SCHEDULER_START)
        return at if at > now else now

    def _wake(self, watched: dict[str, Watched], now: float) -> None:
        """Ask Airflow when a watched run is due for a look (its start, or its end by its DAG's
        pace), in at most two lists that answer for every run of the DAGs asked: the runs started
        since the oldest of their triggers (for runs not yet seen started), and the runs ended
        since the last list that covered them (for runs due, and every run that may have ended by
        now). Both stay small at a thousand DAGs: only recent starts and ends come back. Each
        window whose run ended, or runs and was not yet seen so, is woken with its run as listed."""
        new = [k for k in watched if k not in self._next]
        for key, pace in zip(new, self._paces(new, watched), strict=True):
            self._next[key] = self._end_look(key, watched[key], pace, watched[key].since)
        starts = {k: self._start_look(k, w, now) for k, w in watched.items()}
        start_due = {k for k, t in starts.items() if t is not None and t <= now}
        end_due = {k for k in watched if self._next[k] <= now}
        if not start_due and not end_due:
            return
        wake: dict[str, dict[str, Any]] = {}
        if start_due:
            asked = {watched[k].dag for k in start_due}
            waiting = {k: w for k, w in watched.items() if starts[k] is not None and w.dag in asked}
            since = min(w.since for w in waiting.values()) - END_MARGIN
            found = self._listed(self.airflow.started_runs_json(sorted(asked), since=since))
            for key, w in waiting.items():
                run = found.get((w.dag, w.run_id))
                if run is None:  # still queued: look again, backing off (a busy Airflow starts it late)
                    self._start_next[key] = now + min(self.ceiling, max(self.min_gap, 0.5 * (now - w.since)))
                    continue
                wake[key] = run
                start = _epoch(run.get("start_date"))
                self._started[key] = start if start is not None else now
                self._start_next.pop(key, None)
        if end_due:
            keys = [k for k in watched if k not in wake]
            paces = dict(zip(keys, self._paces(keys, watched), strict=True))
            asked = {watched[k].dag for k in keys if k in end_due or self._in_reach(k, watched[k], paces[k], now)}
            covered = {k: watched[k] for k in keys if watched[k].dag in asked}
            if covered:
                since = min(self._covered.get(k, w.since) for k, w in covered.items()) - END_MARGIN
                found = self._listed(self.airflow.ended_runs_json(sorted(asked), since=since))
                for key, w in covered.items():
                    self._next[key] = self._end_look(key, w, paces[key], now)
                    self._covered[key] = now
                    if (w.dag, w.run_id) in found:
                        wake[key] = found[(w.dag, w.run_id)]
        woken = self.parking.wake(wake)
        if woken:
            log.debug("watcher: %d window(s) woken", woken)

    def _listed(self, runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        self._counted()
        return {(r["dag_id"], r["dag_run_id"]): r for r in runs}

    def _counted(self) -> None:
        self.lists += 1
        self.parking.count_list()

    def _publish_due(self) -> int:
        count = 0
        while True:
            claimed = self.parking.claim()
            if not claimed:
                return count
            sent: list[tuple[str, float]] = []
            try:
                for key, score, message in claimed:
                    self.publish(message)
                    sent.append((key, score))
            finally:
                self.parking.done(sent)
            count += len(sent)
            if len(claimed) < CLAIM_BATCH:
                return count

    def run(self, stop: threading.Event, *, drain_only: bool = False) -> None:
        """Rounds until ``stop`` is set; an error costs one round, never the thread.
        ``drain_only`` (the watcher turned off): no lease and no lists, only the messages parked
        before published at their deadlines (claims are atomic: any number of workers may)."""
        while not stop.is_set():
            try:
                if drain_only:
                    self._publish_due()
                    wait = self.every
                else:
                    wait = self.tick()
            except Exception as exc:  # Redis or Airflow failing for a moment: the next round tries again
                log.warning("watcher: %r (next round in %.1f s)", exc, self.every)
                wait = self.every
            stop.wait(wait)
        if not drain_only:
            with contextlib.suppress(redis.RedisError):
                self.parking.give_up(self.holder)


def _epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
