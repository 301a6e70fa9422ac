"""The live objects one process needs, built once from Settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from backfill.airflow import AirflowClient
from backfill.locks import DagLocks
from backfill.record import Record
from backfill.runner import WindowRunner
from backfill.settings import Settings
from backfill.throttle import Throttle
from backfill.watch import Parking


@dataclass
class Context:
    settings: Settings
    redis: redis.Redis
    airflow: AirflowClient
    record: Record
    locks: DagLocks
    runner: WindowRunner
    throttle: Throttle
    parking: Parking

    @classmethod
    def build(cls, settings: Settings) -> Context:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=settings.redis_socket_timeout, health_check_interval=30
        )
        airflow = AirflowClient(settings.airflow)
        record = Record(client, prefix=settings.key_prefix, ttl=settings.record_ttl)
        locks = DagLocks(client, prefix=settings.key_prefix, ttl=settings.lock_ttl, slot_ttl=settings.slot_ttl,
                         stale=settings.waiter_stale)  # fmt: skip
        throttle = Throttle(
            client,
            prefix=settings.key_prefix,
            ttl=settings.slot_ttl,
            stale=settings.waiter_stale,
            global_limit=settings.global_max_runs,
        )
        parking = Parking(client, prefix=settings.key_prefix)
        runner = WindowRunner(settings=settings, airflow=airflow, record=record, locks=locks, throttle=throttle,
                              parking=parking)  # fmt: skip
        return cls(settings, client, airflow, record, locks, runner, throttle, parking)
