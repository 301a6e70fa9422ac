"""The deployment files hold together without Docker or a cluster (neither runs here):
docker-compose.yaml is valid against the Compose spec (check-jsonschema ships its schema), every
file it refers to exists and no secret is written in it; the Kubernetes manifests under deploy/
are valid against Kubernetes' own schemas (kubernetes-validate, strict) and what the
kustomization, ConfigMap and Secret name exists and is read by the code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy"


def settings_read_by_the_code() -> set[str]:
    table = (REPO / "celeryconfig.py").read_text().split('"""')[1]
    return set(re.findall(r"^((?:BACKFILL|AIRFLOW)_[A-Z_]+)\s", table, flags=re.M)) | {"FLOWER_BASIC_AUTH"}


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    out = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", REPO / "docker-compose.yaml"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_refers_to_existing_files_and_holds_no_secret() -> None:
    text = (REPO / "docker-compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert {"redis", "postgres", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "worker", "flower"} <= set(services)  # fmt: skip
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert (context / "Dockerfile").exists(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), (name, source)
    dockerfile = (REPO / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for part in src.split():
            assert (REPO / part).exists(), part
    # Every secret comes from .env: the compose file names variables, never values.
    env_example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines() if "=" in line)
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))
    assert used <= set(env_example), used - set(env_example)
    for key in (
        "REDIS_PASSWORD",
        "POSTGRES_PASSWORD",
        "AIRFLOW_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "FLOWER_BASIC_AUTH",
        "GRAFANA_PASSWORD",
    ):
        assert key in used and env_example[key].split(":")[-1] not in text, key
    assert "appendonly yes" in str(services["redis"]["command"]) and "requirepass" in str(services["redis"]["command"])
    assert "$$REDIS_PASSWORD" in str(services["redis"]["command"])  # from its environment, not its command line
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_compose_services_are_healthchecked_ordered_and_local_only() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = compose["services"]
    for name, svc in services.items():
        if name != "airflow-init":
            assert "healthcheck" in svc or "healthcheck" in compose.get("x-airflow", {}), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        image = svc.get("image", "")
        assert not re.fullmatch(r"[a-z/]+(:\d+)?", image), (name, image)  # a floating tag: redis:7, postgres:16
    assert services["worker"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}
    assert services["worker"]["stop_grace_period"] == "60s" and "build" not in services["flower"]
    assert services["airflow-init"]["user"] == "0:0"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".git", ".env", ".venv", ".venv-airflow", ".stack"} <= set(ignored)


