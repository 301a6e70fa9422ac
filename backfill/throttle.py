"""Fair counting semaphores in Redis: how many windows may have an Airflow run in flight.

Two limits, both held in Redis so they hold across every worker and machine:

- a backfill's ``max_parallel_dags``: at most that many of its DAGs run a window at once;
- the global cap (``BACKFILL_GLOBAL_MAX_RUNS``, or ``backfill throttle --global N`` at run
  time): at most that many windows of all backfills together.

A window takes its backfill's slot first, then a global one, right before it triggers, and
gives both back when its run has ended. A window that finds no free slot joins a line ordered
by when it first asked; slots go to the head of the line, so no DAG starves, and since a DAG
queues again for every window, DAGs take turns. The global line only ever holds windows that
have their backfill's slot, so a backfill at its own limit never blocks the others.

A slot is held under the window's run id and DAG (``<run id>@<dag>``) with an expiry that
every poll renews together with the per-DAG lock (one round trip): a dead holder's slot comes
back after ``ttl``. A place in line is kept only
while its window keeps asking (``stale`` seconds), so a cancelled or lost window leaves it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

# KEYS: holders (member -> expiry ms), line (member -> ticket), seen (member -> last ask),
#       limit override (string, optional), ticket counter
# ARGV: member, limit, now ms, ttl ms, stale ms
_ACQUIRE = """
local now = tonumber(ARGV[3])
local limit = tonumber(redis.call('GET', KEYS[4]) or ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0, redis.call('ZCARD', KEYS[1]), limit}
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))) do
  redis.call('ZREM', KEYS[2], gone)
  redis.call('ZREM', KEYS[3], gone)
end
local held = redis.call('ZCARD', KEYS[1])
if limit <= 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0, held + 1, limit}
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  -- A counter, not the clock: two windows asking in the same millisecond keep their order.
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[5]), ARGV[1])
  redis.call('EXPIRE', KEYS[5], 604800)  -- dropped a week after the last ask
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if rank < limit - held then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0, held + 1, limit}
end
return {0, rank + 1, held, limit}
"""


@dataclass(frozen=True, slots=True)
class Grant:
    granted: bool
    position: int  # place in line when not granted (1 = next)
    in_use: int  # slots held, this one included when granted
    limit: int  # the limit that applied (0 = none)


class Semaphore:
    def __init__(
        self, client: redis.Redis, key: str, *, ttl: float, stale: float, limit_key: str | None = None
    ) -> None:
        self._redis = client
        self.key = key
        self.limit_key = limit_key or f"{key}:limit"
        self._ttl_ms = int(ttl * 1000)
        self._stale_ms = int(stale * 1000)
        self._acquire = client.register_script(_ACQUIRE)

    def _keys(self) -> list[str]:
        return [self.key, f"{self.key}:line", f"{self.key}:seen", self.limit_key, f"{self.key}:tickets"]

    def acquire(self, member: str, limit: int) -> Grant:
        """Take (or keep) a slot for ``member``; ``limit`` applies unless Redis holds an override."""
        now = int(time.time() * 1000)
        ok, pos, used, lim = self._acquire(keys=self._keys(), args=[member, limit, now, self._ttl_ms, self._stale_ms])
        return Grant(bool(ok), int(pos), int(used), int(lim))

    def renew(self, member: str, *, client: redis.Redis | redis.client.Pipeline | None = None) -> None:
        """Keep a slot held by a window whose run is in flight (taken back if it had expired:
        the run is there whatever the limit says). ``client``: a pipeline to queue it on."""
        (client or self._redis).zadd(self.key, {member: int(time.time() * 1000) + self._ttl_ms})

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
            out.update(m.decode() for m in self._redis.zrange(k, 0, -1) if m.decode().startswith(prefix))
        return sorted(out)

    def in_use(self) -> int:
        self._redis.zremrangebyscore(self.key, "-inf", int(time.time() * 1000))
        return int(self._redis.zcard(self.key))

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

    def __init__(self, client: redis.Redis, *, prefix: str, ttl: float, stale: float, global_limit: int) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl = ttl
        self._stale = stale
        self.global_limit = global_limit
        self.glob = Semaphore(client, f"{prefix}:slots:global", ttl=ttl, stale=stale)

    def of_backfill(self, bf: str) -> Semaphore:
        # The limit of a backfill is its own parameter; no override key is ever set for it.
        return Semaphore(self._client, f"{self._prefix}:bf:{bf}:slots", ttl=self._ttl, stale=self._stale)

    def acquire(self, bf: str, member: str, *, max_parallel_dags: int) -> str | None:
        """None when the window may trigger, else why it waits."""
        if max_parallel_dags > 0:
            grant = self.of_backfill(bf).acquire(member, max_parallel_dags)
            if not grant.granted:
                # No position or count in the text: the reason is recorded (and logged) only
                # when it changes, and a waiting DAG should make one line, not one per move.
                return f"max_parallel_dags={grant.limit} reached, waiting for a turn in line"
        grant = self.glob.acquire(member, self.global_limit)
        if not grant.granted:
            return (
                f"global limit reached ({grant.limit} runs in flight across all backfills), waiting for a turn in line"
            )
        return None

    def renew(
        self, bf: str, member: str, *, max_parallel_dags: int, client: redis.Redis | redis.client.Pipeline | None = None
    ) -> None:
        if max_parallel_dags > 0:
            self.of_backfill(bf).renew(member, client=client)
        self.glob.renew(member, client=client)

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
