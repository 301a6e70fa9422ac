"""A local stack for the demo and the tests: redis-server, ``airflow standalone``, Celery
workers and Flower, each on a private port, each stopped by its pid.

Not part of the orchestrator (not installed with it): the demo, the tests, the benchmarks and
the experiments use it from the repository. Airflow lives in its own virtualenv (by default
``.venv-airflow`` next to the repo, see scripts/bootstrap.sh): it is not a dependency of the
orchestrator, only of this stack. The tests' session stack is docker-compose.yaml's services
(tests/compose_stack.py), built on this module's processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DAGS = REPO / "examples" / "dags"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def airflow_bin() -> Path:
    explicit = os.environ.get("BACKFILL_AIRFLOW_BIN")
    if explicit:
        return Path(explicit)
    return REPO / ".venv-airflow" / "bin" / "airflow"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the process's whole group (airflow standalone and celery have children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            self.signal(signal.SIGKILL)  # leftover children, if any
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(10)
        self.signal(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    root: Path
    procs: list[Proc] = field(default_factory=list)
    scratch: list[Path] = field(default_factory=list)  # folders outside root, removed by stop_all
    redis_url: str = ""
    airflow_url: str = ""
    airflow_user: str = "admin"
    airflow_password: str = ""
    _airflow: Proc | None = field(default=None, repr=False)
    _airflow_args: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.root / f"{name}.log"
        fh = open(log, "ab")  # noqa: SIM115 - owned by the child
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    # -- redis ----------------------------------------------------------------------------

    def start_redis(self, port: int | None = None, *, appendonly: bool = False, password: str | None = None) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: run scripts/bootstrap.sh (apt-get install -y redis-server)")
        port = port or free_port()
        data = self.root / f"redis-{port}"
        data.mkdir(exist_ok=True)
        cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
        cmd += ["--appendonly", "yes" if appendonly else "no"]
        if password:
            cmd += ["--requirepass", password]
        self._spawn(f"redis-{port}", cmd)
        auth = f":{password}@" if password else ""
        self.redis_url = f"redis://{auth}127.0.0.1:{port}/0"
        wait_for(lambda: tcp_open(port), 20, f"redis-server on :{port}")
        return self.redis_url

    # -- postgresql -----------------------------------------------------------------------

    def start_postgres(self, port: int | None = None) -> str:
        """A private PostgreSQL (trust auth on 127.0.0.1) with an ``airflow`` database; returns
        its SQLAlchemy URL. PostgreSQL refuses to run as root: as root it runs as ``postgres``."""
        bindir = postgres_bindir()
        port = port or free_port()
        data = self.root / f"postgres-{port}"
        run_as: list[str] = []
        if os.geteuid() == 0:
            run_as = ["runuser", "-u", "postgres", "--"]
            # The postgres user must reach its data directory: pytest's temporary folders are
            # private to root, so it lives in a folder of its own, removed by stop_all.
            data = Path(tempfile.mkdtemp(prefix=f"backfill-postgres-{port}-"))
            self.scratch.append(data)
            os.chmod(data, 0o755)
            data = data / "data"
            data.mkdir()
            shutil.chown(data, "postgres", "postgres")
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        subprocess.run([*run_as, *initdb], check=True, capture_output=True)
        cmd = [*run_as, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(data)]
        self._spawn(f"postgres-{port}", cmd)
        wait_for(lambda: tcp_open(port), 30, f"postgres on :{port}")
        createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "airflow"]
        wait_for(lambda: subprocess.run(createdb, capture_output=True).returncode == 0, 30, "createdb airflow")
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/airflow"

    # -- airflow --------------------------------------------------------------------------

    def start_airflow(
        self,
        port: int | None = None,
        *,
        dags_folder: Path = EXAMPLE_DAGS,
        expect_dags: int = 1,
        timeout: float = 240,
        database_url: str | None = None,
    ) -> str:
        """``airflow standalone`` on SQLite (WAL), or on ``database_url`` (see ``start_postgres``)."""
        exe = airflow_bin()
        if not exe.exists():
            raise RuntimeError(f"{exe} not found: run scripts/bootstrap.sh (it installs apache-airflow==3.3.*)")
        port = port or free_port()
        home = self.root / "airflow"
        home.mkdir(exist_ok=True)
        self.airflow_password = self.airflow_password or secrets.token_urlsafe(12)
        pwfile = home / "passwords.json"
        pwfile.write_text(json.dumps({self.airflow_user: self.airflow_password}))
        # SQLite in its default journal mode lets readers block writers; with dozens of runs
        # in flight and polled, the scheduler died on "database is locked". WAL (a property
        # of the file, kept by Airflow's migrations) lets reads and a write go together.
        with sqlite3.connect(home / "airflow.db") as db:
            db.execute("PRAGMA journal_mode=WAL")
        env = {
            **os.environ,
            "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "2",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.airflow_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pwfile),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            # Airflow 3.0's default issuer is None, which PyJWT >= 2.10 refuses: /auth/token
            # answered 500 "Issuer (iss) must be a string" (seen with 3.0.6 installed from PyPI).
            "AIRFLOW__API_AUTH__JWT_ISSUER": "airflow",
        }
        if database_url:
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = database_url
        env.pop("PYTHONPATH", None)
        self._airflow_args = {"port": port, "dags_folder": dags_folder, "expect_dags": expect_dags,
                              "timeout": timeout, "database_url": database_url}  # fmt: skip
        self._airflow = self._spawn("airflow", [str(exe), "standalone"], env)
        self.airflow_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: self._airflow_dag_count() >= expect_dags, timeout, f"airflow standalone on :{port}")
        return self.airflow_url

    def _airflow_dag_count(self) -> int:
        try:
            token = _post_json(
                f"{self.airflow_url}/auth/token", {"username": self.airflow_user, "password": self.airflow_password}
            )["access_token"]
            health = _get_json(f"{self.airflow_url}/api/v2/monitor/health", token)
            if health.get("scheduler", {}).get("status") != "healthy":
                return 0
            return int(_get_json(f"{self.airflow_url}/api/v2/dags?limit=1", token)["total_entries"])
        except (OSError, ValueError, KeyError):
            return 0

    # -- orchestrator processes -----------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for orchestrator processes (workers, CLI, Flower) talking to this stack."""
        env = {
            **os.environ,
            "BACKFILL_REDIS_URL": self.redis_url,
            "AIRFLOW_API_URL": self.airflow_url,
            "AIRFLOW_USERNAME": self.airflow_user,
            "AIRFLOW_PASSWORD": self.airflow_password,
            "PYTHONPATH": str(REPO),
        }
        env.update(extra)
        return env

    def start_worker(self, name: str = "w1", *, concurrency: int = 2, app: str = "workers", **env: str) -> Proc:
        """``app``: ``workers``, or a module that adds to its app (the benchmarks' floor task)."""
        cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "-l", "info"]
        cmd += ["-c", str(concurrency), "-n", f"{name}@%h", "--without-mingle", "--without-gossip"]
        proc = self._spawn(f"worker-{name}", cmd, self.env(**env))
        wait_for(lambda: "ready." in proc.tail(200) or not proc.alive(), 60, f"celery worker {name}")
        if not proc.alive():
            raise RuntimeError(f"worker {name} died:\n{proc.tail()}")
        return proc

    def start_flower(self, port: int = 5555, **env: str) -> Proc:
        cmd = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"]
        proc = self._spawn("flower", cmd, self.env(**env))
        wait_for(lambda: tcp_open(port) or not proc.alive(), 60, f"flower on :{port}")
        # Workers send task events only when asked (celeryconfig.py); Flower asks every 5 s.
        # Ask now, so that what runs from here on is seen.
        control = [sys.executable, "-m", "celery", "-A", "workers", "control", "enable_events"]
        subprocess.run(control, env=self.env(**env), cwd=REPO, capture_output=True, timeout=60)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)
        self.scratch.clear()


def postgres_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("postgres") or shutil.which("initdb")
    if found is None:
        raise RuntimeError("PostgreSQL not found: apt-get install -y postgresql")
    return Path(found).resolve().parent


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _post_json(url: str, body: dict[str, str]) -> dict[str, object]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _get_json(url: str, token: str) -> dict[str, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise OSError(str(exc)) from None
