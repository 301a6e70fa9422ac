"""Windows in flight wait parked in Redis; one watcher looks at all their runs at once.

Without it, each window in flight looks at its own run (one request per look, paced by what
its DAG taught, ``backfill.pacing``). With it:

- a window whose run is in flight ends its execution by *parking* its next message in Redis
  (the message a Celery retry would publish: same task id, kwargs, rest of the chain, stamps),
  with a deadline (``Settings.watched_wait``: its own look, should nothing wake it sooner);
- the watcher, a thread in every worker's main process of which one at a time holds a lease,
  asks when a watched run is due for a look (its end by its DAG's pace, ``backfill.pacing``;
  the start of a long run just after its DAG's usual start delay) a list for it and for every
  run that may have started or ended by now (``POST /api/v2/dags/~/dagRuns/list``: many DAGs,
  by state and by start or end date; with a few runs watched, one list for all). It wakes each
  window whose run it lists ended, with the run as listed (the woken step reads it instead of
  asking Airflow), records ``running`` the windows whose run it lists started
  (``backfill.runner.record_started``: no task execution), and publishes every due message.

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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from backfill.airflow import AirflowClient
from backfill.clock import SYSTEM, Clock
from backfill.errors import describe
from backfill.lua import queue, source
from backfill.pacing import FIELDS, SCHEDULER_START, Pace, next_look

log = logging.getLogger("backfill")

ENDED = ("success", "failed")  # the states of a run that ended
CLAIM_LEASE = 60.0  # seconds a claimed message waits for its publish before it is due again
CLAIM_BATCH = 500  # messages claimed per script call
END_MARGIN = 5.0  # the end dates listed reach back this far before the last list (commit delays, skew)
# Rounds are at least this far apart, plus a little per run watched: a few runs are looked at when
# due to the tenth of a second (a late look costs a DAG its next scheduler loop, bench B1), a
# thousand share each list more and cost the main process less (B4).
MIN_GAP = 0.05
GAP_PER_RUN = 0.0005
# A run expected to take less than this (trigger to end) gets no look of its own for its start
# (each costs a request, bench B2): with a few runs watched, any list made while it runs records
# it running for free; otherwise its end records it.
START_WORTH = 120.0
# After a look that found a run still running, the next look at it comes at least this much later
# (twice as much for a look that serves it alone: a run's length varies by about a scheduler loop).
END_TICK = 0.25
SHARED_WITHIN = 1.0  # s: runs expected to end this close share a look (``Watcher._shared``)
# With nothing learnt, the next look comes after this share of the time waited: among a few DAGs,
# a first window's end is seen at most this share of its length late, for few looks; among many,
# every list covers such runs anyway (``Watcher._in_reach``).
UNLEARNT = 0.3
UNLEARNT_EVERY = 0.5  # s: among many DAGs, the longest between two lists covering a run with nothing learnt
# The pace of a run with nothing learnt is read again at most this often (an earlier window may
# have taught it since it was parked): a thousand reads per list otherwise (bench B4).
REFRESH_EVERY = 5.0
# A list asked anyway covers a run from this many deviations before its expected end, and from at
# least this share of its length before it: a deviation learnt from a few runs is often narrower
# than the runs' spread, and a run that ended before it was covered waited for it (up to 2 s more
# of handoff for runs of 20 s +-10 %, bench B4). Covering costs the list a DAG id more.
REACH = 2.0
REACH_SHARE = 0.1
START_MARGIN = 0.25  # s after the run's usual start that its first start look comes
# Up to this many runs watched, one list answers for all (their DAGs' runs started since the
# oldest trigger: starts and ends at once, a few runs per DAG); more, and a round asks only the
# DAGs of runs due, in a list of starts and a list of ends that stay short at a thousand DAGs.
ONE_LIST = 20
ONE_LIST_RUNS = 50  # ... as long as that list stays this short
# How often the watcher renews the locks and slots of parked windows by default (a worker passes
# ``Settings.hold_every``): their steps leave the lease covering this and a late round.
HOLD_EVERY = 55.0


def window_key(backfill_id: str, dag: str, seq: int) -> str:
    return f"{backfill_id}/{dag}/{seq}"  # a DAG id has no '/'


@dataclass(frozen=True, slots=True)
class Watched:
    dag: str
    run_id: str
    since: float  # when the run was triggered (the window's clock)
    running: bool = False  # the window has seen it started (else the watcher may record it started)
    # What keeps the window's lock and slots while it sleeps (``DagLocks.hold_spec``): renewed by
    # the watcher, so a deadline may outlast the lock's lease. Not read back by ``watched()``.
    hold: str | None = field(default=None, compare=False)


class Parking:
    """The parked messages and the watcher's lease and heartbeat, in Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str, clock: Clock = SYSTEM) -> None:
        self._redis = client
        self.clock = clock
        self.k_due = f"{prefix}:park:due"
        self.k_msg = f"{prefix}:park:msg"
        self.k_run = f"{prefix}:park:run"
        self.k_ended = f"{prefix}:park:ended"  # the run each woken window was woken for, as listed
        self.k_hold = f"{prefix}:park:hold"  # what renews each parked window's lock and slots
        self.k_lease = f"{prefix}:watch:lease"
        self.k_lists = f"{prefix}:watch:lists"
        self._prefix = prefix
        self._park = client.register_script(source("park"))
        self._claim = client.register_script(source("park_claim"))
        self._done = client.register_script(source("park_done"))
        self._lease = client.register_script(source("watch_lease"))
        self._wake = client.register_script(source("park_wake"))
        self._alive = client.register_script(source("watch_alive"))
        self._lua_hold = client.register_script(source("lock_hold"))
        self._alive_until = 0.0  # this process's cached answer of alive()
        self._decoded: dict[bytes | str, Watched] = {}  # watched(): entries as last read

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
        self._park(keys=[self.k_due, self.k_msg, self.k_run, self.k_ended, meta, self.k_hold],
                   args=[key, int(delay * 1000), json.dumps(message), run, self.clock.script_now(),
                         watched.hold or ""])  # fmt: skip

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
        """The run a window was woken for, taken (tests and tools). A step reads it with its
        snapshot (``Record.snapshot``'s ``also``) and checks it is its own attempt's before
        trusting it; the window's next park or its end forgets it."""
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
        """Every parked window's run. Read at every round of the watcher: entries unchanged since
        the last read are not decoded again (a thousand per round at a thousand DAGs)."""
        out = {}
        seen: dict[bytes | str, Watched] = {}
        for key, raw in self._redis.hgetall(self.k_run).items():
            known = self._decoded.get(raw)
            if known is None:
                dag, run_id, since, running = json.loads(raw)
                known = Watched(dag, run_id, float(since), bool(running))
            seen[raw] = out[_text(key)] = known
        self._decoded = seen
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
        return int(self._done(keys=[self.k_due, self.k_msg, self.k_run, self.k_hold], args=args))

    def hold_all(self) -> int:
        """Renew the lock and slots of every parked window (``lock_hold.lua``, one round trip):
        its deadline may outlast their lease. A window that ended or was cancelled keeps
        nothing. Returns how many were renewed."""
        holds = self._redis.hgetall(self.k_hold)
        if not holds:
            return 0
        now = self.clock.script_now()
        pipe = self._redis.pipeline(transaction=False)
        for raw in holds.values():
            keys, (token, ttl, member, slot_ttl, idx) = json.loads(raw)
            queue(self._lua_hold, pipe, keys, [token, ttl, now, member, slot_ttl, idx])
        return sum(1 for r in pipe.execute() if r != b"ended" and r != "ended")


