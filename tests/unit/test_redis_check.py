"""The worker's start-up check of its Redis, against a real redis-server."""

from __future__ import annotations

import redis

from backfill.redis_check import redis_problems


def test_an_evicting_redis_without_aof_is_named_with_what_to_do(scratch_redis: redis.Redis) -> None:
    before = scratch_redis.config_get("maxmemory-policy")["maxmemory-policy"]
    aof = scratch_redis.config_get("appendonly")["appendonly"]
    try:
        scratch_redis.config_set("maxmemory-policy", "allkeys-lru")
        scratch_redis.config_set("appendonly", "no")
        problems = dict((m.split(" ")[0], (lvl, m)) for lvl, m in redis_problems(scratch_redis))
        assert problems["maxmemory-policy"] == (
            "error",
            "maxmemory-policy is allkeys-lru: an evicted key loses a chain, a lock or a record; set it to noeviction",
        )
        assert problems["AOF"][0] == "warning"
        scratch_redis.config_set("maxmemory-policy", "noeviction")
        scratch_redis.config_set("appendonly", "yes")
        assert redis_problems(scratch_redis) == []
    finally:
        scratch_redis.config_set("maxmemory-policy", before)
        scratch_redis.config_set("appendonly", aof)
