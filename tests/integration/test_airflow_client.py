"""The Airflow client against the real Airflow: auth, errors, the logical-date rule it relies on."""

from __future__ import annotations

import ssl
import time

import pytest
import urllib3

from backfill.airflow import AirflowClient, AirflowConfig
from backfill.errors import AirflowAuthError, AirflowConflict, AirflowNotFound, AirflowUnavailable
from backfill.windows import window_spec
from tests.integration.helpers import Proxy, wait_for

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


def test_the_watchers_list_filters_by_dags_states_and_start(orch):
    """The watcher's requests (``POST /dags/~/dagRuns/list``), against Airflow 3.3: the runs of
    the DAGs named that started since a time, running or ended, and those that ended since a
    time, with their dates and state."""
    af = orch.airflow
    before = time.time() - 5  # our clock and Airflow's are one machine's here
    w = window_spec("2011-08-01", "2011-08-01", "daily").window(0)
    af.trigger("etl_users", "manual__watch_probe", w, conf={"sleep": 4})
    w2 = window_spec("2011-08-02", "2011-08-02", "daily").window(0)
    af.trigger("etl_orders", "manual__watch_probe", w2, conf={"sleep": 0})

    def probe(dags, since):
        return [r for r in af.started_runs_json(dags, since=since) if r["dag_run_id"] == "manual__watch_probe"]

    running = wait_for(lambda: [r for r in probe(["etl_users"], before) if r["state"] == "running"], 90, "running")
    assert [r["dag_id"] for r in running] == ["etl_users"]  # etl_orders was not asked for
    ended = wait_for(lambda: [r for r in probe(["etl_users", "etl_orders"], before) if r["dag_id"] == "etl_users"
                              and r["state"] == "success"], 90, "ended")  # fmt: skip
    assert ended[0]["start_date"] and ended[0]["end_date"] and ended[0]["queued_at"]
    assert probe(["etl_users"], time.time() + 60) == []  # started before that
    # The other list: runs ended since a time, in the states asked.
    done = [r for r in af.ended_runs_json(["etl_users"], since=before) if r["dag_run_id"] == "manual__watch_probe"]
    assert [(r["dag_id"], r["state"]) for r in done] == [("etl_users", "success")]
    assert [r for r in af.ended_runs_json(["etl_users"], since=time.time() + 60)
            if r["dag_run_id"] == "manual__watch_probe"] == []  # fmt: skip


def test_the_submits_list_of_many_dags_is_each_dags_runs_in_the_range(orch, monkeypatch):
    """``runs_between_many`` (the submit's history of every DAG, ``POST /dags/~/dagRuns/list`` by
    logical date) gives each DAG what ``runs_between`` gives it, across pages and DAG chunks."""
    import backfill.airflow

    af = orch.airflow
    spec = window_spec("2011-09-01", "2011-09-03", "daily")
    for dag in ("etl_users", "etl_orders"):
        for i in range(3):
            af.trigger(dag, f"manual__many_probe_{i}", spec.window(i), conf={"sleep": 0})
    first, last = spec.window(0).start, spec.window(2).start
    monkeypatch.setattr(backfill.airflow, "PAGE", 2)  # pages of two runs
    monkeypatch.setattr(backfill.airflow, "BATCH_DAGS", 1)  # a request per DAG
    many = af.runs_between_many(["etl_users", "etl_orders", "etl_payments"], first, spec.window(1).start)
    assert {d: [r.run_id for r in rs] for d, rs in many.items()} == {
        "etl_users": ["manual__many_probe_0", "manual__many_probe_1"],
        "etl_orders": ["manual__many_probe_0", "manual__many_probe_1"],
        "etl_payments": [],
    }
    monkeypatch.undo()
    many = af.runs_between_many(["etl_users", "etl_orders"], first, last)
    for dag in ("etl_users", "etl_orders"):
        one = af.runs_between(dag, first, last)
        assert [r.run_id for r in many[dag]] == [r.run_id for r in one] and len(one) == 3


def _token(stack) -> str:
    import json
    import urllib.request

    body = json.dumps({"username": stack.airflow_user, "password": stack.airflow_password}).encode()
    req = urllib.request.Request(f"{stack.airflow_url}/auth/token", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["access_token"]


def test_a_token_fetched_once_is_the_only_credential_the_cli_needs(orch):
    import json
    import subprocess
    import sys
    from pathlib import Path

    token = _token(orch.stack)
    env = {k: v for k, v in orch.stack.env().items() if k not in ("AIRFLOW_USERNAME", "AIRFLOW_PASSWORD")}
    env["AIRFLOW_TOKEN"] = token
    cmd = [str(Path(sys.executable).parent / "backfill"), "plan", "etl_users", "--start", "2016-07-01",
           "--end", "2016-07-02", "--json"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dags"][0]["airflow"] == "ok"
    env["AIRFLOW_TOKEN"] = "not-a-valid-token"
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "AIRFLOW_TOKEN" in refused.stderr and "not-a-valid" not in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_token_file_is_read_again_when_it_changes(airflow, stack, tmp_path):
    import os

    path = tmp_path / "token"
    path.write_text("expired-token\n")
    client = AirflowClient(AirflowConfig(url=stack.airflow_url, token_file=str(path)))
    with pytest.raises(AirflowAuthError) as refused:
        client.get_dag("etl_users")
    assert str(path) in str(refused.value) and "expired-token" not in str(refused.value)
    path.write_text(_token(stack) + "\n")  # a sidecar rotates it
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 1))
    assert client.get_dag("etl_users").dag_id == "etl_users"


def test_tls_with_a_private_ca_needs_the_ca_bundle(airflow, stack, tmp_path):
    import subprocess

    from backfill.errors import AirflowTLSError

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(cert), str(key))
    proxy = Proxy(int(stack.airflow_url.rsplit(":", 1)[1]), tls=tls)
    try:
        url = f"https://127.0.0.1:{proxy.port}"
        creds = {"username": stack.airflow_user, "password": stack.airflow_password}
        with pytest.raises(AirflowTLSError) as refused:
            AirflowClient(AirflowConfig(url=url, **creds)).get_dag("etl_users")
        assert "AIRFLOW_CA_BUNDLE" in str(refused.value) and stack.airflow_password not in str(refused.value)
        trusted = AirflowClient(AirflowConfig(url=url, ca_bundle=str(cert), **creds))
        assert trusted.get_dag("etl_users").dag_id == "etl_users"
        unchecked = AirflowClient(AirflowConfig(url=url, verify=False, **creds))
        with pytest.warns(urllib3.exceptions.InsecureRequestWarning):  # said, not silent
            assert unchecked.get_dag("etl_users").dag_id == "etl_users"
    finally:
        proxy.cut()
