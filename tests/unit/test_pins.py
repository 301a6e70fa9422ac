"""What workers/ relies on in celery, kombu and billiard, checked against the installed versions:
an upgrade that breaks a reliance fails here, loudly, naming it (pyproject.toml pins the minor
versions tested; requirements.lock every version)."""

from __future__ import annotations

import hashlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["celery", "kombu", "billiard"])
def test_installed_versions_are_the_pinned_minor_versions(package: str) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    low, high = re.search(rf'"{package}(?:\[\w+\])?>=([\d.]+),<([\d.]+)"', pyproject).groups()  # type: ignore[union-attr]
    have = tuple(int(p) for p in version(package).split(".")[:2])
    assert tuple(int(p) for p in low.split(".")[:2]) <= have < tuple(int(p) for p in high.split(".")[:2]), (
        f"{package} {version(package)} is outside the tested range >={low},<{high}: run make test with it, "
        "then update pyproject.toml and requirements.lock"
    )
    lock = (ROOT / "requirements.lock").read_text()
    assert f"{package}=={version(package)}" in lock, f"{package} {version(package)} is not the locked version"


def test_kombu_redis_reads_the_unacked_restore_options() -> None:
    """celeryconfig sets unacked_restore_interval/throttle so a dead worker's windows come back
    about 1.1 x the visibility timeout after; kombu < 5.5 ignored them (about 100 s later)."""
    from kombu.transport import redis as kombu_redis

    options = kombu_redis.Channel.from_transport_options
    assert "unacked_restore_interval" in options and "unacked_restore_throttle" in options, (
        "kombu's Redis channel no longer reads unacked_restore_interval/throttle (celeryconfig.py relies on them)"
    )


def test_the_transport_subclass_still_overrides_a_method_kombu_calls() -> None:
    """workers/transport.py replaces Channel._create_client; kombu must still build clients there."""
    from kombu.transport import redis as kombu_redis

    source = inspect.getsource(kombu_redis.Channel)
    assert "def _create_client(self, asynchronous=False)" in source and "self._create_client(" in source, (
        "kombu's Redis Channel no longer creates its clients in _create_client (workers/transport.py relies on it)"
    )


def test_the_next_link_is_published_as_celerys_tracer_does() -> None:
    """CeleryDelivery.hand_on (workers/tasks.py) publishes a chain's next link itself, as the
    tracer would: the request's chain is reversed, its next link is the last element."""
    from celery.app import trace

    source = inspect.getsource(trace)
    assert "signature(chain[-1], app=app)" in source and "chain=chain[:-1]" in source, (
        "celery's tracer no longer publishes chain[-1] with chain=chain[:-1]: update CeleryDelivery.hand_on"
    )


def test_a_retry_that_cannot_be_published_raises_reject() -> None:
    """workers/tasks.py _again turns that Reject into a requeue (the window must not be lost)."""
    from celery.app.task import Task

    assert "raise Reject(exc, requeue=False)" in inspect.getsource(Task.retry), (
        "celery's Task.retry no longer raises Reject when the retry cannot be published: update tasks._again"
    )


def test_the_tracer_still_builds_the_exception_info_lean_retry_replaces() -> None:
    from celery.app import trace

    assert hasattr(trace, "ExceptionInfo"), "celery.app.trace.ExceptionInfo is gone: workers/lean_retry.py is void"


def test_the_local_airflow_is_installed_under_its_constraints() -> None:
    """Airflow is installed as its maintainers say: with a constraints file (requirements-airflow.lock,
    a freeze of the install the suite passed with), which holds the PostgreSQL drivers too."""
    lock = dict(
        line.split("==", 1) for line in (ROOT / "requirements-airflow.lock").read_text().splitlines() if "==" in line
    )
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    spec = re.search(r"AIRFLOW_SPEC:-apache-airflow==([\d.]+)\.\*", bootstrap).group(1)  # type: ignore[union-attr]
    assert lock["apache-airflow"].startswith(spec + "."), (lock["apache-airflow"], spec)
    assert {"psycopg2-binary", "asyncpg", "apache-airflow-core", "apache-airflow-task-sdk"} <= lock.keys()
    assert '-c "$AIRFLOW_CONSTRAINTS" "$AIRFLOW_SPEC"' in bootstrap
    airflow_python = ROOT / ".venv-airflow" / "bin" / "python"
    stamp = ROOT / ".venv-airflow" / ".stamp"
    lock_hash = hashlib.sha256((ROOT / "requirements-airflow.lock").read_bytes()).hexdigest()[:16]
    if airflow_python.exists() and stamp.exists() and stamp.read_text().split()[-1] == lock_hash:
        import subprocess

        code = "from importlib.metadata import version as v; print(v('apache-airflow'), v('fastapi'), v('cadwyn'))"
        installed = subprocess.run([airflow_python, "-c", code], capture_output=True, text=True, check=True).stdout
        assert installed.split() == [lock["apache-airflow"], lock["fastapi"], lock["cadwyn"]]
