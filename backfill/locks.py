"""Per-DAG locks in Redis: at most one orchestrator window in flight per DAG, across backfills,
workers and machines.

A lock is one key holding its owner's token, with an expiry. The owner renews it every time it
looks at its run; a holder that dies stops renewing and the lock expires after ``ttl``. Every
operation compares the token inside Redis (Lua), so nobody renews or releases a lock that
expired and was taken by someone else.

The token is the window's run id (``<backfill id>__<window start>``): deterministic, so a
redelivered task recognises the lock it held before its worker died, and readable, so a
waiting window can say who holds the DAG.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return nil
end
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return nil
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class DagLocks:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl: float) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl_ms = int(ttl * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def key(self, dag_id: str) -> str:
        return f"{self._prefix}:lock:{dag_id}"

    def acquire(
        self, dag_id: str, token: str, *, also: Callable[[redis.client.Pipeline], None] | None = None
    ) -> str | None:
        """Take or renew the DAG's lock. Returns None when ``token`` holds it, else the holder.

        ``also`` may queue more writes on the same pipeline: they go in the same round trip.
        """
        if also is None:
            holder = self._acquire(keys=[self.key(dag_id)], args=[token, self._ttl_ms])
        else:
            pipe = self._redis.pipeline(transaction=False)
            self._acquire(keys=[self.key(dag_id)], args=[token, self._ttl_ms], client=pipe)
            also(pipe)
            holder = pipe.execute()[0]
        return None if holder is None else holder.decode() if isinstance(holder, bytes) else str(holder)

    def release(self, dag_id: str, token: str, *, also: Callable[[redis.client.Pipeline], None] | None = None) -> bool:
        """Drop the lock if ``token`` still holds it. ``also``: more writes, same round trip."""
        if also is None:
            return bool(self._release(keys=[self.key(dag_id)], args=[token]))
        pipe = self._redis.pipeline(transaction=False)
        self._release(keys=[self.key(dag_id)], args=[token], client=pipe)
        also(pipe)
        return bool(pipe.execute()[0])

    def holder(self, dag_id: str) -> str | None:
        value = self._redis.get(self.key(dag_id))
        return value.decode() if isinstance(value, bytes) else value
