"""The Airflow client against the real Airflow: auth, errors, the logical-date rule it relies on."""

from __future__ import annotations

import pytest

from backfill.airflow import AirflowClient, AirflowConfig
from backfill.errors import AirflowAuthError, AirflowConflict, AirflowNotFound, AirflowUnavailable
from backfill.windows import window_spec

pytestmark = pytest.mark.integration


def test_a_rejected_token_is_renewed_once(orch):
    client = AirflowClient(
        AirflowConfig(
            url=orch.stack.airflow_url, username=orch.stack.airflow_user, password=orch.stack.airflow_password
        )
    )
    assert client.get_dag("etl_users").dag_id == "etl_users"
    client._token = "not-a-token"  # as if it had expired or been revoked
    client._api.configuration.access_token = "not-a-token"
    before = client.requests
    assert client.get_dag("etl_users").dag_id == "etl_users"
    assert client.requests - before == 3  # refused (403 Invalid JWT), POST /auth/token, the GET again


def test_errors_are_mapped_with_clear_messages(orch):
    url = orch.stack.airflow_url
    wrong = AirflowClient(AirflowConfig(url=url, username="admin", password="wrong"))
    with pytest.raises(AirflowAuthError, match="refused the credentials of user 'admin'"):
        wrong.get_dag("etl_users")
    anonymous = AirflowClient(AirflowConfig(url=url))
    with pytest.raises(AirflowAuthError, match="Airflow refused anonymous access"):
        anonymous.get_dag("etl_users")
    with pytest.raises(AirflowNotFound, match="DAG 'no_such_dag'"):
        orch.airflow.get_dag("no_such_dag")
    down = AirflowClient(AirflowConfig(url="http://127.0.0.1:9", timeout=2))
    with pytest.raises(AirflowUnavailable, match="unreachable"):
        down.get_dag("etl_users")


def test_one_run_per_logical_date_is_a_conflict(orch):
    w = window_spec("2011-07-01", "2011-07-01", "daily").window(0)
    orch.airflow.trigger("etl_users", "manual__ld_probe_a", w, conf={"sleep": 0})
    with pytest.raises(AirflowConflict):
        orch.airflow.trigger("etl_users", "manual__ld_probe_b", w, conf={})
    assert [r.run_id for r in orch.airflow.runs_at("etl_users", w.start)] == ["manual__ld_probe_a"]
