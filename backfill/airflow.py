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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import urllib3
from airflow_client import client as af
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.exceptions import ApiException

from backfill.errors import (
    AirflowAuthError,
    AirflowConflict,
    AirflowError,
    AirflowNotFound,
    AirflowRejected,
    AirflowUnavailable,
)
from backfill.windows import Window

T = TypeVar("T")
ACTIVE_STATES = ("queued", "running")


@dataclass(frozen=True, kw_only=True)
class AirflowConfig:
    """Where Airflow is and how to talk to it."""

    url: str = "http://localhost:8080"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0  # seconds, per request
    read_attempts: int = 3  # in-call tries of an idempotent read on a transient error

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))


@dataclass(frozen=True, slots=True)
class DagInfo:
    dag_id: str
    is_paused: bool
    max_active_runs: int | None


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
        return self.state in ACTIVE_STATES

    def covers(self, window: Window) -> bool:
        return self.data_interval_start == window.start and self.data_interval_end == window.end

    @classmethod
    def from_json(cls, run: dict[str, Any]) -> RunInfo:
        """From the API's JSON body of a run (same fields as ``from_api``)."""
        when = {k: _when(run.get(k)) for k in _DATES}
        return cls(
            dag_id=run["dag_id"], run_id=run["dag_run_id"], state=run["state"], run_type=run["run_type"],
            conf=dict(run.get("conf") or {}), **when,
        )  # fmt: skip

    @classmethod
    def from_api(cls, run: Any) -> RunInfo:
        return cls(
            dag_id=run.dag_id,
            run_id=run.dag_run_id,
            state=str(getattr(run.state, "value", run.state)),
            run_type=str(getattr(run.run_type, "value", run.run_type)),
            logical_date=run.logical_date,
            data_interval_start=run.data_interval_start,
            data_interval_end=run.data_interval_end,
            start_date=run.start_date,
            end_date=run.end_date,
            queued_at=run.queued_at,
            conf=dict(run.conf or {}),
        )


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
MULTI = {"state": "multi", "order_by": "multi"}  # list query parameters: ?state=a&state=b


