"""deploy/monitoring holds together: Prometheus accepts the config and the rules (promtool),
each alert fires on the series that should fire it and not on others (``alerts_test.yml``),
every metric the alerts and the Grafana dashboard query is one the code exports, and the
Kubernetes scrape jobs find the pods and ports deploy/ defines. The integration test
(tests/integration/test_observability.py) runs all of it against a real backfill."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/bootstrap.sh --tests installs it (apt-get install -y prometheus)"
    out = subprocess.run([tool, *args], capture_output=True, text=True, cwd=MONITORING, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def exported() -> set[str]:
    """Every metric name the workers and the exporter expose (with a histogram's and a counter's suffixes)."""
    code = (REPO / "backfill" / "metrics.py").read_text() + (REPO / "backfill" / "exporter.py").read_text()
    names = set(re.findall(r'"(backfill_[a-z_]+)"', code))
    return names | {f"{n}{s}" for n in names for s in ("_total", "_bucket", "_count", "_sum")}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    return {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if w.startswith("backfill_")}


def test_promtool_accepts_the_config_and_the_rules_and_the_rules_fire_as_tested() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "8 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_is_unit_tested_and_says_what_to_do() -> None:
    rules = [r for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    tested = {
        case["alertname"]
        for t in yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
        for case in t["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert {r["alert"] for r in rules} == tested
    operations = (REPO / "docs" / "operations.md").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert f"`{rule['alert']}`" in operations, f"docs/operations.md does not say what to do on {rule['alert']}"
        assert metric_names(rule["expr"]) <= exported(), metric_names(rule["expr"]) - exported()


def test_the_dashboard_queries_only_exported_metrics_from_the_provisioned_data_source() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "backfill.json").read_text())
    (source,) = yaml.safe_load((MONITORING / "grafana" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    used: set[str] = set()
    # The data source is a variable (provisioned: the default one; imported: chosen on import).
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert source["isDefault"] is True and source["type"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= metric_names(target["expr"])
    assert used <= exported(), used - exported()
    # The dashboard shows the backfills' own metrics and the workers' alike.
    assert {"backfill_windows", "backfill_window_waiting", "backfill_airflow_requests_total"} <= used
    provider = yaml.safe_load((MONITORING / "grafana" / "dashboards" / "dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/provisioning/dashboards"


def test_the_kubernetes_scrape_jobs_find_the_pods_and_ports_deploy_defines() -> None:
    jobs = yaml.safe_load((MONITORING / "kubernetes.yml").read_text())["scrape_configs"]
    compose_jobs = yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]
    assert [j["job_name"] for j in jobs] == [j["job_name"] for j in compose_jobs] == [
        "backfill-workers", "backfill-exporter"
    ]  # fmt: skip
    alerts = (MONITORING / "alerts.yml").read_text()
    assert 'job="backfill-workers"' in alerts and 'job="backfill-exporter"' in alerts
    manifests = {
        d["metadata"]["name"]: d
        for f in ("worker.yaml", "exporter.yaml")
        for d in yaml.safe_load_all((REPO / "deploy" / f).read_text())
        if d["kind"] == "Deployment"
    }
    for job, deployment in zip(jobs, ("backfill-worker", "backfill-exporter"), strict=True):
        keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
        pod = manifests[deployment]["spec"]["template"]
        assert (
            pod["metadata"]["labels"]["app.kubernetes.io/name"]
            == keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        )
        (container,) = pod["spec"]["containers"]
        assert keep["__meta_kubernetes_pod_container_port_name"] in {p["name"] for p in container["ports"]}
    worker = manifests["backfill-worker"]["spec"]["template"]["spec"]["containers"][0]
    port = next(e["value"] for e in worker["env"] if e["name"] == "BACKFILL_METRICS_PORT")
    assert int(port) == worker["ports"][0]["containerPort"]
