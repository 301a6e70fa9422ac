"""docker-compose.yaml as processes: the session's stack is the compose file's (conftest's
``compose``), started service by service in ``depends_on`` order; here every healthcheck runs
against it, and the worker and Flower services run with their own command and environment."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.compose_stack import AIRFLOW_SERVICES, ComposeStack
from tests.integration.helpers import runs

pytestmark = pytest.mark.integration


def test_every_service_started_after_its_dependencies_and_is_healthy(compose: ComposeStack, orch) -> None:
    order = compose.started
    for name in order:
        for dep in compose.service(name).get("depends_on") or {}:
            assert order.index(dep) < order.index(name), (name, dep, order)
    assert compose.procs["airflow-init"].popen.returncode == 0
    for name in ("redis", "postgres", *AIRFLOW_SERVICES):
        result = compose.healthy(name)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
    # The healthchecks are not vacuous: the scheduler's health server answers only while the
    # scheduler runs, and `airflow jobs check` finds only a live job of that type on that host.
    *shell, script = compose.healthcheck("airflow-triggerer")
    wrong_host = [*shell, script.replace("${HOSTNAME}", "no-such-host")]
    env = compose.environment("airflow-triggerer")
    assert subprocess.run(wrong_host, env=env, capture_output=True, timeout=60).returncode != 0


def test_the_worker_and_flower_services_run_a_backfill(compose: ComposeStack, orch) -> None:
    # The session's worker stops taking tasks meanwhile: the compose worker runs this backfill.
    session_worker = [f"w1@{socket.gethostname()}"]
    orch.tasks.app.control.cancel_consumer("celery", destination=session_worker, reply=True, timeout=10)
    worker = compose.start("worker")
    flower = compose.start("flower", args=["--address=127.0.0.1"])  # compose publishes it on 127.0.0.1 only
    try:
        deadline = time.time() + 90
        while compose.healthy("worker").returncode != 0:
            assert worker.alive(), worker.tail()
            assert time.time() < deadline, worker.tail()
            time.sleep(1)
        log = worker.tail(400)
        # The worker's start-up check of Redis (docs/setup.md) found the compose Redis as required.
        assert "ready." in log and "Redis: " not in log and "could not check Redis" not in log, log

        # `docker compose exec worker backfill submit ...`: the CLI with the worker's environment.
        env = compose.environment("worker")
        args = ["submit", "etl_orders", "--start", "2019-07-01", "--end", "2019-07-02", "--batch", "daily", "--json"]
        submit = subprocess.run(["backfill", *args], env=env, capture_output=True, text=True, timeout=120)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        backfill_id = json.loads(submit.stdout)["backfill_id"]
        done = subprocess.run(["backfill", "status", backfill_id, "--wait", "--no-verify"], env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        ours = runs(orch.airflow, "etl_orders", backfill_id)
        assert sorted(r.state for r in ours) == ["success", "success"]
        assert backfill_id in worker.tail(2000) and backfill_id not in orch.worker.tail(2000)

        deadline = time.time() + 60
        while compose.healthy("flower").returncode != 0:
            assert flower.alive() and time.time() < deadline, flower.tail()
            time.sleep(1)
        url = f"http://127.0.0.1:{compose.ports['flower']}/api/workers?refresh=1"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        auth = base64.b64encode(compose.variables["FLOWER_BASIC_AUTH"].encode()).decode()
        req = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
        for _ in range(10):  # Flower asks every worker; a busy one may answer a round late
            with urllib.request.urlopen(req, timeout=60) as resp:
                workers = json.loads(resp.read())
            if any(name.startswith("celery@") for name in workers):
                break
            time.sleep(3)
        assert any(name.startswith("celery@") for name in workers), workers
    finally:
        compose.stack.stop(flower)
        compose.stack.stop(worker)
        orch.tasks.app.control.add_consumer("celery", destination=session_worker, reply=True, timeout=10)
    assert worker.popen.returncode == 0, worker.tail()  # a warm stop within the grace period