class Watcher:
    """Rounds while holding the lease: list the watched runs that started or ended, wake their
    windows, publish every due message (``publish``: Celery's, in a worker).

    A round's lists are asked only when a watched run is due for a look by its DAG's pace
    (``backfill.pacing``: around its expected end; a long run's start just after its DAG's
    usual start delay, then backing off): one list serves every watched run, so a few DAGs
    cost what their own looks would and a thousand DAGs no more than a few lists a second."""

    def __init__(
        self, *, parking: Parking, airflow: AirflowClient, publish: Callable[[dict[str, Any]], None],
        every: float = 1.0, ceiling: float = 60.0, holder: str | None = None,
        started: Callable[[str, dict[str, Any]], Any] | None = None, one_list: int = ONE_LIST,
        hold_every: float = HOLD_EVERY, publish_many: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:  # fmt: skip
        self.parking = parking
        self.airflow = airflow
        self.publish = publish
        # Publishes a claimed batch at once (a worker's: one round trip to the broker), or raises
        # having published some or none (they are published again once their claim runs out).
        self.publish_many = publish_many
        self.every = every  # the longest between two rounds (new windows, due messages)
        self.min_gap = min(every, MIN_GAP)  # the shortest between two rounds (more with more runs watched)
        self.ceiling = ceiling  # the longest between two lists while a run is watched
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.lists = 0  # list requests sent
        # Records a run seen running (``backfill.runner.record_started``): its window sleeps on.
        # None: the window is woken to record it itself (a task execution per start).
        self.started = started
        self.one_list = one_list  # up to this many runs watched, one list for all (``_one_list``)
        self.hold_every = hold_every  # parked windows' locks and slots renewed this often (``_hold``)
        self._hold_at = 0.0  # when they are next renewed (this process's clock)
        self._forget()

    def _forget(self) -> None:
        self._next: dict[str, float] = {}  # per watched window: when its pace says to look for its end
        self._start_next: dict[str, float] = {}  # per window not seen started: when to look for its start
        self._started: dict[str, float] = {}  # windows whose run was seen started: its start (epoch s)
        self._covered: dict[str, float] = {}  # per watched window: when a list of ends last covered its DAG
        self._pace: dict[str, Pace] = {}  # per watched window: its DAG's pace (re-read while nothing is learnt)
        self._since: dict[str, float] = {}  # per watched window: the trigger its memos are about
        self._crowded: float | None = None  # the one list from this date was long: two lists until it moves
        self._refresh_at = 0.0  # when the pace of runs with nothing learnt is next read again
        self._gap = self.min_gap

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
            self._hold()  # first: a publish failing round after round must not let the leases lapse
            self._publish_due()
            watched = self.parking.watched()
            now = self.parking.clock.now()
            self._gap = min(self.every, self.min_gap + GAP_PER_RUN * len(watched))
            # A window gone, or parked again for another attempt (a retry: the same key, a new
            # trigger), starts afresh.
            stale = [k for k, since in self._since.items() if k not in watched or watched[k].since != since]
            for memo in (self._next, self._start_next, self._started, self._covered, self._pace, self._since):
                for key in stale:
                    memo.pop(key, None)
            self._since.update((k, w.since) for k, w in watched.items())
            if watched:
                self._wake(watched, now)
            else:
                self._forget()
        finally:
            # Still ours (a round can outlast the lease when Airflow is slow): publish what woke.
            if self.parking.lease(self.holder, self.lease_ttl):
                self._publish_due()
        soonest = min([*self._next.values(), *self._start_next.values()], default=now + self.every)
        return min(self.every, max(self._gap, soonest - self.parking.clock.now()))

    def _hold(self) -> None:
        """Renew the parked windows' locks and slots every ``hold_every`` (``Parking.hold_all``):
        a window parks for longer than its lease (``Settings.watched_wait``) and keeps renewing
        through whichever worker runs this."""
        now = self.parking.clock.now()
        if now >= self._hold_at:
            self.parking.hold_all()
            self._hold_at = now + self.hold_every

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

    def _end_look(self, key: str, w: Watched, pace: Pace, now: float, watched: dict[str, Watched]) -> float:
        """The next look at the run's end. A list costs one request whatever it answers for: a
        look for this run alone comes a little after the expected end (one look usually sees it
        ended), a shared one from a deviation before it. A run with nothing learnt is looked at
        two seconds after its trigger, then after 30 % of the time waited (``UNLEARNT``), and is
        covered by every list of ends meanwhile (``_in_reach``): among many DAGs, at least
        every ``UNLEARNT_EVERY`` s.
        Before the expected end no look is needed (the window's own deadline still holds); after
        it, looks back off to at most ``ceiling`` apart."""
        start = self._started.get(key)
        started = start - w.since if start is not None else None
        elapsed = max(0.0, now - w.since)
        expected, _ = self._expected(key, w, pace)
        # Before the expected end, nothing to look for (the window's own deadline still holds).
        ceiling = self.ceiling if expected is None or now >= expected else float("inf")
        if expected is None and len(watched) > self.one_list:
            # Among many, a list serves it anyway: every UNLEARNT_EVERY s, or the first windows'
            # ends (a thousand at once) are seen up to a second late (bench B4).
            ceiling = min(ceiling, self.every, max(self._gap, UNLEARNT_EVERY))
        # A look that serves other runs too (ending about then, or many watched) costs each a
        # share of one request: from a deviation before the expected end, as a window's own
        # looks would (a late look costs a DAG its next scheduler loop, bench B1). A look for
        # this run alone comes after it, where one list usually sees it ended: half a deviation
        # once its start is known, a whole one from its trigger (the scheduler's loop that
        # started it varies).
        shared = self._shared(key, expected, watched)
        lead = 1.0 if shared else -0.5 if started is not None and pace.run else -1.0
        tick = END_TICK if shared else 2 * END_TICK
        delay = next_look(pace, elapsed, started=started, floor=max(self._gap, tick), ceiling=ceiling,
                          lead=lead, unlearnt=UNLEARNT)  # fmt: skip
        if pace.total is None:  # no run ends before it started and ran a task
            delay = max(delay, 2 * SCHEDULER_START - elapsed)
        return now + delay

    def _shared(self, key: str, expected: float | None, watched: dict[str, Watched]) -> bool:
        """Whether a look at this run's end would serve others too: many runs watched, or another
        run expected to end within a second of it."""
        if len(watched) > self.one_list:
            return True
        if expected is None:
            return False
        for other, w in watched.items():
            if other != key and other in self._pace:
                theirs, _ = self._expected(other, w, self._pace[other])
                if theirs is not None and abs(theirs - expected) <= SHARED_WITHIN:
                    return True
        return False

    def _in_reach(self, key: str, w: Watched, pace: Pace, now: float) -> bool:
        """Whether the run may have ended by now (a list asked for another DAG covers it too):
        from ``REACH`` deviations before its expected end, and at least ``REACH_SHARE`` of its
        length before it."""
        expected, dev = self._expected(key, w, pace)
        if expected is None:
            return True
        scale = pace.run if key in self._started and pace.run else pace.total
        return now >= expected - max(REACH * dev, REACH_SHARE * (scale or 0.0))

    def _start_look(self, key: str, w: Watched, pace: Pace, now: float) -> float | None:
        """The next look for the run's start, until it is seen (``status`` then shows it
        running): just after its DAG's usual start delay (a second if nothing is learnt), then
        backing off (a busy Airflow starts it late). None: no look (seen, or a short run)."""
        if w.running or key in self._started or (pace.total is not None and pace.total < START_WORTH):
            self._start_next.pop(key, None)  # (a stale time would pin the rounds to their shortest gap)
            return None
        delay = pace.total - pace.run if pace.total is not None and pace.run is not None else SCHEDULER_START
        at = self._start_next.setdefault(key, w.since + max(0.0, delay) + START_MARGIN)
        return at if at > now else now

    def _wake(self, watched: dict[str, Watched], now: float) -> None:
        """Ask Airflow when a watched run is due for a look (its start, or its end by its DAG's
        pace): with a few runs watched, one list for all (``_one_list``); with more, at most two
        lists that answer for every run of the DAGs asked (``_list_starts``, ``_list_ends``),
        which stay small at a thousand DAGs: only recent starts and ends come back. Each window
        whose run ended is woken with its run as listed; a run seen running is recorded so."""
        new = [k for k in watched if k not in self._next]
        self._pace.update(zip(new, self._paces(new, watched), strict=True))
        for key in new:
            self._next[key] = self._end_look(key, watched[key], self._pace[key], watched[key].since, watched)
        starts = {k: self._start_look(k, w, self._pace[k], now) for k, w in watched.items()}
        start_due = {k for k, t in starts.items() if t is not None and t <= now}
        end_due = {k for k in watched if self._next[k] <= now}
        if not start_due and not end_due:
            return
        wake: dict[str, dict[str, Any]] = {}
        recorded: dict[str, dict[str, Any]] = {}  # seen running: recorded so, the window sleeps on
        oldest = min(w.since for w in watched.values()) - END_MARGIN
        if len(watched) <= self.one_list and self._crowded != oldest:
            self._one_list(watched, starts, now, wake, recorded)
        else:
            if start_due:
                self._list_starts(watched, starts, start_due, now, wake, recorded)
            if end_due:
                self._list_ends(watched, end_due, now, wake)
        for key, run in recorded.items():
            try:
                if self.started is not None:
                    self.started(key, run)
            except Exception as exc:  # looked for again; the others are recorded
                self._started.pop(key, None)
                log.warning("watcher: could not record %s running (%s)", key, describe(exc))
        woken = self.parking.wake(wake)
        if woken:
            log.debug("watcher: %d window(s) woken", woken)

    def _one_list(self, watched: dict[str, Watched], starts: dict[str, float | None], now: float,
                  wake: dict[str, dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        """A few runs watched: one list answers for all of them, starts and ends at once (every
        run of their DAGs started since the oldest trigger: a few runs each)."""
        since = min(w.since for w in watched.values()) - END_MARGIN
        runs = self.airflow.started_runs_json(sorted({w.dag for w in watched.values()}), since=since)
        # Long: a run watched for long next to fast DAGs (every run since its trigger comes back).
        self._crowded = since if len(runs) > ONE_LIST_RUNS else None
        found = self._listed(runs)
        self._refresh_unlearnt(list(watched), watched)
        for key, w in watched.items():
            run = found.get((w.dag, w.run_id))
            if run is not None and run.get("state") in ENDED:
                wake[key] = run
            elif run is not None and not w.running and key not in self._started:  # free: record it
                self._seen_started(key, run, now, wake, recorded)
            elif run is None and starts[key] is not None and starts[key] <= now:  # type: ignore[operator]
                self._start_next[key] = now + min(self.ceiling, max(self._gap, 0.5 * (now - w.since)))
            self._next[key] = self._end_look(key, w, self._pace[key], now, watched)

    def _list_starts(self, watched: dict[str, Watched], starts: dict[str, float | None], due: set[str], now: float,
                     wake: dict[str, dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        """Many runs watched: the runs started since the oldest trigger of the DAGs whose start
        is due (only those: at a thousand DAGs, every running run would be pages long)."""
        asked = {watched[k].dag for k in due}
        waiting = {k: w for k, w in watched.items() if starts[k] is not None and w.dag in asked}
        since = min(w.since for w in waiting.values()) - END_MARGIN
        found = self._listed(self.airflow.started_runs_json(sorted(asked), since=since))
        for key, w in waiting.items():
            run = found.get((w.dag, w.run_id))
            if run is None:  # still queued: look again, backing off (a busy Airflow starts it late)
                self._start_next[key] = now + min(self.ceiling, max(self._gap, 0.5 * (now - w.since)))
            else:
                self._seen_started(key, run, now, wake, recorded)

    def _seen_started(self, key: str, run: dict[str, Any], now: float, wake: dict[str, dict[str, Any]],
                      recorded: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        start = _epoch(run.get("start_date"))
        self._started[key] = start if start is not None else now
        self._start_next.pop(key, None)
        if run.get("state") in ENDED or self.started is None:
            wake[key] = run
        else:
            recorded[key] = run

    def _list_ends(self, watched: dict[str, Watched], due: set[str], now: float,
                   wake: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        """Many runs watched: the runs ended since the last list that covered them, of the DAGs
        of runs due and of every run that may have ended by now."""
        keys = [k for k in watched if k not in wake]
        self._refresh_unlearnt(keys, watched)
        paces = {k: self._pace[k] for k in keys}
        asked = {watched[k].dag for k in keys if k in due or self._in_reach(k, watched[k], paces[k], now)}
        covered = {k: watched[k] for k in keys if watched[k].dag in asked}
        if not covered:
            return
        since = min(self._covered.get(k, w.since) for k, w in covered.items()) - END_MARGIN
        found = self._listed(self.airflow.ended_runs_json(sorted(asked), since=since))
        for key, w in covered.items():
            self._next[key] = self._end_look(key, w, paces[key], now, watched)
            self._covered[key] = now
            if (w.dag, w.run_id) in found:
                wake[key] = found[(w.dag, w.run_id)]

    def _refresh_unlearnt(self, keys: list[str], watched: dict[str, Watched]) -> None:
        """Re-read the pace of runs with nothing learnt yet: an earlier window may have taught it."""
        if len(keys) > self.one_list:  # (a few are read every time: cheap, and B1's first looks use it)
            now = self.parking.clock.now()
            if now < self._refresh_at:
                return
            self._refresh_at = now + REFRESH_EVERY
        unlearnt = [k for k in keys if self._pace[k].total is None]
        self._pace.update(zip(unlearnt, self._paces(unlearnt, watched), strict=True))

    def _listed(self, runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        log.debug("watcher: %d run(s) listed", len(runs))
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
                if self.publish_many is not None:  # all in one go (or, failing, none known sent)
                    self.publish_many([message for _, _, message in claimed])
                    sent = [(key, score) for key, score, _ in claimed]
                else:
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
                    self._hold()
                    self._publish_due()
                    wait = self.every
                else:
                    wait = self.tick()
            except Exception as exc:  # Redis or Airflow failing for a moment: the next round tries again
                log.warning("watcher: %s (next round in %.1f s)", describe(exc), self.every)
                wait = self.every
            stop.wait(wait)
        if not drain_only:
            with contextlib.suppress(redis.RedisError):
                self.parking.give_up(self.holder)


def _epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
