"""What a failing step says in the worker's log: the error's type and its message."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import redis

from backfill.errors import describe
from backfill.lifecycle import Lifecycle


def test_an_error_is_described_by_its_type_and_message() -> None:
    # redis-py 8's repr of its errors is "network:TimeoutError": the message would be lost.
    assert describe(redis.exceptions.TimeoutError("Timeout reading from socket")) == (
        "TimeoutError('Timeout reading from socket')"
    )
    assert describe(ValueError("bad")) == "ValueError('bad')"


def test_a_step_failing_on_redis_logs_what_failed_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    def params(_: str) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    ctx = SimpleNamespace(record=SimpleNamespace(params=params), settings=SimpleNamespace(retry_max=10.0))
    with caplog.at_level(logging.WARNING, logger="backfill"):
        nxt = Lifecycle(ctx).window("bf-1", "etl", 2, errors=1)  # type: ignore[arg-type]
    assert (nxt.retry_in, nxt.errors) == (2.0, 2)
    assert (
        "bf-1 etl #3: ConnectionError('Error 111 connecting to redis:6379. Connection refused.'), retrying in 2 s"
        in (caplog.text)
    )
