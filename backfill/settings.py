"""The orchestrator's settings: one typed, keyword-only object with named defaults.

``celeryconfig.py`` builds it from environment variables (``Settings.from_env``); the library
itself never reads the environment, so tests and embedders pass a ``Settings`` of their own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from backfill.airflow import AirflowConfig
from backfill.errors import InputError
from backfill.notify import check_url, redact

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_AIRFLOW_URL = "http://localhost:8080"
# Airflow calls one step of a window makes while it holds its lease, at most (backfill.runner).
MAX_CALLS_PER_STEP = 4
MAX_READ_ATTEMPTS = 8  # beyond it one call's backoff alone runs past a minute


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    airflow: AirflowConfig = field(default_factory=AirflowConfig)
    key_prefix: str = "backfill"  # every Redis key of the orchestrator starts with this
    max_windows: int = 100_000  # cap on windows per backfill, all DAGs together
    segment_size: int = 20  # windows per chain message; the chain continues in segments
    lock_ttl: float = 300.0  # seconds a per-DAG lock (and throttle slot) lives without renewal
    late_margin: float = 60.0  # how late a countdown may run on a busy worker (lock_ttl counts it)
    poll_min: float = 0.05  # shortest wait between two looks at a running run
    poll_max: float = 60.0  # longest wait between two looks at a running run
    busy_poll: float = 3.0  # wait between two looks at a busy or locked DAG
    watch_every: float = 1.0  # longest between two watcher rounds (backfill.watch); 0: no watcher
    watch_fallback: float = 300.0  # with a watcher alive, a window in flight looks itself this often (watched_wait)
    retry_max: float = 60.0  # longest backoff after a transient Airflow error
    give_up_after: float = 3600.0  # a window fails after Airflow is unreachable this long
    visibility_timeout: int = 1800  # Redis broker: unacked messages come back after this
    record_ttl: int = 30 * 86400  # seconds a finished backfill's record is kept
    max_parallel_dags: int = 0  # default of the submit option; 0 = every DAG at once
    global_max_runs: int = 0  # windows in flight across all backfills; 0 = no cap
    log_format: str = "text"  # or "json": one JSON object per line, for log shippers
    redis_socket_timeout: float = 10.0  # seconds a Redis command may take before it counts as an error
    slot_stale: float = 0.0  # a waiter not seen this long leaves the throttle's line; 0: max(10, 4 x busy_poll)
    notify_url: str = field(default="", repr=False)  # webhook of every backfill without its own notify (a secret)

    def __post_init__(self) -> None:
        for name in (
            "max_windows",
            "segment_size",
            "lock_ttl",
            "poll_min",
            "poll_max",
            "busy_poll",
            "retry_max",
            "late_margin",
            "redis_socket_timeout",
            "watch_fallback",
        ):
            if getattr(self, name) <= 0:
                raise InputError(f"setting {name}: must be greater than 0, got {getattr(self, name)!r}")
        for name in ("max_parallel_dags", "global_max_runs", "watch_every"):
            if getattr(self, name) < 0:
                raise InputError(f"setting {name}: must be 0 (no limit) or more, got {getattr(self, name)!r}")
        if self.slot_stale and self.slot_stale < 2 * self.busy_poll:
            # A waiter looks every busy_poll: dropped sooner, it loses its place between two looks.
            raise InputError(
                f"setting slot_stale ({self.slot_stale!r} s): must be 0 (automatic) or at least twice busy_poll "
                f"({2 * self.busy_poll:g} s), or a waiting window loses its place in line between two of its looks"
            )
        if not 1 <= self.airflow.read_attempts <= MAX_READ_ATTEMPTS:
            raise InputError(
                f"setting AIRFLOW_READ_ATTEMPTS: must be 1 to {MAX_READ_ATTEMPTS} (tries of a read, with backoff "
                f"between them), got {self.airflow.read_attempts!r}"
            )
        if self.notify_url and not check_url(self.notify_url):
            raise InputError(
                f"setting BACKFILL_NOTIFY_URL: expected an http:// or https:// URL, got {redact(self.notify_url)}"
            )
        if self.log_format not in ("text", "json"):
            raise InputError(f"setting log_format: must be 'text' or 'json', got {self.log_format!r}")
        if self.poll_min > self.poll_max:
            raise InputError(f"setting poll_min ({self.poll_min}) is above poll_max ({self.poll_max})")
        longest = max(self.poll_max, self.busy_poll, self.retry_max)
        # A countdown message is unacked while it waits; past the visibility timeout Redis
        # would hand it to a second worker, and a lock would expire under a live holder.
        if longest * 2 > self.visibility_timeout:
            raise InputError(
                f"setting visibility_timeout ({self.visibility_timeout} s) must be at least twice the "
                f"longest wait ({longest} s): raise BACKFILL_VISIBILITY_TIMEOUT or lower the poll/retry waits"
            )
        if longest + self.lease_margin > self.lock_ttl:
            raise InputError(
                f"setting lock_ttl ({self.lock_ttl:g} s) must cover the longest wait ({longest:g} s), how late a "
                f"countdown may run (late_margin, {self.late_margin:g} s) and the slowest step ({self.step_max:g} s: "
                f"{MAX_CALLS_PER_STEP} Airflow calls of up to {self.call_max:g} s each), or a live holder could lose "
                f"its lock between two looks: raise BACKFILL_LOCK_TTL to {longest + self.lease_margin:g} or more"
                + (
                    ", or lower AIRFLOW_TIMEOUT or AIRFLOW_READ_ATTEMPTS (they make the slowest step)"
                    if self.step_max > longest
                    else ""
                )
            )

    @property
    def watched_wait(self) -> float:
        """How long a window parked for its run waits before it looks itself (``watch_fallback``).
        Neither its lock's lease bounds it (the watcher renews it, ``hold_every``) nor the
        visibility timeout (a parked message is no broker message)."""
        return self.watch_fallback

    @property
    def hold_every(self) -> float:
        """How often the watcher renews the locks and slots of parked windows: twice within
        what a lease covers beyond its margin (a watcher's round running late)."""
        return max(1.0, (self.lock_ttl - self.lease_margin) / 2)

    @property
    def waiter_stale(self) -> float:
        """How long a waiter of the throttle may go unseen before it loses its place in line:
        a few of its looks (``busy_poll``), at least 10 s."""
        return self.slot_stale or max(10.0, 4 * self.busy_poll)

    @property
    def slot_ttl(self) -> float:
        """How long a throttle slot outlives its holder: past a dead worker's redelivery (about
        1.1 x the visibility timeout), since the holder's run is in flight all that time and
        counts against the caps; a dead holder's lock needs no such margin (another backfill's
        busy check sees the run)."""
        return self.lock_ttl + 1.2 * self.visibility_timeout

    @property
    def call_max(self) -> float:
        """The longest one Airflow call can take: every try times out, with the backoff between."""
        tries = self.airflow.read_attempts
        return float(tries * self.airflow.timeout + 0.25 * (2 ** (tries - 1) - 1))

    @property
    def write_max(self) -> float:
        """The longest a trigger or a clear (one try, no blind retry) can take: a token fetched,
        refused, fetched again and the call tried again, each up to the timeout, on a worker
        running late."""
        return 4 * self.airflow.timeout + self.late_margin

    @property
    def step_max(self) -> float:
        """The longest one step of a window can take while it holds its lease."""
        return MAX_CALLS_PER_STEP * self.call_max

    @property
    def lease_margin(self) -> float:
        """What a lease must cover beyond the wait before the next look: that look running late
        on a busy worker, and a step as slow as Airflow can make it before it renews."""
        return self.late_margin + self.step_max

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``BACKFILL_*`` and ``AIRFLOW_*`` variables (see docs/setup.md)."""
        env = os.environ if env is None else env
        password = env.get("AIRFLOW_PASSWORD")
        if password is None and env.get("AIRFLOW_PASSWORD_FILE"):
            with open(env["AIRFLOW_PASSWORD_FILE"], encoding="utf-8") as fh:
                password = fh.read().strip()
        airflow = AirflowConfig(
            url=env.get("AIRFLOW_API_URL", DEFAULT_AIRFLOW_URL),
            username=env.get("AIRFLOW_USERNAME") or None,
            password=password,
            token=env.get("AIRFLOW_TOKEN") or None,
            token_file=env.get("AIRFLOW_TOKEN_FILE") or None,
            verify=_flag(env, "AIRFLOW_VERIFY_SSL", True),
            ca_bundle=env.get("AIRFLOW_CA_BUNDLE") or None,
            headers=_headers(env.get("AIRFLOW_EXTRA_HEADERS")),
            timeout=_number(env, "AIRFLOW_TIMEOUT", 10.0),
            read_attempts=int(_number(env, "AIRFLOW_READ_ATTEMPTS", 3, integer=True)),
        )
        redis_url = env.get("BACKFILL_REDIS_URL")
        if redis_url is None and env.get("BACKFILL_REDIS_URL_FILE"):  # a mounted secret (it holds a password)
            with open(env["BACKFILL_REDIS_URL_FILE"], encoding="utf-8") as fh:
                redis_url = fh.read().strip()
        values: dict[str, object] = {"redis_url": redis_url or DEFAULT_REDIS_URL, "airflow": airflow}
        if "BACKFILL_NOTIFY_URL" not in env and env.get("BACKFILL_NOTIFY_URL_FILE"):  # a mounted secret
            with open(env["BACKFILL_NOTIFY_URL_FILE"], encoding="utf-8") as fh:
                values["notify_url"] = fh.read().strip()
        for f in fields(cls):
            if f.name in values:
                continue
            var = f"BACKFILL_{f.name.upper()}"
            if var in env:
                values[f.name] = env[var] if f.type == "str" else _number(env, var, 0, integer=f.type == "int")
        return cls(**values)  # type: ignore[arg-type]


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    if name not in env:
        return default
    try:
        return int(env[name]) if integer else float(env[name])
    except ValueError:
        raise InputError(f"{name}: expected a number, got {env[name]!r}") from None


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{name}: expected true or false, got {env[name]!r}")


def _headers(text: str | None) -> dict[str, str]:
    """AIRFLOW_EXTRA_HEADERS: a JSON object of header names to values (values never shown)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise InputError('AIRFLOW_EXTRA_HEADERS: not valid JSON (expected {"Header-Name": "value"})') from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InputError('AIRFLOW_EXTRA_HEADERS: expected a JSON object of strings, e.g. {"X-Api-Key": "..."}')
    return value
