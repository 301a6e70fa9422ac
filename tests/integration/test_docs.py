"""The docs cannot drift from the code: every shell command shown in README.md and docs/*.md is
run here against the real stack, or is named below with the test that runs it; any other
command fails this check. The configuration table must list exactly what the code reads."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from backfill.cli import cli
from backfill.settings import Settings
from tests.integration.helpers import wait_done

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLE_ID = "bf-20240401-101500-1a2b3c"

# Commands run elsewhere, with where.
ELSEWHERE = {
    "make demo": "tests/integration/test_demo.py runs scripts/demo.py, the body of `make demo`",
    "make test": ".ci/run runs it; this very suite is its body",
    "celery -A workers worker -l info": "devstack.Stack.start_worker, used by every integration test",
    "celery -A workers worker -l info -c 4": "devstack.Stack.start_worker (-c is its concurrency)",
    "celery -A workers flower --port=5555": "devstack.Stack.start_flower, used by the demo",
    "pip install .": "scripts/bootstrap.sh installs the project the same way (editable)",
    # Commands that change a running backfill or the shared cap are run by the tests made for them.
    "backfill cancel ID": "tests/integration/test_operate.py (cancel, then resume)",
    "backfill cancel ID --fail-running": "tests/integration/test_operate.py::test_cancel_stops_only_its_backfill...",
    "celery -A workers control revoke_by_stamped_headers backfill_id=ID": (
        "tests/integration/test_operate.py::test_a_revoke_from_the_celery_cli_cancels_the_backfill_too"
    ),
    "backfill resume ID": "tests/integration/test_operate.py (two resume tests)",
    "backfill resume ID --on-conflict skip": "tests/integration/test_core.py::test_logical_date_rule_and_reprocess",
    "backfill report ID --html report.html": "tests/integration/test_operate.py::test_report_... (in Chromium)",
    "backfill throttle --global 4": "tests/integration/test_operate.py::test_global_cap_... (with 1)",
    "backfill throttle --global off": "tests/integration/test_operate.py::test_global_cap_...",
    # Docker and Kubernetes do not run here: tests/unit/test_deploy.py validates what they would read.
    "cp .env.example .env": "tests/unit/test_deploy.py checks .env.example holds every variable the compose file uses",
    "docker compose up -d --scale worker=2": "tests/unit/test_deploy.py (Compose spec schema, files, secrets)",
    "docker compose --profile monitoring up -d --scale worker=2": (
        "tests/integration/test_observability.py runs the profile's exporter and prometheus services as processes"
    ),
    "promtool test rules deploy/monitoring/alerts_test.yml": "tests/unit/test_monitoring.py",
    "backfill metrics --port 9809": "tests/integration/test_observability.py (the exporter service's command)",
    (
        "docker compose exec worker backfill submit etl_orders etl_users --start 2024-01-01 --end 2024-03-01 "
        "--batch weekly"
    ): "the same `backfill submit` runs against the stack in this file (README)",
    "cp deploy/secret.env.example deploy/secret.env": "tests/unit/test_deploy.py: the example names real settings",
    "kubectl apply -k deploy/": "tests/unit/test_deploy.py (kubernetes-validate --strict, kustomization references)",
    "kubectl -n backfill scale deployment/backfill-worker --replicas=4": "tests/unit/test_deploy.py (the Deployment)",
    "docker build -t registry.example.com/backfill-orchestrator:0.1.0 .": "tests/unit/test_deploy.py (the Dockerfile's "
    "COPY sources exist; no Docker engine here)",
    "docker push registry.example.com/backfill-orchestrator:0.1.0": "by hand, on a Docker host",
    (
        "cd deploy && kustomize edit set image backfill-orchestrator=registry.example.com/backfill-orchestrator:0.1.0 "
        "&& cd .."
    ): "tests/unit/test_deploy.py (the kustomization's image name is the Deployments')",
    "kubectl -n backfill port-forward service/backfill-flower 5555:5555": "tests/unit/test_deploy.py (the Service)",
    "python -m experiments.airflow_features --out docs/experiments/airflow-features.md": (
        "tests/integration/test_experiments.py runs the same experiments against the session's Airflow"
    ),
    "make bench": "by hand (about 20 minutes, bench/); test_bench_cli below runs its CLI, "
    "tests/unit/test_bench_standin.py its stand-in server",
    "python -m bench b1 b2 --rounds 5": "by hand, like make bench",
    "make faults": "by hand (about 8 minutes): tests/unit/test_faults.py runs every case, 300 schedules and this CLI",
    ".venv/bin/python -m faults --schedules 10000": "make faults; tests/unit/test_faults.py runs the CLI on fewer",
    "make compat": "by hand (about 10 minutes per Airflow version): scripts/compat.py writes docs/compatibility.md",
    ".venv/bin/python scripts/compat.py --versions 3.1": "by hand, like make compat",
}


def shell_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.splitlines():
                cmd = line.split(" #")[0].strip()
                if cmd and not cmd.startswith(("export ", "#")):
                    found.append((doc.name, cmd))
    return found


def test_every_documented_command_is_known():
    unknown = [
        (doc, cmd)
        for doc, cmd in shell_commands()
        if cmd not in ELSEWHERE and not cmd.startswith(("backfill ", "celery -A workers call "))
    ]
    assert unknown == []


def test_documented_commands_run_against_the_stack(orch):
    env = orch.stack.env()
    real_id = None
    for doc, cmd in shell_commands():
        if cmd in ELSEWHERE:
            continue
        if cmd.startswith("celery -A workers call "):
            out = subprocess.run(
                [Path(sys.executable).parent / "celery", *shlex.split(cmd)[1:]],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert out.returncode == 0, f"{doc}: {cmd}\n{out.stderr}"
            summary = orch.tasks.app.AsyncResult(out.stdout.strip()).get(timeout=60)
            assert wait_done(orch.record, summary["backfill_id"], timeout=300)["state"] == "succeeded"
            continue
        args = shlex.split(cmd)[1:]
        if real_id:
            args = [real_id if a in ("ID", EXAMPLE_ID) else a for a in args]
        if args[0] == "submit":
            args.append("--json")
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"{doc}: {cmd}\n{result.output}"
        if args[0] == "submit":
            real_id = json.loads(result.output)["backfill_id"]
            assert wait_done(orch.record, real_id, timeout=300)["state"] == "succeeded"
    assert real_id is not None, "the docs show no `backfill submit`"


def test_configuration_table_matches_the_code():
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", (REPO / "docs" / "setup.md").read_text(), flags=re.M))
    in_celeryconfig = set(re.findall(r"^([A-Z_]{6,})\s{2,}", (REPO / "celeryconfig.py").read_text(), flags=re.M))
    read_by_code = {f"BACKFILL_{f.name.upper()}" for f in fields(Settings) if f.name not in ("airflow",)}
    read_by_code |= {"AIRFLOW_API_URL", "AIRFLOW_USERNAME", "AIRFLOW_PASSWORD", "AIRFLOW_PASSWORD_FILE"}
    read_by_code |= {"AIRFLOW_TIMEOUT", "AIRFLOW_READ_ATTEMPTS", "AIRFLOW_TOKEN", "AIRFLOW_TOKEN_FILE"}
    read_by_code |= {"AIRFLOW_CA_BUNDLE"}
    read_by_code |= {"AIRFLOW_VERIFY_SSL", "AIRFLOW_EXTRA_HEADERS", "BACKFILL_REDIS_URL_FILE"}
    read_by_code |= {"BACKFILL_NOTIFY_URL_FILE"}
    read_by_code |= {"BACKFILL_METRICS_PORT"}  # read by workers/metrics.py, before any Settings
    assert documented == read_by_code
    assert in_celeryconfig == read_by_code
    # And every documented default is the code's default.
    defaults = Settings()
    table = (REPO / "docs" / "setup.md").read_text()
    for name, default in re.findall(r"^\| `BACKFILL_([A-Z_]+)` \| `([^`]+)` \|", table, re.M):
        value = getattr(defaults, name.lower())
        assert (float(default) == value) if isinstance(value, (int, float)) else (default == value), name


def test_bench_cli():
    out = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "b1" in out.stdout and "--write-docs" in out.stdout, out.stderr
    # The arguments `make bench` and docs/performance.md pass.
    from bench.__main__ import parse_args

    assert parse_args(["--write-docs"]).which == ["b1", "b2", "b3", "b4", "b5"]
    assert (parse_args(["b1", "b2", "--rounds", "5"]).which, parse_args([]).rounds) == (["b1", "b2"], 7)
    bad = subprocess.run([sys.executable, "-m", "bench", "b9"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "invalid choice: 'b9'" in bad.stderr