class AirflowClient:
    """A small, typed face over the DAG and DAG-run endpoints the orchestrator uses."""

    def __init__(self, config: AirflowConfig, *, pool_manager: Any | None = None) -> None:
        self.config = config
        self.requests = 0  # HTTP requests sent, token requests included
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_expiry: float | None = None
        conf = af.Configuration(host=config.url)
        conf.retries = False  # we decide what is retried and how
        self._api = af.ApiClient(conf)
        self._http = pool_manager or urllib3.PoolManager()
        if pool_manager is not None:
            self._api.rest_client.pool_manager = pool_manager
        self._dags = DAGApi(self._api)
        self._runs = DagRunApi(self._api)

    # -- auth ---------------------------------------------------------------------------

    def _ensure_token(self, *, force: bool = False) -> None:
        if self.config.username is None:
            return
        with self._lock:
            fresh = self._token and (self._token_expiry is None or self._token_expiry - time.time() > 60)
            if fresh and not force:
                return
            self._token = self._fetch_token()
            self._token_expiry = _jwt_expiry(self._token)
            self._api.configuration.access_token = self._token

    def _fetch_token(self) -> str:
        url = f"{self.config.url}/auth/token"
        body = {"username": self.config.username, "password": self.config.password or ""}
        self.requests += 1
        try:
            resp = self._http.request(
                "POST",
                url,
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                timeout=self.config.timeout,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise AirflowUnavailable(f"Airflow at {self.config.url} is unreachable: {exc}") from None
        if resp.status in (401, 403):
            raise AirflowAuthError(
                f"Airflow at {self.config.url} refused the credentials of user "
                f"{self.config.username!r} (HTTP {resp.status}): check AIRFLOW_USERNAME/AIRFLOW_PASSWORD"
            )
        if resp.status >= 500:
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
            try:
                return fn(*args, _request_timeout=self.config.timeout, **kwargs)
            except ApiException as exc:
                error = self._map(what, exc)
                if exc.status in (401, 403) and not retried_auth and self.config.username is not None:
                    # Airflow 3 answers 403 "Invalid JWT token" to an expired or revoked
                    # token: renew it once; a second refusal is a real permission error.
                    retried_auth = True
                    self._ensure_token(force=True)
                    attempt -= 1
                    continue
            except urllib3.exceptions.HTTPError as exc:
                error = AirflowUnavailable(f"{what}: Airflow at {self.config.url} is unreachable ({exc})")
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
        data = resp.read()
        if not 200 <= resp.status < 300:
            ApiException.from_response(http_resp=resp, body=data.decode(errors="replace"), data=None)
        return json.loads(data)

    def _map(self, what: str, exc: ApiException) -> AirflowError:
        status = exc.status or 0
        detail = _detail(exc)
        if status in (401, 403):
            who = f"user {self.config.username!r}" if self.config.username else "anonymous access"
            error: AirflowError = AirflowAuthError(f"{what}: Airflow refused {who} (HTTP {status}): {detail}")
        elif status == 404:
            error = AirflowNotFound(f"{what}: not found in Airflow ({detail})")
        elif status == 409:
            error = AirflowConflict(f"{what}: conflict in Airflow ({detail})")
        elif status >= 500 or status == 0:
            error = AirflowUnavailable(f"{what}: Airflow answered HTTP {status} ({detail})")
        else:
            error = AirflowRejected(f"{what}: Airflow rejected the request (HTTP {status}): {detail}")
        error.status = status
        return error

    # -- DAGs -----------------------------------------------------------------------------

    def get_dag(self, dag_id: str) -> DagInfo:
        dag = self._call(f"DAG {dag_id!r}", self._dags.get_dag, dag_id)
        return DagInfo(dag_id=dag.dag_id, is_paused=bool(dag.is_paused), max_active_runs=dag.max_active_runs)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        body = af.DAGPatchBody(is_paused=paused)
        what = f"{'pause' if paused else 'unpause'} DAG {dag_id!r}"
        self._call(what, self._dags.patch_dag, dag_id, body, update_mask=["is_paused"])

    # -- runs -----------------------------------------------------------------------------

    def get_run(self, dag_id: str, run_id: str) -> RunInfo:
        """One run: the hottest call (every look at a running window)."""
        path = "/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}"
        body = self._call(f"run {run_id!r} of DAG {dag_id!r}", self._json, "GET", path,
                          path_params={"dag_id": dag_id, "dag_run_id": run_id})  # fmt: skip
        return RunInfo.from_json(body)

    def runs_at(self, dag_id: str, logical_date: datetime) -> list[RunInfo]:
        """The run holding ``logical_date`` on the DAG, if any (Airflow keeps at most one)."""
        page = self._call(
            f"runs of DAG {dag_id!r} at {logical_date.isoformat()}",
            self._runs.get_dag_runs,
            dag_id,
            logical_date_gte=logical_date,
            logical_date_lte=logical_date,
        )
        return [RunInfo.from_api(r) for r in page.dag_runs]

    def active_runs(self, dag_id: str) -> list[RunInfo]:
        """Queued and running runs of the DAG, whoever started them."""
        page = self._call(
            f"active runs of DAG {dag_id!r}",
            self._json,
            "GET",
            "/api/v2/dags/{dag_id}/dagRuns",
            path_params={"dag_id": dag_id},
            query=[("state", list(ACTIVE_STATES)), ("order_by", ["logical_date"]), ("limit", 20)],
        )
        return [RunInfo.from_json(r) for r in page["dag_runs"]]

    def recent_successes(self, dag_id: str, limit: int = 20) -> list[RunInfo]:
        """The DAG's latest successful runs, newest first (for duration estimates)."""
        page = self._call(
            f"recent runs of DAG {dag_id!r}",
            self._runs.get_dag_runs,
            dag_id,
            state=["success"],
            order_by=["-end_date"],
            limit=limit,
        )
        return [RunInfo.from_api(r) for r in page.dag_runs]

    def runs_by_prefix(self, dag_id: str, prefix: str) -> list[RunInfo]:
        """Every run of the DAG whose run id starts with ``prefix`` (e.g. a backfill id)."""
        out: list[RunInfo] = []
        while True:
            page = self._call(
                f"runs {prefix}* of DAG {dag_id!r}",
                self._runs.get_dag_runs,
                dag_id,
                run_id_prefix_pattern=prefix,
                order_by=["logical_date"],
                limit=100,
                offset=len(out),
            )
            out += [RunInfo.from_api(r) for r in page.dag_runs]
            if len(page.dag_runs) < 100:
                return out

    def trigger(
        self, dag_id: str, run_id: str, window: Window, *, conf: dict[str, Any], note: str | None = None
    ) -> RunInfo:
        body = af.TriggerDAGRunPostBody(
            dag_run_id=run_id,
            logical_date=window.start,
            data_interval_start=window.start,
            data_interval_end=window.end,
            conf=conf,
            note=note,
        )
        run = self._call(
            f"trigger run {run_id!r} of DAG {dag_id!r}",
            self._json,
            "POST",
            "/api/v2/dags/{dag_id}/dagRuns",
            path_params={"dag_id": dag_id},
            body=body,
            idempotent=False,
        )
        return RunInfo.from_json(run)

    def clear(self, dag_id: str, run_id: str) -> None:
        """Re-queue an existing run (with its original data interval)."""
        body = af.DAGRunClearBody(dry_run=False)
        self._call(f"clear run {run_id!r} of DAG {dag_id!r}", self._runs.clear_dag_run, dag_id, run_id, body)

    def fail_run(self, dag_id: str, run_id: str) -> None:
        body = af.DAGRunPatchBody(state=af.DagRunMutableStates.FAILED)
        self._call(
            f"fail run {run_id!r} of DAG {dag_id!r}",
            self._runs.patch_dag_run,
            dag_id,
            run_id,
            body,
            update_mask=["state"],
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
