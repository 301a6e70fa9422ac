"""Turn a user's request into a validated plan, refusing bad input before anything is triggered."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from backfill.airflow import AirflowClient, DagInfo
from backfill.errors import AirflowNotFound, InputError
from backfill.gates import check_quiet_hours
from backfill.history import ON_CONFLICT, Verdict, survey_all
from backfill.model import BackfillParams
from backfill.notify import check_notify
from backfill.order import check_after
from backfill.windows import window_spec

ON_FAILURE = ("stop", "continue")
REPROCESS = ("none", "failed", "completed")
RESERVED_CONF = ("window_start", "window_end", "backfill_id")
# Airflow's own rule for DAG ids (KEY_REGEX): letters, digits, '_', '.', '-'.
_DAG_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


@dataclass(frozen=True, kw_only=True)
class Request:
    """What a user asks for, as given (strings, dates or datetimes for the bounds)."""

    dags: Sequence[str]
    start: str | date | datetime | None
    end: str | date | datetime | None
    batch: str = "daily"
    tz: str | None = None
    reverse: bool = False
    conf: dict[str, Any] | None = None
    on_failure: str = "stop"
    reprocess: str = "none"
    unpause: bool = False
    max_parallel_dags: int = 0
    on_conflict: str = "refuse"
    notify: str | dict[str, Any] | None = None
    quiet_hours: str | list[str] | None = None
    max_starts_per_hour: int | None = None
    retries: int | None = None
    retry_delay: float | None = None
    after: dict[str, list[str]] | str | None = None
    priority: int | None = None


def new_backfill_id() -> str:
    return f"bf-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def _check_dags(dags: Any) -> list[str]:
    if isinstance(dags, str):
        dags = [dags]
    if not isinstance(dags, (list, tuple)) or not dags:
        raise InputError("dags: give at least one DAG id")
    bad = [d for d in dags if not isinstance(d, str) or not _DAG_ID.match(d)]
    if bad:
        raise InputError(
            f"dags: invalid DAG id {bad[0]!r} (letters, digits, '_', '.' and '-' only, like Airflow's own ids)"
        )
    seen: set[str] = set()
    dupes = sorted({d for d in dags if d in seen or seen.add(d)})  # type: ignore[func-returns-value]
    if dupes:
        raise InputError(f"dags: {', '.join(map(repr, dupes))} listed more than once")
    return list(dags)


def check_conf(conf: Any, *, name: str = "conf") -> dict[str, Any]:
    """A run conf: a JSON object (or its text) that does not set the orchestrator's own keys."""
    if conf is None:
        return {}
    if isinstance(conf, str):
        try:
            conf = json.loads(conf)
        except ValueError:
            raise InputError(f"{name}: not valid JSON: {conf[:80]!r}") from None
    if not isinstance(conf, dict):
        raise InputError(f"{name}: must be a JSON object (a dict), got {type(conf).__name__}")
    clash = [k for k in RESERVED_CONF if k in conf]
    if clash:
        raise InputError(f"{name}: {clash[0]!r} is set by the orchestrator for each window; use another key")
    try:
        json.dumps(conf)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: not JSON-serialisable ({exc})") from None
    return conf


def check_on_conflict(value: Any) -> str:
    if value not in ON_CONFLICT:
        raise InputError(f"on_conflict: {value!r} is not one of {', '.join(ON_CONFLICT)}")
    return str(value)


def validate(request: Request, *, max_windows: int) -> BackfillParams:
    """Check everything that needs no Airflow; returns the plan with a fresh backfill id."""
    dags = _check_dags(request.dags)
    if request.on_failure not in ON_FAILURE:
        raise InputError(f"on_failure: {request.on_failure!r} is not one of {', '.join(ON_FAILURE)}")
    if request.reprocess not in REPROCESS:
        raise InputError(f"reprocess: {request.reprocess!r} is not one of {', '.join(REPROCESS)}")
    check_on_conflict(request.on_conflict)
    if not isinstance(request.reverse, bool):
        raise InputError(f"reverse: expected true or false, got {request.reverse!r}")
    mpd = request.max_parallel_dags
    if isinstance(mpd, bool) or not isinstance(mpd, int) or mpd < 0:
        raise InputError(f"max_parallel_dags: expected a whole number >= 0 (0 = no limit), got {mpd!r}")
    conf = check_conf(request.conf)
    notify = check_notify(request.notify)
    quiet = check_quiet_hours(request.quiet_hours)
    starts = request.max_starts_per_hour
    if starts is not None and (isinstance(starts, bool) or not isinstance(starts, int) or starts < 0):
        raise InputError(f"max_starts_per_hour: expected a whole number >= 1 (0 or none: no limit), got {starts!r}")
    retries, retry_delay = check_retries(request.retries, request.retry_delay)
    after = check_after(request.after, dags)
    priority = 0 if request.priority is None else request.priority
    if isinstance(priority, bool) or not isinstance(priority, int) or not -9 <= priority <= 9:
        raise InputError(
            f"priority: expected a whole number from -9 to 9 (higher goes first, default 0), got {priority!r}"
        )
    spec = window_spec(request.start, request.end, request.batch, tz=request.tz, max_windows=max_windows)
    last = spec.window(spec.count - 1)
    now = datetime.now(UTC)
    if last.start > now:
        # Airflow accepts the trigger, then its scheduler holds the run while its logical date is
        # in the future ("Logical date is in future"): the window would wait until then.
        local_now = now.astimezone(ZoneInfo(request.tz)) if request.tz else now
        raise InputError(
            f"end: the window [{last.start.isoformat()}, {last.end.isoformat()}) starts in the future; Airflow "
            "does not run a run whose logical date is in the future: end the backfill at or before "
            f"{local_now.replace(second=0, microsecond=0).isoformat()} (now)"
        )
    total = spec.count * len(dags)
    if total > max_windows:
        raise InputError(
            f"the backfill makes {total} windows ({spec.count} {request.batch} windows x {len(dags)} DAGs), "
            f"more than the cap of {max_windows} (BACKFILL_MAX_WINDOWS)"
        )
    return BackfillParams(
        backfill_id=new_backfill_id(),
        dags=dags,
        start=spec.start.isoformat(),
        end=spec.end.isoformat(),
        batch=request.batch,
        tz=request.tz,
        reverse=request.reverse,
        conf=conf,
        on_failure=request.on_failure,
        reprocess=request.reprocess,
        created_at=time.time(),
        max_parallel_dags=mpd,
        on_conflict=request.on_conflict,
        notify=notify,
        quiet_hours=quiet,
        max_starts_per_hour=starts or 0,
        retries=retries,
        retry_delay=retry_delay,
        after=after,
        priority=priority,
    )


