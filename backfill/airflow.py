"""Airflow's REST API v2, through the official client (apache-airflow-client).

What this adds to the generated client:

- a token from ``POST /auth/token`` when a username/password is configured, fetched lazily,
  renewed shortly before it expires and once more on a 401/403;
- a timeout on every request (on by default);
- HTTP errors mapped onto ``backfill.errors`` (transient ones are ``AirflowUnavailable``),
  with messages that name the DAG or run;
- quick in-call retries of idempotent reads on transient errors; a trigger is never blindly
  retried (after a 5xx the run may exist: callers look it up by run id first);
- a request counter, so the load put on Airflow can be measured.

The transport is injectable: pass ``pool_manager`` (anything with urllib3's ``request``) to
point the client at a stand-in without a network.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import urllib3
from airflow_client import client as af
from airflow_client.client.exceptions import ApiException

from backfill import metrics
from backfill.errors import (
    AirflowAuthError,
    AirflowConflict,
    AirflowError,
    AirflowNotFound,
    AirflowRejected,
    AirflowTLSError,
    AirflowUnavailable,
    InputError,
)
from backfill.states import ACTIVE_RUN_STATES, RunState
from backfill.windows import Window

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class AirflowConfig:
    """Where Airflow is and how to talk to it.

    Credentials, one of: ``username``/``password`` (a token from ``POST /auth/token``, renewed
    before it expires and on a refusal); ``token`` (a static bearer token, as managed services
    hand out); ``token_file`` (a bearer token in a file, re-read when the file changes and on
    a refusal: a sidecar or cron job can rotate it); or none (an open or proxied Airflow).
    ``verify``: check the server's TLS certificate; ``ca_bundle``: a PEM file of CAs to trust
    instead of the system's. ``headers``: sent with every request (a gateway's API key).
    """

    url: str = "http://localhost:8080"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    verify: bool = True
    ca_bundle: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0  # seconds, per request
    read_attempts: int = 3  # in-call tries of an idempotent read on a transient error

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))
        given = [n for n in ("username", "token", "token_file") if getattr(self, n)]
        if len(given) > 1:
            raise InputError(
                f"Airflow credentials: set only one of username/password, token and token file (got {', '.join(given)})"
            )
        if self.ca_bundle and not os.path.isfile(self.ca_bundle):
            raise InputError(f"Airflow CA bundle: {self.ca_bundle!r} is not a file")
        if self.token_file and not os.path.isfile(self.token_file):
            raise InputError(f"Airflow token file: {self.token_file!r} is not a file")
        if not isinstance(self.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise InputError('Airflow extra headers: expected a JSON object of strings, e.g. {"X-Api-Key": "..."}')

    @property
    def refreshable(self) -> bool:
        """Whether a refused token can be replaced by a new one (and the call tried again)."""
        return bool(self.username or self.token_file)


@dataclass(frozen=True, slots=True)
class DagInfo:
    dag_id: str
    is_paused: bool
    max_active_runs: int | None
    schedule: str | None = None  # Airflow's timetable_summary: "@daily", "0 6 * * *", "1 day, 0:00:00", None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The parts of an Airflow DAG run the orchestrator looks at."""

    dag_id: str
    run_id: str
    state: str
    run_type: str
    logical_date: datetime | None
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    start_date: datetime | None
    end_date: datetime | None
    queued_at: datetime | None
    conf: dict[str, Any]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUN_STATES

    def covers(self, window: Window) -> bool:
        return self.data_interval_start == window.start and self.data_interval_end == window.end

    @classmethod
    def from_json(cls, run: dict[str, Any]) -> RunInfo:
        """From the API's JSON body of a run."""
        when = {k: _when(run.get(k)) for k in _DATES}
        return cls(
            dag_id=run["dag_id"], run_id=run["dag_run_id"], state=run["state"], run_type=run["run_type"],
            conf=dict(run.get("conf") or {}), **when,
        )  # fmt: skip


