from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from backfill.airflow import AirflowConfig
from backfill.errors import InputError
from backfill.request import Request, validate
from backfill.settings import Settings

TODAY = datetime.now(UTC).date()


def req(**kw):
    base = {"dags": ["etl_orders"], "start": "2024-01-01", "end": "2024-01-31", "batch": "weekly"}
    return Request(**{**base, **kw})


def test_a_valid_request_becomes_a_plan_with_exact_bounds():
    params = validate(req(dags=["a", "b"], conf={"x": 1}), max_windows=100)
    assert params.backfill_id.startswith("bf-")
    assert params.start == "2024-01-01T00:00:00+00:00"
    assert params.end == "2024-02-01T00:00:00+00:00"  # end day included
    assert params.count("a") == params.count("b") == 5
    assert params.run_id(params.window_at(0, "a")) == f"{params.backfill_id}__2024-01-01T00:00:00+00:00"
    # The stored plan recomputes the same windows.
    again = type(params).from_json(params.to_json())
    assert [again.window_at(i, "b") for i in range(5)] == [params.window_at(i, "b") for i in range(5)]


def test_reverse_maps_sequence_to_newest_first():
    params = validate(req(reverse=True), max_windows=100)
    assert [params.index_at(s, "etl_orders") for s in range(5)] == [4, 3, 2, 1, 0]
    assert params.window_at(0, "etl_orders").start.isoformat() == "2024-01-29T00:00:00+00:00"


@pytest.mark.parametrize("reverse", [False, True])
def test_a_resumed_plan_runs_only_its_windows_per_dag_in_the_original_order(reverse):
    base = validate(
        req(dags=["a", "b"], start="2024-01-01", end="2024-01-10", batch="daily", reverse=reverse), max_windows=100
    )
    params = replace(base, only={"a": [[1, 3], [6, 7]], "b": [[9, 10]]})
    params = type(params).from_json(params.to_json())  # as the workers read it back
    expected_a = [1, 2, 6][::-1] if reverse else [1, 2, 6]
    assert params.count("a") == 3 and params.count("b") == 1 and params.total == 4
    assert params.indices("a") == expected_a and params.indices("b") == [9]
    assert [params.seq_of(i, "a") for i in expected_a] == [0, 1, 2]
    assert base.count("a") == 10 and base.indices("b") == (list(range(9, -1, -1)) if reverse else list(range(10)))


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_max_parallel_dags_must_be_a_whole_number(bad):
    with pytest.raises(InputError, match=r"^max_parallel_dags: expected a whole number >= 0"):
        validate(req(max_parallel_dags=bad), max_windows=100)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"dags": []}, "dags: give at least one DAG id"),
        ({"dags": ["a", "b", "a"]}, "dags: 'a' listed more than once"),
        ({"dags": ["etl orders"]}, "dags: invalid DAG id 'etl orders'"),
        ({"dags": ["../etc/passwd"]}, "dags: invalid DAG id '../etc/passwd'"),
        ({"dags": [42]}, "dags: invalid DAG id 42"),
        ({"conf": [1, 2]}, "conf: must be a JSON object"),
        ({"conf": "{not json"}, "conf: not valid JSON"),
        ({"conf": {"window_start": "x"}}, "conf: 'window_start' is set by the orchestrator"),
        ({"on_failure": "ignore"}, "on_failure: 'ignore' is not one of stop, continue"),
        ({"reprocess": "all"}, "reprocess: 'all' is not one of none, failed, completed"),
        ({"reverse": "yes"}, "reverse: expected true or false"),
        ({"batch": "yearly"}, "batch: unknown batch size 'yearly'"),
        ({"quiet_hours": "8-20"}, "quiet_hours: '8-20' is not a range \"HH:MM-HH:MM\""),
        ({"quiet_hours": ["00:00-12:00", "12:00-00:00"]}, "cover the whole day: no window could ever start"),
        ({"max_starts_per_hour": -1}, "max_starts_per_hour: expected a whole number >= 1 (0 or none: no limit)"),
        ({"max_starts_per_hour": True}, "max_starts_per_hour: expected a whole number >= 1"),
        ({"retries": 11}, "retries: expected a whole number from 0 to 10, got 11"),
        ({"priority": 10}, "priority: expected a whole number from -9 to 9 (higher goes first, default 0), got 10"),
        ({"priority": "high"}, "priority: expected a whole number from -9 to 9"),
        ({"after": {"a": ["b"], "b": ["a"]}, "dags": ["a", "b"]}, "after: the order has a cycle: a -> b -> a"),
        ({"retries": True}, "retries: expected a whole number from 0 to 10"),
        ({"retry_delay": -5}, "retry_delay: expected seconds from 0 to 86400, got -5"),
        ({"retry_delay": "60"}, "retry_delay: expected seconds from 0 to 86400, got '60'"),
        ({"dags": ["a", "b"], "batch": "daily"}, "the backfill makes 62 windows (31 daily windows x 2 DAGs)"),
        # Airflow takes the trigger, then holds the run until then: "Logical date is in future" (its scheduler).
        ({"start": "2999-01-01", "end": "2999-01-02"}, "end: the window [2999-01-01T00:00:00+00:00, "),
        (
            {"start": str(TODAY - timedelta(days=2)), "end": str(TODAY + timedelta(days=2)), "batch": "daily"},
            f"[{TODAY + timedelta(days=2)}T00:00:00+00:00, {TODAY + timedelta(days=3)}T00:00:00+00:00) starts in the "
            "future",
        ),
    ],
)
def test_bad_requests_are_refused_naming_the_input(kw, message):
    with pytest.raises(InputError) as err:
        validate(req(**kw), max_windows=40)
    assert message in str(err.value)


