"""The deployment files hold together without Docker or a cluster (neither runs here):
docker-compose.yaml is valid against the Compose spec (check-jsonschema ships its schema), every
file it refers to exists and no secret is written in it; the Kubernetes manifests under deploy/
are valid against Kubernetes' own schemas (kubernetes-validate, strict) and what the
kustomization, ConfigMap and Secret name exists and is read by the code."""

from __future__ import annotations

import re
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
    for key in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "AIRFLOW_PASSWORD", "AIRFLOW_JWT_SECRET", "FLOWER_BASIC_AUTH"):
        assert key in used and env_example[key].split(":")[-1] not in text, key
    assert "--appendonly" in str(services["redis"]["command"]) and "--requirepass" in str(services["redis"]["command"])
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_kubernetes_manifests_are_valid() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = [DEPLOY / r for r in kustomization["resources"]]
    assert all(f.exists() for f in files), files
    out = subprocess.run([BIN / "kubernetes-validate", "--strict", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" passed for resource ") == 5, out.stdout  # namespace, configmap, 2 deployments, service


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
    assert "BACKFILL_REDIS_URL" in secret_keys and "AIRFLOW_PASSWORD" in secret_keys
    images = {i["name"] for i in kustomization["images"]}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["image"] in images
        refs = container["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
        assert {"secretRef": {"name": generator["name"]}} in refs
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    service = next(d for d in docs if d["kind"] == "Service")
    assert ("Deployment", "backfill-flower") in by_kind and service["spec"]["ports"][0]["port"] == 5555
    assert "deploy/secret.env" in (REPO / ".gitignore").read_text()