def test_the_redis_service_command_runs_with_its_password_and_aof(tmp_path: Path) -> None:
    """The compose file's Redis command, run here as a process (on a private port)."""
    import socket
    import time

    import redis as redis_py

    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    shell, flag, script = compose["services"]["redis"]["command"]
    script = script.replace("$$", "$")  # compose's escape
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = script.replace("redis-server -", f"redis-server - --port {port} --dir {tmp_path} --bind 127.0.0.1")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "REDIS_PASSWORD": 'p@ss:w/"rd\\'}
    # Its own process group: the shell's pipeline runs redis-server as a child, stopped with it.
    proc = subprocess.Popen(
        [shell, flag, script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 10
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "redis-server exited"
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.time() < deadline, "redis-server did not listen"
                time.sleep(0.05)
        client = redis_py.Redis(port=port, password=env["REDIS_PASSWORD"])
        assert client.config_get("appendonly")["appendonly"] == "yes"
        with __import__("pytest").raises(redis_py.AuthenticationError):
            redis_py.Redis(port=port, password="wrong").ping()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_kubernetes_manifests_are_valid() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = [DEPLOY / r for r in kustomization["resources"]]
    assert all(f.exists() for f in files), files
    out = subprocess.run([BIN / "kubernetes-validate", "--strict", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" passed for resource ") == 8, (
        out.stdout
    )  # namespace, configmap, 3 deployments, 2 services, PDB


def test_kubernetes_config_names_what_exists_and_what_the_code_reads() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = [d for r in kustomization["resources"] for d in yaml.safe_load_all((DEPLOY / r).read_text())]
    by_kind = {(d["kind"], d["metadata"]["name"]) for d in docs}
    (generator,) = kustomization["secretGenerator"]
    secret_env = DEPLOY / (generator["envs"][0] + ".example")
    secret_keys = {line.split("=")[0] for line in secret_env.read_text().splitlines() if "=" in line and line[0] != "#"}
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    known = settings_read_by_the_code()
    assert set(config["data"]) <= known and secret_keys <= known, (set(config["data"]) | secret_keys) - known
    assert {"BACKFILL_REDIS_URL", "AIRFLOW_PASSWORD", "FLOWER_BASIC_AUTH"} <= secret_keys
    assert {"BACKFILL_REDIS_URL_FILE", "AIRFLOW_PASSWORD_FILE"} <= set(config["data"])
    images = {i["name"] for i in kustomization["images"]}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["image"] in images
        refs = container["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
        # Secrets as files, not environment variables: the Secret is mounted, the ConfigMap
        # points each *_FILE setting at one of its keys.
        assert not any("secretRef" in r for r in refs)
        (volume,) = d["spec"]["template"]["spec"]["volumes"]
        assert volume["secret"]["secretName"] == generator["name"]
        (mount,) = container["volumeMounts"]
        assert mount["name"] == volume["name"] and mount["readOnly"] is True
        for key, path in config["data"].items():
            if key.endswith("_FILE"):
                assert path.startswith(mount["mountPath"] + "/") and path.rsplit("/", 1)[1] in secret_keys, key
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    service = next(d for d in docs if d["kind"] == "Service")
    assert ("Deployment", "backfill-flower") in by_kind and service["spec"]["ports"][0]["port"] == 5555
    assert "deploy/secret.env" in (REPO / ".gitignore").read_text()


def restricted_violations(pod: dict, where: str) -> list[str]:
    """The Pod Security Standards' "restricted" profile (kubernetes.io/docs/concepts/security/
    pod-security-standards, v1.30), checked on a pod spec: what the admission controller would
    reject in a namespace labelled ``pod-security.kubernetes.io/enforce: restricted``."""
    out: list[str] = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{where}: {key}")
    for vol in pod.get("volumes", []):
        allowed = {"name", "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}  # fmt: skip
        if set(vol) - allowed:
            out.append(f"{where}: volume {vol['name']} of a type restricted forbids")
    for c in pod.get("initContainers", []) + pod["containers"]:
        csc, name = c.get("securityContext", {}), f"{where}/{c['name']}"
        if csc.get("privileged"):
            out.append(f"{name}: privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot must be true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities must drop ALL (and add only NET_BIND_SERVICE)")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
        out += _baseline_options(csc, name)
    out += _baseline_options(psc, where)
    safe_sysctls = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                    "net.ipv4.tcp_keepalive_probes"}  # fmt: skip
    out += [f"{where}: sysctl {s['name']}" for s in psc.get("sysctls", []) if s["name"] not in safe_sysctls]
    return out


def _baseline_options(sc: dict, name: str) -> list[str]:
    """The rest of the profile (baseline's, which restricted includes): AppArmor, SELinux,
    /proc mount, Windows host processes."""
    out = []
    apparmor = sc.get("appArmorProfile", {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"{name}: appArmorProfile {apparmor}")
    selinux = sc.get("seLinuxOptions", {})
    if selinux.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t",
                                   "container_engine_t") or selinux.get("user") or selinux.get("role"):  # fmt: skip
        out.append(f"{name}: seLinuxOptions {selinux}")
    if sc.get("procMount") not in (None, "Default"):
        out.append(f"{name}: procMount {sc['procMount']}")
    if sc.get("windowsOptions", {}).get("hostProcess"):
        out.append(f"{name}: windowsOptions.hostProcess")
    return out


def test_kubernetes_pods_pass_pod_security_restricted() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = [d for r in kustomization["resources"] for d in yaml.safe_load_all((DEPLOY / r).read_text())]
    pods = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] == "Deployment"]
    assert len(pods) == 3
    assert [v for name, pod in pods for v in restricted_violations(pod, name)] == []
    # The checker itself rejects what restricted rejects.
    bad = {"containers": [{"name": "c", "securityContext": {"privileged": True}, "ports": [{"hostPort": 80}]}]}
    assert len(restricted_violations(bad, "bad")) == 6
    odd = {"procMount": "Unmasked", "seLinuxOptions": {"type": "spc_t"}, "appArmorProfile": {"type": "Unconfined"}}
    bad = {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
           "containers": [{"name": "c", "securityContext": odd}]}  # fmt: skip
    assert len(restricted_violations(bad, "bad")) == 4 + 3 + 1  # four as above, these three, the sysctl
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "backfill-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    flower = dict(pods)["backfill-flower"]["containers"][0]
    assert flower["resources"]["limits"]["memory"] and flower["livenessProbe"]


def test_kubernetes_examples_are_valid() -> None:
    """The HPA and Ingress examples (deploy/examples/, not applied by the kustomization) are valid
    and name what the kustomization creates."""
    files = sorted((DEPLOY / "examples").glob("*.yaml"))
    out = subprocess.run([BIN / "kubernetes-validate", "--strict", *files], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count(" passed for resource ") == 2, out.stdout + out.stderr
    hpa = yaml.safe_load((DEPLOY / "examples" / "hpa.yaml").read_text())
    ingress = yaml.safe_load((DEPLOY / "examples" / "flower-ingress.yaml").read_text())
    assert hpa["spec"]["scaleTargetRef"]["name"] == "backfill-worker"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "backfill-flower", "port": {"name": "http"}}