def test_settings_refuse_waits_longer_than_the_visibility_timeout():
    with pytest.raises(InputError, match="visibility_timeout"):
        Settings(poll_max=900, visibility_timeout=1200, lock_ttl=5000)
    with pytest.raises(InputError, match="lock_ttl"):
        Settings(poll_max=90, lock_ttl=100)
    with pytest.raises(InputError, match="segment_size: must be greater than 0"):
        Settings(segment_size=0)


def test_settings_refuse_a_stale_time_shorter_than_two_looks_and_unbounded_read_attempts():
    with pytest.raises(
        InputError, match=r"slot_stale \(5 s\): must be 0 \(automatic\) or at least twice busy_poll \(6 s\)"
    ):
        Settings(slot_stale=5)
    assert Settings(slot_stale=6).waiter_stale == 6 and Settings(slot_stale=0).waiter_stale == 12
    for attempts in (0, 9):
        with pytest.raises(InputError, match=f"AIRFLOW_READ_ATTEMPTS: must be 1 to 8 .*got {attempts}"):
            Settings(airflow=AirflowConfig(read_attempts=attempts))
    # The slowest step is what the lock cannot cover: the message says which settings make it.
    with pytest.raises(InputError, match="lower AIRFLOW_TIMEOUT or AIRFLOW_READ_ATTEMPTS"):
        Settings(airflow=AirflowConfig(read_attempts=8, timeout=30))
    with pytest.raises(InputError, match="lock_ttl") as err:
        Settings(poll_max=290)
    assert "AIRFLOW_READ_ATTEMPTS" not in str(err.value)


def test_settings_from_env_reads_every_variable(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    env = {
        "BACKFILL_REDIS_URL": "redis://r:1/2",
        "AIRFLOW_API_URL": "http://af:8080/",
        "AIRFLOW_USERNAME": "bob",
        "AIRFLOW_PASSWORD_FILE": str(pw),
        "BACKFILL_SEGMENT_SIZE": "7",
        "BACKFILL_POLL_MAX": "4.5",
        "BACKFILL_KEY_PREFIX": "bfx",
        "AIRFLOW_READ_ATTEMPTS": "2",
        "BACKFILL_REDIS_SOCKET_TIMEOUT": "2.5",
        "BACKFILL_SLOT_STALE": "30",
    }
    s = Settings.from_env(env)
    assert (s.redis_url, s.airflow.url, s.airflow.username, s.airflow.password) == (
        "redis://r:1/2",
        "http://af:8080",
        "bob",
        "s3cret",
    )
    assert (s.segment_size, s.poll_max, s.key_prefix) == (7, 4.5, "bfx")
    assert (s.airflow.read_attempts, s.redis_socket_timeout, s.waiter_stale) == (2, 2.5, 30)
    assert Settings(busy_poll=1).waiter_stale == 10 and Settings(busy_poll=5).waiter_stale == 20
    assert "s3cret" not in repr(s)
    with pytest.raises(InputError, match="BACKFILL_SEGMENT_SIZE: expected a number, got 'many'"):
        Settings.from_env({"BACKFILL_SEGMENT_SIZE": "many"})


def test_the_lock_ttl_must_cover_a_late_countdown_and_the_slowest_step():
    """A live holder must not lose its lock between two looks: the wait, how late a countdown may
    run on a busy worker, and a step of 4 Airflow calls that each time out 3 times."""
    s = Settings()
    assert s.call_max == 3 * 10 + 0.75 and s.step_max == 4 * s.call_max
    assert s.lock_ttl >= max(s.poll_max, s.busy_poll, s.retry_max) + s.late_margin + s.step_max
    with pytest.raises(InputError, match=r"raise BACKFILL_LOCK_TTL to 243 or more"):
        Settings(lock_ttl=200)
    assert Settings(lock_ttl=243).slot_ttl == 243 + 1.2 * 1800  # a slot outlives a dead holder's redelivery


def test_the_redis_url_can_come_from_a_mounted_secret(tmp_path):
    secret = tmp_path / "BACKFILL_REDIS_URL"
    secret.write_text("redis://:s3cret@redis.internal:6379/2\n")
    assert (
        Settings.from_env({"BACKFILL_REDIS_URL_FILE": str(secret)}).redis_url == "redis://:s3cret@redis.internal:6379/2"
    )
    env = {"BACKFILL_REDIS_URL_FILE": str(secret), "BACKFILL_REDIS_URL": "redis://other:6379/0"}
    assert Settings.from_env(env).redis_url == "redis://other:6379/0"  # the variable wins
