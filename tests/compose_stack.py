"""docker-compose.yaml's services, run as processes on this machine: the test session's stack.

Docker images cannot be pulled here, so the compose file is proven the next best way: every
service's command, environment and healthcheck is read from docker-compose.yaml and run as a
process, in the order its ``depends_on`` conditions give, and the whole test suite then runs
against that stack. What is translated, and nothing else:

- host names and container ports: ``redis:6379``, ``postgres:5432``, ``airflow-apiserver:8080``
  and each healthcheck's ``localhost:PORT`` become ``127.0.0.1`` and a private port (the
  api-server's through ``AIRFLOW__API__PORT``, the scheduler's health server through
  ``AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT``, Redis's on its command line and
  ``redis-cli -p``, Flower's on its command line, PostgreSQL's through ``PGHOST``/``PGPORT``);
  everything listens on 127.0.0.1, as the compose file publishes it;
- paths: the image's ``/opt/airflow`` (``AIRFLOW_HOME``) is a private folder whose ``dags`` is
  the compose file's bind mount (``examples/dags``); ``airflow``, ``python``, ``celery`` are the
  local virtualenvs' (Airflow's for the Airflow services, the orchestrator's for the others);
- monitoring (the ``monitoring`` profile): the worker's metrics port (``BACKFILL_METRICS_PORT``)
  and the exporter's are private ports on 127.0.0.1; ``prometheus`` is the system's binary (the
  image's entrypoint), its ``/etc/prometheus`` a private copy of ``deploy/monitoring`` whose
  ``prometheus.yml`` names those ports, the ``worker`` job's DNS discovery (Docker's DNS gives
  every replica's address) becoming the one local worker's address;
- ``HOSTNAME``: the name each program records (Airflow's ``get_hostname()`` for its jobs,
  Celery's host name for its node), as a container's are its own;
- not root: the init's ``chown`` to the image's airflow user is a no-op;
- the images themselves: PostgreSQL runs from the system's binaries (``Stack.start_postgres``,
  trust authentication on 127.0.0.1, a role ``airflow`` owning database ``airflow``), not from
  the ``postgres`` image's entrypoint;
- timings, for a quick suite (``SPEED``): the scheduler's heartbeat, the DAG folder's refresh,
  two api-server workers, healthchecks retried every second instead of their interval.

Docker alone can still show: the images build and start, the named volumes' ownership, the
network's names, ``restart``, ``stop_grace_period`` and ``init`` at work.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack import REPO, Proc, Stack, airflow_bin, free_port, postgres_bindir, wait_for

COMPOSE = REPO / "docker-compose.yaml"
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
# Only to make the suite quick; none of them changes what a service does.
SPEED = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__API__WORKERS": "2",
}


def dotenv() -> dict[str, str]:
    """What a user's .env holds: .env.example's keys, each with a fresh value."""
    keys = [line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines() if "=" in line]
    env = {key: "" for key in keys if not key.startswith("#")}
    for key in env:
        env[key] = secrets.token_urlsafe(24 if "SECRET" not in key else 48)
    env["AIRFLOW_USERNAME"] = "admin"
    env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    env.pop("AIRFLOW_IMAGE", None)
    return env


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if name in variables and variables[name] != "":
            return variables[name]
        if op == ":?":
            raise KeyError(f"compose: {name} is required: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", one, value)


@dataclass
class ComposeStack:
    """Runs docker-compose.yaml's services as processes of ``stack`` (which stops them all)."""

    stack: Stack
    variables: dict[str, str] = field(default_factory=dotenv)
    ports: dict[str, int] = field(default_factory=dict)
    home: Path = field(init=False)
    spec: dict[str, Any] = field(init=False)
    started: list[str] = field(default_factory=list)  # services, in the order they were started
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = yaml.safe_load(COMPOSE.read_text())
        self.home = self.stack.root / "opt-airflow"
        (self.home / "auth").mkdir(parents=True, exist_ok=True)
        if not (self.home / "dags").exists():
            (self.home / "dags").symlink_to(REPO / "examples" / "dags")
        for name in (
            "redis",
            "postgres",
            "airflow-apiserver",
            "airflow-scheduler-health",
            "flower",
            "worker-metrics",
            "exporter",
            "prometheus",
        ):
            self.ports.setdefault(name, free_port())

    # -- reading the compose file ---------------------------------------------------------

    def service(self, name: str) -> dict[str, Any]:
        return dict(self.spec["services"][name])

    def translate(self, text: str) -> str:
        p = self.ports
        text = interpolate(text, self.variables)
        for host, port in (("redis:6379", "redis"), ("postgres:5432", "postgres"),
                           ("airflow-apiserver:8080", "airflow-apiserver"), ("localhost:8080", "airflow-apiserver"),
                           ("localhost:8974", "airflow-scheduler-health")):  # fmt: skip
            text = text.replace(host, f"127.0.0.1:{p[port]}")
        text = text.replace("('localhost', 9809)", f"('127.0.0.1', {p['exporter']})").replace(
            "localhost:9090", f"127.0.0.1:{p['prometheus']}"
        )
        text = text.replace("/etc/prometheus", str(self.stack.root / "prometheus-etc"))
        text = text.replace("--storage.tsdb.path=/prometheus", f"--storage.tsdb.path={self.stack.root / 'prometheus'}")
        text = text.replace("--web.listen-address=:9090", f"--web.listen-address=127.0.0.1:{p['prometheus']}")
        text = text.replace("redis-cli ", f"redis-cli -p {p['redis']} ")
        text = text.replace("('localhost', 5555)", f"('127.0.0.1', {p['flower']})").replace(
            "--port=5555", f"--port={p['flower']}"
        )
        return text.replace("/opt/airflow", str(self.home))

    def environment(self, name: str) -> dict[str, str]:
        svc = self.service(name)
        env = {k: self.translate(str(v)) for k, v in (svc.get("environment") or {}).items()}
        path = [str(airflow_bin().parent)] if name.startswith("airflow") else [str(REPO / ".venv" / "bin")]
        if name == "postgres":
            path.insert(0, str(postgres_bindir()))
        if os.geteuid() != 0:
            path.insert(0, str(self._no_chown()))
        base = {"PATH": os.pathsep.join([*path, "/usr/local/bin", "/usr/bin", "/bin"]), "HOSTNAME": self.hostname(name),
                "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}  # fmt: skip
        if name.startswith("airflow"):
            base |= {"AIRFLOW_HOME": str(self.home), "AIRFLOW__API__HOST": "127.0.0.1",
                     "AIRFLOW__API__PORT": str(self.ports["airflow-apiserver"]),
                     "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                     "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT":
                         str(self.ports["airflow-scheduler-health"]), **SPEED}  # fmt: skip
        elif name == "postgres":
            base |= {"PGHOST": "127.0.0.1", "PGPORT": str(self.ports["postgres"])}
        else:
            base["PYTHONPATH"] = str(REPO)
        if "BACKFILL_METRICS_PORT" in env:
            env |= {"BACKFILL_METRICS_PORT": str(self.ports["worker-metrics"]), "BACKFILL_METRICS_ADDR": "127.0.0.1"}
        return base | env

    def hostname(self, name: str) -> str:
        """A container's HOSTNAME is the name its programs record: here, the one each records:
        Airflow's for its jobs (``airflow jobs check --hostname``), Celery's for its node name."""
        return self._airflow_hostname if name.startswith("airflow") else socket.gethostname()

    @functools.cached_property
    def _airflow_hostname(self) -> str:
        code = "from airflow.utils.net import get_hostname; print(get_hostname())"
        python = airflow_bin().parent / "python"
        env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(self.home), "HOME": os.environ.get("HOME", "/root")}
        out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        lines = out.stdout.strip().splitlines()
        return lines[-1] if out.returncode == 0 and lines else socket.gethostname()

    def _no_chown(self) -> Path:
        """Not root: the init's ``chown`` to the image's airflow user (uid 50000) cannot run here;
        a ``chown`` that does nothing stands in (the files are already this user's)."""
        shim = self.stack.root / "no-chown"
        shim.mkdir(exist_ok=True)
        (shim / "chown").write_text("#!/bin/sh\nexit 0\n")
        (shim / "chown").chmod(0o755)
        return shim

    def command(self, name: str) -> list[str]:
        svc = self.service(name)
        command = [self.translate(str(c)) for c in svc.get("command") or []]
        if isinstance(svc.get("command"), str):
            command = shlex.split(self.translate(svc["command"]))
        entrypoint = svc.get("entrypoint")
        if entrypoint:
            return [*shlex.split(entrypoint), *command]
        if name.startswith("airflow"):  # the image's entrypoint runs `airflow <command>`
            return [str(airflow_bin()), *command]
        if name == "prometheus":  # the image's entrypoint is the prometheus binary
            self._prometheus_etc()
            return [shutil.which("prometheus") or "prometheus", *command]
        if name == "exporter":
            port = command.index("--port") + 1
            command[port] = str(self.ports["exporter"])
            return [*command, "--addr", "127.0.0.1"]  # compose publishes nothing of it
        return command

    def _prometheus_etc(self) -> None:
        """deploy/monitoring as the prometheus service mounts it, with this stack's addresses."""
        etc = self.stack.root / "prometheus-etc"
        shutil.rmtree(etc, ignore_errors=True)
        shutil.copytree(REPO / "deploy" / "monitoring", etc)
        config = yaml.safe_load((etc / "prometheus.yml").read_text())
        for job in config["scrape_configs"]:
            if job["job_name"] == "backfill-workers":
                (dns,) = job.pop("dns_sd_configs")
                assert dns["names"] == ["worker"] and dns["port"] == 9808, dns
                job["static_configs"] = [{"targets": [f"127.0.0.1:{self.ports['worker-metrics']}"]}]
            else:
                (static,) = job["static_configs"]
                assert static["targets"] == ["exporter:9809"], static
                static["targets"] = [f"127.0.0.1:{self.ports['exporter']}"]
        # Quick scrapes and rule evaluations, for a quick suite (as SPEED does for Airflow).
        config["global"] = {"scrape_interval": "2s", "evaluation_interval": "2s"}
        (etc / "prometheus.yml").write_text(yaml.safe_dump(config))

    def healthcheck(self, name: str) -> list[str]:
        test = self.service(name)["healthcheck"]["test"]
        kind, *args = test
        if kind == "CMD-SHELL":
            return ["sh", "-c", self.translate(args[0])]
        return [self.translate(a) for a in args]

    def healthy(self, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.healthcheck(name), env=self.environment(name), cwd=REPO, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    def _wait_healthy(self, name: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs.get(name)
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{name} exited:\n{proc.tail()}")
            result = self.healthy(name)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not healthy after {timeout:.0f} s: {result.stdout}{result.stderr}")
            time.sleep(1)

    def _dependencies_met(self, name: str) -> None:
        """What compose checks before starting ``name``; each dependency was started before it."""
        for dep, cond in (self.service(name).get("depends_on") or {}).items():
            assert dep in self.started, f"{name} depends on {dep}, not started"
            condition = cond["condition"]
            if condition == "service_completed_successfully":
                assert self.procs[dep].popen.wait(600) == 0, f"{dep} failed:\n{self.procs[dep].tail()}"
            elif condition == "service_healthy":
                self._wait_healthy(dep)

    def start(self, name: str, *, extra_env: dict[str, str] | None = None, args: list[str] | None = None) -> Proc:
        self._dependencies_met(name)
        env = self.environment(name) | (extra_env or {})
        proc = self.stack._spawn(name, [*self.command(name), *(args or [])], env)
        self.procs[name] = proc
        self.started.append(name)
        return proc

    # -- the services -----------------------------------------------------------------------

    def start_redis(self) -> str:
        """The redis service's own command (its password from its environment, AOF on)."""
        data = self.stack.root / "redis-compose"
        data.mkdir(exist_ok=True)
        # The container's Redis listens on 6379 in /data; here on a private port and folder.
        shell, flag, script = self.command("redis")
        assert "redis-server -" in script, script  # the config is read from stdin, options follow
        script = script.replace("redis-server -", f"redis-server - --port {self.ports['redis']} --dir {data} "
                                "--bind 127.0.0.1")  # fmt: skip
        self.started.append("redis")
        self.procs["redis"] = self.stack._spawn("redis", [shell, flag, script], self.environment("redis"))
        self._wait_healthy("redis", 30)
        self.stack.redis_url = self.translate(self.service("worker")["environment"]["BACKFILL_REDIS_URL"])
        return self.stack.redis_url

    def start_postgres(self) -> None:
        """PostgreSQL from the system's binaries, with the image's user and database."""
        self.stack.start_postgres(self.ports["postgres"])
        self.procs["postgres"] = self.stack.procs[-1]
        psql = [str(postgres_bindir() / "psql"), "-h", "127.0.0.1", "-p", str(self.ports["postgres"]), "-U",
                "postgres", "-v", "ON_ERROR_STOP=1", "-c"]  # fmt: skip
        password = self.variables["POSTGRES_PASSWORD"]
        subprocess.run([*psql, f"CREATE ROLE airflow LOGIN PASSWORD '{password}'"], check=True, capture_output=True)
        subprocess.run([*psql, "ALTER DATABASE airflow OWNER TO airflow"], check=True, capture_output=True)
        subprocess.run([*psql, "GRANT ALL ON SCHEMA public TO airflow"], check=True, capture_output=True)
        self.started.append("postgres")
        wait_for(lambda: self.healthy("postgres").returncode == 0, 30, "the postgres service's healthcheck")

    def start_airflow(self, *, expect_dags: int, timeout: float = 300) -> str:
        """airflow-init, then the api-server, scheduler, dag-processor and triggerer."""
        self.start("airflow-init")
        for name in AIRFLOW_SERVICES:
            self.start(name)
        for name in AIRFLOW_SERVICES:
            self._wait_healthy(name, timeout)
        self.stack.airflow_url = f"http://127.0.0.1:{self.ports['airflow-apiserver']}"
        self.stack.airflow_user = self.variables["AIRFLOW_USERNAME"]
        self.stack.airflow_password = self.variables["AIRFLOW_PASSWORD"]
        wait_for(lambda: self.stack._airflow_dag_count() >= expect_dags, timeout, "the DAGs in Airflow")
        return self.stack.airflow_url

    def up(self, *, expect_dags: int) -> None:
        self.start_redis()
        self.start_postgres()
        self.start_airflow(expect_dags=expect_dags)
