"""The client's own logic (retries, token renewal, error mapping) through its injectable
transport. Orchestration itself is only ever tested against the real Airflow."""

from __future__ import annotations

import base64
import json
import time

import pytest
import urllib3

from backfill.airflow import AirflowClient, AirflowConfig, _jwt_expiry
from backfill.errors import AirflowAuthError, AirflowRejected, AirflowUnavailable

DAG = {  # the fields Airflow 3.3's DAGResponse requires
    "dag_id": "d",
    "dag_display_name": "d",
    "file_token": "t",
    "fileloc": "/dags/d.py",
    "has_import_errors": False,
    "has_task_concurrency_limits": False,
    "is_backfillable": True,
    "is_paused": False,
    "is_stale": False,
    "max_active_runs": 1,
    "max_active_tasks": 16,
    "max_consecutive_failed_dag_runs": 0,
    "owners": ["airflow"],
    "tags": [],
    "timetable_partitioned": False,
    "timetable_periodic": False,
}


def jwt(exp: float) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    return f"h.{payload}.s"


class Transport:
    """Answers requests from a script of (status, body) per path suffix, recording each."""

    def __init__(self, script: dict[str, list[tuple[int, object]]]) -> None:
        self.script = script
        self.seen: list[tuple[str, str, dict]] = []

    def request(self, method, url, body=None, headers=None, **kwargs):
        self.seen.append((method, url, dict(headers or {})))
        for suffix, answers in self.script.items():
            if url.split("?")[0].endswith(suffix):
                status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
                if isinstance(payload, Exception):
                    raise payload
                data = json.dumps(payload).encode()
                return urllib3.HTTPResponse(
                    body=data, status=status, headers={"content-type": "application/json"}, preload_content=True
                )
        raise AssertionError(f"unexpected {method} {url}")


def client(transport: Transport, **kw) -> AirflowClient:
    return AirflowClient(AirflowConfig(url="http://af", username="u", password="p", **kw), pool_manager=transport)


def test_token_is_renewed_a_minute_before_it_expires():
    t = Transport({"/auth/token": [(201, {"access_token": jwt(time.time() + 30)})], "/dags/d/details": [(200, DAG)]})
    c = client(t)
    c.get_dag("d")
    c.get_dag("d")
    assert [u.rsplit("/", 2)[-1] for _, u, _ in t.seen].count("token") == 2  # 30 s left: renewed


def test_transient_errors_on_reads_are_retried_then_reported():
    t = Transport(
        {
            "/auth/token": [(201, {"access_token": jwt(time.time() + 3600)})],
            "/dags/d/details": [(503, {"detail": "busy"}), (500, {"detail": "Database error"}), (200, DAG)],
        }
    )
    assert client(t).get_dag("d").dag_id == "d"
    t2 = Transport(
        {
            "/auth/token": [(201, {"access_token": jwt(time.time() + 3600)})],
            "/dags/d/details": [(502, {"detail": "bad gw"})],
        }
    )
    with pytest.raises(AirflowUnavailable, match=r"DAG 'd': Airflow answered HTTP 502 \(bad gw\)"):
        client(t2).get_dag("d")


def test_a_gateways_429_and_408_are_transient():
    t = Transport(
        {
            "/auth/token": [(201, {"access_token": jwt(time.time() + 3600)})],
            "/dags/d/details": [(429, {"detail": "slow down"}), (408, {"detail": "timeout"}), (200, DAG)],
        }
    )
    assert client(t).get_dag("d").dag_id == "d"


def test_extra_headers_go_with_every_request_and_the_token_request_too():
    t = Transport({"/auth/token": [(201, {"access_token": jwt(time.time() + 3600)})], "/dags/d/details": [(200, DAG)]})
    client(t, headers={"X-Api-Key": "k1"}).get_dag("d")
    assert [h.get("X-Api-Key") for _, _, h in t.seen] == ["k1", "k1"]


def test_a_static_token_is_sent_as_is_and_never_shown():
    t = Transport({"/dags/d/details": [(403, {"detail": "Invalid JWT token"})]})
    c = AirflowClient(AirflowConfig(url="http://af", token="s3cret-token"), pool_manager=t)
    with pytest.raises(AirflowAuthError) as refused:
        c.get_dag("d")
    assert "AIRFLOW_TOKEN" in str(refused.value) and "s3cret" not in str(refused.value)
    assert t.seen[0][2]["Authorization"] == "Bearer s3cret-token" and len(t.seen) == 1  # not retried
    assert "s3cret" not in repr(c.config)


def test_a_4xx_is_not_retried_and_says_why():
    t = Transport(
        {
            "/auth/token": [(201, {"access_token": jwt(time.time() + 3600)})],
            "/dags/d/details": [(400, {"detail": "bad request body"})],
        }
    )
    with pytest.raises(AirflowRejected, match=r"HTTP 400.*bad request body"):
        client(t).get_dag("d")
    assert sum(u.endswith("/dags/d/details") for _, u, _ in t.seen) == 1


def test_jwt_expiry_is_read_without_verification():
    assert _jwt_expiry(jwt(1234.0)) == 1234.0
    assert _jwt_expiry("opaque-token") is None


def test_a_run_read_from_json_agrees_with_the_generated_model() -> None:
    # get_run parses the body itself (the hot path); it must agree with the official model.
    from pathlib import Path

    from airflow_client.client.models.dag_run_response import DAGRunResponse

    from backfill.airflow import RunInfo

    body = json.loads((Path(__file__).resolve().parents[2] / "bench" / "standin_templates.json").read_text())["run"]
    body = {**body, "start_date": "2026-11-21T15:05:30.235609Z", "end_date": "2026-11-21T15:05:33.370589Z"}
    ours, model = RunInfo.from_json(body), DAGRunResponse.from_dict(body)
    for name in ("dag_id", "logical_date", "data_interval_start", "data_interval_end", "start_date", "end_date",
                 "queued_at"):  # fmt: skip
        assert getattr(ours, name) == getattr(model, name), name
    assert ours.run_id == model.dag_run_id and ours.state == model.state.value and ours.conf == model.conf


def test_a_clear_is_sent_once_a_lost_reply_is_not_retried_blindly():
    """A clear whose reply was lost may have gone through: sent again, it would reset the run's
    tasks a second time. One try; the window's next look finds out (backfill.runner._claimed)."""
    t = Transport(
        {
            "/auth/token": [(201, {"access_token": jwt(time.time() + 3600)})],
            "/dagRuns/r/clear": [(504, {"detail": "gateway timeout"}), (200, {})],
        }
    )
    with pytest.raises(AirflowUnavailable):
        client(t).clear("d", "r")
    assert [u for _, u, _ in t.seen if u.endswith("/clear")] == ["http://af/api/v2/dags/d/dagRuns/r/clear"]
