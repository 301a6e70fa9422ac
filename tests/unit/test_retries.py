"""Retries' arithmetic and the record's one-step scheduling of a retry (against a real Redis).
The runner's retry path under crashes and duplicates is the fault harness's invariant 2; the
real Airflow's side is tests/integration/test_retries.py."""

from __future__ import annotations

import json

from backfill.model import BackfillParams
from backfill.record import Record
from backfill.states import WindowState


def params(**kw: object) -> BackfillParams:
    base = dict(backfill_id="bf-r", dags=["d"], start="2024-01-01T00:00:00+00:00", end="2024-01-03T00:00:00+00:00",
                batch="daily")  # fmt: skip
    return BackfillParams(**{**base, **kw})  # type: ignore[arg-type]


def test_the_wait_doubles_from_retry_delay_and_is_capped_at_an_hour() -> None:
    p = params(retries=8, retry_delay=60)
    assert [p.retry_wait(k) for k in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert params(retries=2, retry_delay=0).retry_wait(2) == 0
    # A delay longer than the cap is kept as given, not shortened.
    assert [params(retries=3, retry_delay=7200).retry_wait(k) for k in (1, 2, 3)] == [7200, 7200, 7200]


def test_retries_are_written_only_when_used_and_shown_in_the_outline() -> None:
    assert not {"retries", "retry_delay"} & set(json.loads(params().to_json()))
    used = params(retries=2, retry_delay=5.0)
    assert BackfillParams.from_json(used.to_json()) == used
    assert used.outline()["retries"] == 2 and "retries" not in params().outline()


def test_a_retry_is_scheduled_once_forgetting_the_previous_clear(scratch_redis) -> None:
    record = Record(scratch_redis, prefix="t", ttl=60)
    p = params(retries=2)
    assert record.create(p)
    record.transition(p, "d", 0, WindowState.RUNNING, run="r1")
    assert record.claim(p, "d", 0, "run_id", None, run_id="r1", prev_end="x", clear_at=1.0)

    def schedule(seen: int | None) -> int:
        return record.transition_code(p, "d", 0, WindowState.WAITING, reason="retry", force=True, attempt=2,
                                      retry_at=9.0, erase=("run_id", "prev_end", "clear_at"),
                                      expect=("attempt", seen))  # fmt: skip

    assert schedule(None) == 2
    w = record.window("bf-r", "d", 0)
    assert (w.state, w.attempt, w.retry_at, w.run) == (WindowState.WAITING, 2, 9.0, "r1")
    assert (w.run_id, w.prev_end, w.clear_at) == (None, None, None)  # the next clear's claim is free
    # A duplicate delivery that read attempt 1 before the change schedules nothing.
    assert schedule(None) == 0
    assert record.window("bf-r", "d", 0).attempt == 2
    assert record.dag("bf-r", "d").counts[WindowState.FAILED] == 0  # not a final state: nothing counted


def test_a_retry_clear_is_claimed_once_and_only_for_the_current_attempt(scratch_redis) -> None:
    record = Record(scratch_redis, prefix="t", ttl=60)
    p = params(retries=3)
    assert record.create(p)
    record.transition(p, "d", 0, WindowState.WAITING, reason="retry", run="r1", attempt=3, retry_at=5.0)
    # A delivery stalled since attempt 2 claims nothing; one of two at attempt 3 wins.
    assert not record.claim_all(p, "d", 0, {"run_id": None, "attempt": 2}, run_id="r1", clear_at=1.0)
    assert record.claim_all(p, "d", 0, {"run_id": None, "attempt": 3}, run_id="r1", clear_at=2.0)
    assert not record.claim_all(p, "d", 0, {"run_id": None, "attempt": 3}, run_id="r1", clear_at=3.0)
    assert record.window("bf-r", "d", 0).clear_at == 2.0