_DATES = ("logical_date", "data_interval_start", "data_interval_end", "start_date", "end_date", "queued_at")


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (only to renew in time)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


AUTH_SETTINGS = ["OAuth2PasswordBearer", "HTTPBearer"]  # as in the generated DagRunApi
MULTI = {"state": "multi", "order_by": "multi", "update_mask": "multi"}
BATCH_DAGS = 200  # DAGs per batch list request (runs_between_many)
PAGE = 100  # Airflow's default maximum_page_limit  # list query parameters: ?state=a&state=b


class AirflowClient:
    """A small, typed face over the DAG and DAG-run endpoints the orchestrator uses."""

    def __init__(self, config: AirflowConfig, *, pool_manager: Any | None = None, record_metrics: bool = True) -> None:
        self.config = config
        self.record_metrics = record_metrics  # each request in backfill.metrics (Prometheus)
        self.requests = 0  # HTTP requests sent, token requests included
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_expiry: float | None = None
        self._token_mtime: float | None = None
        conf = af.Configuration(host=config.url, ssl_ca_cert=config.ca_bundle, access_token=config.token)
        conf.verify_ssl = config.verify
        conf.retries = False  # we decide what is retried and how
        self._api = af.ApiClient(conf)
        self._api.default_headers.update(config.headers)
        if pool_manager is not None:
            self._api.rest_client.pool_manager = pool_manager
        self._http = self._api.rest_client.pool_manager  # the token request shares its TLS settings

    # -- auth ---------------------------------------------------------------------------

    def _ensure_token(self, *, force: bool = False) -> None:
        if self.config.token_file:
            self._read_token_file(force=force)
            return
        if self.config.username is None:
            return
        with self._lock:
            fresh = self._token and (self._token_expiry is None or self._token_expiry - time.time() > 60)
            if fresh and not force:
                return
            self._token = self._fetch_token()
            self._token_expiry = _jwt_expiry(self._token)
            self._api.configuration.access_token = self._token

    def _read_token_file(self, *, force: bool) -> None:
        path = self.config.token_file or ""
        try:
            mtime = os.stat(path).st_mtime
            if force or mtime != self._token_mtime:
                with open(path, encoding="utf-8") as fh:
                    token = fh.read().strip()
                if not token:
                    raise AirflowAuthError(f"Airflow token file {path!r} is empty")
                self._api.configuration.access_token = token
                self._token_mtime = mtime
        except OSError as exc:
            raise AirflowAuthError(f"Airflow token file {path!r} cannot be read: {exc.strerror}") from None

    def _fetch_token(self) -> str:
        url = f"{self.config.url}/auth/token"
        body = {"username": self.config.username, "password": self.config.password or ""}
        self.requests += 1
        began, status = time.monotonic(), None
        try:
            resp = self._http.request(
                "POST",
                url,
                body=json.dumps(body).encode(),
                headers={**self.config.headers, "Content-Type": "application/json"},
                timeout=self.config.timeout,
                retries=False,
            )
            status = resp.status
        except urllib3.exceptions.SSLError as exc:
            raise AirflowTLSError(_tls_message(self.config.url, str(exc))) from None
        except urllib3.exceptions.HTTPError as exc:
            raise AirflowUnavailable(f"Airflow at {self.config.url} is unreachable: {exc}") from None
        finally:
            metrics.request_done("POST /auth/token", status, time.monotonic() - began)
        if resp.status in (401, 403):
            raise AirflowAuthError(
                f"Airflow at {self.config.url} refused the credentials of user "
                f"{self.config.username!r} (HTTP {resp.status}): check AIRFLOW_USERNAME/AIRFLOW_PASSWORD"
            )
        if resp.status >= 500 or resp.status in (408, 429):
            raise AirflowUnavailable(f"Airflow at {self.config.url} answered HTTP {resp.status} to /auth/token")
        if resp.status not in (200, 201):
            raise AirflowRejected(f"Airflow at {self.config.url} answered HTTP {resp.status} to /auth/token")
        try:
            return str(json.loads(resp.data)["access_token"])
        except (ValueError, KeyError):
            raise AirflowRejected(f"Airflow at {self.config.url}: /auth/token returned no access_token") from None

    @property
    def api_client(self) -> af.ApiClient:
        """The underlying generated client, authenticated, for endpoints not wrapped here."""
        self._ensure_token()
        return self._api

    # -- calling --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, idempotent: bool = True, **kwargs: Any) -> T:
        tries = self.config.read_attempts if idempotent else 1
        retried_auth = False
        attempt = 0
        while True:
            attempt += 1
            self._ensure_token()
            self.requests += 1
            began = time.monotonic()
            status: int | None = None
            try:
                answer = fn(*args, _request_timeout=self.config.timeout, **kwargs)
                status = 200
                return answer
            except ApiException as exc:
                status = exc.status or 0
                error = self._map(what, exc)
                if exc.status in (401, 403) and not retried_auth and self.config.refreshable:
                    # Airflow 3 answers 403 "Invalid JWT token" to an expired or revoked
                    # token: renew it once; a second refusal is a real permission error.
                    retried_auth = True
                    self._ensure_token(force=True)
                    attempt -= 1
                    continue
            except urllib3.exceptions.HTTPError as exc:
                error = AirflowUnavailable(f"{what}: Airflow at {self.config.url} is unreachable ({exc})")
            finally:
                if self.record_metrics:
                    metrics.request_done(_endpoint(args), status, time.monotonic() - began)
            if not isinstance(error, AirflowUnavailable) or attempt >= tries:
                raise error
            time.sleep(0.25 * 2 ** (attempt - 1))

    def _json(
        self,
        method: str,
        path: str,
        *,
        path_params: dict[str, str],
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        _request_timeout: float | None = None,
    ) -> Any:
        """A request through the generated ``ApiClient`` (host, auth, serialization), returning
        the JSON body. The calls made at every step of every window go this way instead of
        through the generated endpoint methods, whose argument and model validation (pydantic)
        was most of their CPU (bench B4). Errors raise ``ApiException`` as the generated calls do."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._api.param_serialize(
            method=method, resource_path=path, path_params=path_params, query_params=query,
            header_params=headers, body=body, auth_settings=AUTH_SETTINGS, collection_formats=MULTI,
        )  # fmt: skip
        resp = self._api.call_api(*request, _request_timeout=_request_timeout)
        data = resp.read()  # type: ignore[no-untyped-call]  # the client's RESTResponse is untyped
        if not 200 <= resp.status < 300:
            ApiException.from_response(http_resp=resp, body=data.decode(errors="replace"), data=None)
        return json.loads(data)

    def _map(self, what: str, exc: ApiException) -> AirflowError:
        status = exc.status or 0
        detail = _detail(exc)
        if status in (401, 403):
            who = (
                f"user {self.config.username!r}" if self.config.username
                else f"the token in {self.config.token_file!r}" if self.config.token_file
                else "the token (AIRFLOW_TOKEN)" if self.config.token else "anonymous access"
            )  # fmt: skip
            error: AirflowError = AirflowAuthError(f"{what}: Airflow refused {who} (HTTP {status}): {detail}")
        elif status == 404:
            error = AirflowNotFound(f"{what}: not found in Airflow ({detail})")
        elif status == 409:
            error = AirflowConflict(f"{what}: conflict in Airflow ({detail})")
        elif status == 0 and str(exc.reason or "").startswith("SSLError"):
            error = AirflowTLSError(_tls_message(self.config.url, str(exc.reason)))
        elif status >= 500 or status in (0, 408, 429):  # 408/429: a gateway asks us to come back later
            error = AirflowUnavailable(f"{what}: Airflow answered HTTP {status} ({detail})")
        else:
            error = AirflowRejected(f"{what}: Airflow rejected the request (HTTP {status}): {detail}")
        error.status = status
        return error

    # -- DAGs -----------------------------------------------------------------------------

    def get_dag(self, dag_id: str) -> DagInfo:
        """The DAG's details (raw JSON: the fields differ between Airflow 3.0 and 3.3)."""
        dag = self._call(f"DAG {dag_id!r}", self._json, "GET", "/api/v2/dags/{dag_id}/details",
                         path_params={"dag_id": dag_id})  # fmt: skip
        summary = dag.get("timetable_summary")
        return DagInfo(
            dag_id=dag["dag_id"], is_paused=bool(dag.get("is_paused")), max_active_runs=dag.get("max_active_runs"),
            schedule=None if summary in (None, "None") else str(summary), timezone=dag.get("timezone"),
        )  # fmt: skip

    def set_paused(self, dag_id: str, paused: bool) -> None:
        what = f"{'pause' if paused else 'unpause'} DAG {dag_id!r}"
        self._call(what, self._json, "PATCH", "/api/v2/dags/{dag_id}", path_params={"dag_id": dag_id},
                   query=[("update_mask", ["is_paused"])], body={"is_paused": paused})  # fmt: skip

    # -- runs -----------------------------------------------------------------------------

    def get_run(self, dag_id: str, run_id: str) -> RunInfo:
        """One run: the hottest call (every look at a running window)."""
        path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}"
        body = self._call(f"run {run_id!r} of DAG {dag_id!r}", self._json, "GET", path,
                          path_params={"dag_id": dag_id, "dag_run_id": run_id})  # fmt: skip
        return RunInfo.from_json(body)

    def _list(self, what: str, dag_id: str, query: list[tuple[str, Any]], *, limit: int | None = None) -> list[RunInfo]:
        """Runs of the DAG matching ``query``: every page, or the first ``limit`` runs. Airflow
        may cap a page below what we ask (``[api] maximum_page_limit``), so paging goes on until
        an empty page, the total, or a page of runs already seen (a server ignoring offsets)."""
        out: list[RunInfo] = []
        seen: set[str] = set()
        while True:
            size = PAGE if limit is None else min(PAGE, limit - len(out))
            page = self._call(what, self._json, "GET", "/api/v2/dags/{dag_id}/dagRuns", path_params={"dag_id": dag_id},
                              query=[*query, ("limit", size), ("offset", len(out))])  # fmt: skip
            new = [RunInfo.from_json(r) for r in page["dag_runs"]]
            new = [r for r in new if r.run_id not in seen]
            out += new
            seen.update(r.run_id for r in new)
            total = page.get("total_entries")  # may be null on 3.2+ (cursor pages)
            if not new or (limit is not None and len(out) >= limit) or (isinstance(total, int) and len(out) >= total):
                return out

    def runs_at(self, dag_id: str, logical_date: datetime) -> list[RunInfo]:
        """The run holding ``logical_date`` on the DAG, if any (Airflow keeps at most one)."""
        return self.runs_between(dag_id, logical_date, logical_date)

    def runs_between(self, dag_id: str, first: datetime, last: datetime) -> list[RunInfo]:
        """Every run of the DAG whose logical date is in [first, last], oldest first."""
        query = [("logical_date_gte", first.isoformat()), ("logical_date_lte", last.isoformat()),
                 ("order_by", ["logical_date"])]  # fmt: skip
        return self._list(f"runs of DAG {dag_id!r} in [{first.isoformat()}, {last.isoformat()}]", dag_id, query)

    def latest_run(self, dag_id: str, *, until: datetime) -> RunInfo | None:
        """The run with the latest logical date at or before ``until``, if any."""
        query = [("logical_date_lte", until.isoformat()), ("order_by", ["-logical_date"])]
        found = self._list(f"latest run of DAG {dag_id!r}", dag_id, query, limit=1)
        return found[0] if found else None

    def runs_active_between(self, dag_id: str, first: datetime, last: datetime) -> list[RunInfo]:
        """Every run of the DAG that was queued, running or ended in [first, last] (by its
        dates in Airflow): the runs that may have overlapped a backfill's."""
        query = [("end_date_gte", first.isoformat()), ("start_date_lte", last.isoformat()), ("order_by", ["id"])]
        ended = self._list(f"runs of DAG {dag_id!r} ended after {first.isoformat()}", dag_id, query)
        return ended + [r for r in self.active_runs(dag_id) if r.run_id not in {e.run_id for e in ended}]

    def active_runs(self, dag_id: str) -> list[RunInfo]:
        """Queued and running runs of the DAG, whoever started them."""
        query = [("state", list(ACTIVE_RUN_STATES)), ("order_by", ["logical_date"])]
        return self._list(f"active runs of DAG {dag_id!r}", dag_id, query, limit=20)

    def recent_successes(self, dag_id: str, limit: int = 20) -> list[RunInfo]:
        """The DAG's latest successful runs, newest first (for duration estimates)."""
        query = [("state", [RunState.SUCCESS]), ("order_by", ["-end_date"])]
        return self._list(f"recent runs of DAG {dag_id!r}", dag_id, query, limit=limit)

    def runs_by_prefix(self, dag_id: str, prefix: str, *, active: bool = False) -> list[RunInfo]:
        """Every run of the DAG whose run id starts with ``prefix`` (e.g. a backfill id); only
        queued or running ones if ``active``."""
        # run_id_pattern (a substring match, 3.1+; 3.0 ignores it: the check below still holds).
        query = [("run_id_pattern", prefix), ("order_by", ["logical_date"])]
        if active:
            query.append(("state", list(ACTIVE_RUN_STATES)))
        runs = self._list(f"runs {prefix}* of DAG {dag_id!r}", dag_id, query)
        # A LIKE pattern: '_' matches any character, so check the prefix here.
        return [r for r in runs if r.run_id.startswith(prefix)]

    def runs_between_many(self, dag_ids: Sequence[str], first: datetime, last: datetime) -> dict[str, list[RunInfo]]:
        """``runs_between`` for many DAGs at once, by DAG: ``POST /api/v2/dags/~/dagRuns/list``,
        a request per page of runs and per ``BATCH_DAGS`` DAGs (a submit of a thousand DAGs
        without history asks a few times, not a thousand)."""
        out: dict[str, list[RunInfo]] = {d: [] for d in dag_ids}
        for i in range(0, len(dag_ids), BATCH_DAGS):
            chunk = list(dag_ids[i : i + BATCH_DAGS])
            label = f"runs of {len(chunk)} DAG(s) in [{first.isoformat()}, {last.isoformat()}]"
            for raw in self._batch(label, chunk, None, logical_date_gte=first, logical_date_lte=last):
                if raw["dag_id"] in out:
                    out[raw["dag_id"]].append(RunInfo.from_json(raw))
        for runs in out.values():
            runs.sort(key=lambda r: (r.logical_date is None, r.logical_date or first))
        return out

    def ended_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
        """Runs of any of ``dag_ids`` that ended (success or failed) at or after ``since`` (epoch
        seconds), as Airflow's JSON, in one request per page: ``POST /api/v2/dags/~/dagRuns/list``
        (the watcher's)."""
        return self._batch(_since_label("ended", dag_ids, since), dag_ids, [RunState.SUCCESS, RunState.FAILED],
                           end_date_gte=_utc(since))  # fmt: skip

    def started_runs_json(self, dag_ids: list[str], *, since: float) -> list[dict[str, Any]]:
        """Runs of any of ``dag_ids`` that started at or after ``since`` (epoch seconds), running or
        ended since, as Airflow's JSON, in one request per page: ``POST /api/v2/dags/~/dagRuns/list``
        (the watcher's)."""
        states = [RunState.RUNNING, RunState.SUCCESS, RunState.FAILED]
        return self._batch(_since_label("started", dag_ids, since), dag_ids, states, start_date_gte=_utc(since))

    def _batch(
        self, label: str, dag_ids: list[str], states: Sequence[str] | None, **dates: datetime
    ) -> list[dict[str, Any]]:
        """``POST /api/v2/dags/~/dagRuns/list``: runs of many DAGs (in a few states, or any)
        filtered by dates, every page."""
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        filters: dict[str, Any] = {k: v.isoformat() for k, v in dates.items()}
        if states is not None:
            filters["states"] = states
        while True:
            body = {"dag_ids": dag_ids, **filters, "order_by": "id", "page_limit": PAGE, "page_offset": len(out)}
            page = self._call(label, self._json, "POST", "/api/v2/dags/{dag_id}/dagRuns/list",
                              path_params={"dag_id": "~"}, body=body)  # fmt: skip
            new = [r for r in page["dag_runs"] if (r["dag_id"], r["dag_run_id"]) not in seen]
            out += new
            seen.update((r["dag_id"], r["dag_run_id"]) for r in new)
            total = page.get("total_entries")
            if not new or (isinstance(total, int) and len(out) >= total):
                return out

    def trigger(
        self, dag_id: str, run_id: str, window: Window, *, conf: dict[str, Any], note: str | None = None
    ) -> RunInfo:
        body = {
            "dag_run_id": run_id, "logical_date": window.start.isoformat(),
            "data_interval_start": window.start.isoformat(), "data_interval_end": window.end.isoformat(),
            "conf": conf, "note": note,
        }  # fmt: skip
        run = self._call(
            f"trigger run {run_id!r} of DAG {dag_id!r}", self._json, "POST", "/api/v2/dags/{dag_id}/dagRuns",
            path_params={"dag_id": dag_id}, body=body, idempotent=False,
        )  # fmt: skip
        return RunInfo.from_json(run)

    def clear(self, dag_id: str, run_id: str, *, only_failed: bool = False) -> None:
        """Re-queue an existing run (with its original data interval): all its tasks, or only
        the failed ones (and those they left undone)."""
        body = {"dry_run": False, **({"only_failed": True} if only_failed else {})}
        self._call(f"clear run {run_id!r} of DAG {dag_id!r}", self._json, "POST",
                   "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}/clear",
                   path_params={"dag_id": dag_id, "dag_run_id": run_id}, body=body,
                   idempotent=False)  # fmt: skip

    def fail_run(self, dag_id: str, run_id: str) -> None:
        self._call(f"fail run {run_id!r} of DAG {dag_id!r}", self._json, "PATCH",
                   "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}", path_params={"dag_id": dag_id, "dag_run_id": run_id},
                   query=[("update_mask", ["state"])], body={"state": RunState.FAILED})  # fmt: skip


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _since_label(what: str, dag_ids: list[str], since: float) -> str:
    return f"runs of {len(dag_ids)} DAG(s) {what} since {_utc(since).isoformat()}"


def _endpoint(args: tuple[Any, ...]) -> str:
    """A request's metrics label: its method and path template (``GET /api/v2/dags/{dag_id}``)."""
    return f"{args[0]} {args[1]}" if len(args) >= 2 and isinstance(args[1], str) else "other"


def _tls_message(url: str, detail: str) -> str:
    reason = detail.replace("SSLError\n", "").strip()
    return (
        f"TLS with Airflow at {url} failed ({reason[:300]}): if its certificate is signed by a private CA, "
        "set AIRFLOW_CA_BUNDLE to that CA's PEM file (AIRFLOW_VERIFY_SSL=false turns the check off, for tests only)"
    )


def _detail(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if body:
        try:
            parsed = json.loads(body)
            detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
            return detail if isinstance(detail, str) else json.dumps(detail)[:500]
        except ValueError:
            return str(body)[:500]
    return exc.reason or "no detail"