MAX_RETRIES = 10
MAX_RETRY_DELAY = 86400.0


def check_retries(retries: Any, delay: Any) -> tuple[int, float]:
    """``retries`` (attempts after the first, 0 to ``MAX_RETRIES``) and ``retry_delay`` (seconds)."""
    if retries is None:
        retries = 0
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise InputError(f"retries: expected a whole number from 0 to {MAX_RETRIES}, got {retries!r}")
    if delay is None:
        delay = 60.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_RETRY_DELAY:
        raise InputError(f"retry_delay: expected seconds from 0 to {MAX_RETRY_DELAY:.0f}, got {delay!r}")
    return retries, float(delay)


def look_up(airflow: AirflowClient, dags: Sequence[str]) -> tuple[dict[str, DagInfo], list[str]]:
    """What Airflow says of each DAG, and the DAGs it does not know."""
    infos: dict[str, DagInfo] = {}
    unknown: list[str] = []
    for dag_id in dags:
        try:
            infos[dag_id] = airflow.get_dag(dag_id)
        except AirflowNotFound:
            unknown.append(dag_id)
    return infos, unknown


def refusals(
    airflow: AirflowClient, dags: Sequence[str], *, unpause: bool
) -> tuple[dict[str, DagInfo], list[str], list[str]]:
    """The rule for DAGs in Airflow, in one place (the submit raises, the preview lists): what
    Airflow says of each DAG it knows, the DAGs it does not know, and the paused DAGs that are
    refused (every paused DAG unless ``unpause``: runs of a paused DAG never start)."""
    infos, unknown = look_up(airflow, dags)
    paused = [] if unpause else [d for d, info in infos.items() if info.is_paused]
    return infos, unknown, paused


def check_in_airflow(airflow: AirflowClient, dags: Sequence[str], *, unpause: bool) -> dict[str, DagInfo]:
    """Every DAG must exist; a paused one is refused unless ``unpause``. Reports every unknown or
    paused DAG at once, not only the first."""
    infos, unknown, paused = refusals(airflow, dags, unpause=unpause)
    if unknown:
        raise InputError(f"dags: unknown to Airflow at {airflow.config.url}: {', '.join(unknown)}")
    if paused:
        raise InputError(
            f"dags: paused in Airflow: {', '.join(paused)} (runs of a paused DAG never start; "
            "unpause it or submit with unpause=True / --unpause)"
        )
    return infos


def with_schedules(params: BackfillParams, infos: dict[str, DagInfo]) -> BackfillParams:
    """``params`` knowing each DAG's schedule, which decides whether a run without a data
    interval is a window's run (``backfill.history``)."""
    return replace(params, schedules={d: [i.schedule, i.timezone] for d, i in infos.items()})


def concurrency_warnings(infos: dict[str, DagInfo]) -> list[str]:
    """One warning per DAG that lets others start runs while one of ours runs."""
    return [
        f"{dag}: max_active_runs={info.max_active_runs} in Airflow: the orchestrator waits for runs it did not "
        "start, but while one of its runs is running the scheduler or a person can start another run of this DAG. "
        "Set max_active_runs=1 on the DAG to make every run of it serial (backfill status checks for overlaps)"
        for dag, info in infos.items()
        if (info.max_active_runs or 0) > 1
    ]


def check_history(airflow: AirflowClient, params: BackfillParams) -> dict[str, list[Verdict]]:
    """Each window's verdict against the runs its DAG already has. Refuses (``InputError``,
    nothing triggered) a backfill with conflicts unless ``on_conflict="skip"``, naming each."""
    verdicts = survey_all(airflow, params, params.dags)
    conflicts = [(dag, v) for dag, vs in verdicts.items() for v in vs if v.action == "conflict"]
    if conflicts and params.on_conflict == "refuse":
        shown = [f"{dag}: {v.reason.split('; Airflow allows')[0]}" for dag, v in conflicts[:MAX_LISTED]]
        more = f"; and {len(conflicts) - MAX_LISTED} more" if len(conflicts) > MAX_LISTED else ""
        raise InputError(
            f"conflicts: {len(conflicts)} window(s) have their logical date held by a run covering something else "
            f"(Airflow allows one run per logical date): {'; '.join(shown)}{more}. Use a batch matching the DAG's "
            "schedule, or on_conflict='skip' (--on-conflict skip) to skip these windows; see backfill plan"
        )
    return verdicts


MAX_LISTED = 5
