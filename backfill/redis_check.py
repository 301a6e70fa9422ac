"""What the orchestrator needs from its Redis, checked when a worker starts (docs/setup.md,
"Redis requirements"). Each problem is logged with what to do; the worker still starts (a
managed Redis may hide its configuration), but a problem marked ``error`` loses windows."""

from __future__ import annotations

import redis

MIN_VERSION = (6, 2)  # the scripts' commands (HSET of several fields, ZADD, XADD, TIME in scripts)


def redis_problems(client: redis.Redis) -> list[tuple[str, str]]:
    """(level, message) for each requirement not met: level is "error" or "warning"."""
    out: list[tuple[str, str]] = []
    server = client.info("server")
    version = str(server.get("redis_version", "0"))
    if tuple(int(p) for p in version.split(".")[:2]) < MIN_VERSION:
        out.append(("error", f"Redis {version} is older than {'.'.join(map(str, MIN_VERSION))}: upgrade it"))
    if str(client.info("cluster").get("cluster_enabled", 0)) == "1":
        out.append(("error", "Redis Cluster is not supported (a backfill's keys are used together in scripts): "
                             "use a single primary (with replicas or Sentinel)"))  # fmt: skip
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:  # CONFIG disabled (a managed Redis): say what to check by hand
        out.append(("warning", "could not read maxmemory-policy (CONFIG is disabled): make sure it is noeviction"))
    else:
        if policy and policy != "noeviction":
            out.append(("error", f"maxmemory-policy is {policy}: an evicted key loses a chain, a lock or a "
                                 "record; set it to noeviction"))  # fmt: skip
    if str(client.info("persistence").get("aof_enabled", 0)) != "1":
        out.append(("warning", "AOF persistence is off: a Redis restart loses every waiting window and the "
                               "records; turn on appendonly (docs/setup.md)"))  # fmt: skip
    return out
