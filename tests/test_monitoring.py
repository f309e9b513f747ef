"""What ships for monitoring (deploy/prometheus, deploy/grafana, the compose profile `monitoring`),
validated with Prometheus' own promtool (scripts/ensure-services.sh unpacks it from Debian's
package) and PromQL's parser (promql-parser, dev extra)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from shared.metrics import DEFAULT_PORTS, SERVICE_METRICS, ServiceMetrics, exported_names, render
from shared.settings import DashboardSettings
from tests.compose_utils import compose_model

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD_JSON = GRAFANA / "dashboards" / "emotion-pipeline.json"
PROMTOOL_DIR = Path("/var/cache/emotion-tools/prometheus/usr/bin")
# Series Prometheus itself or prometheus_client's process collector provide
FOREIGN_NAMES = {"up", "process_cpu_seconds_total", "process_resident_memory_bytes"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool") or (str(PROMTOOL_DIR / "promtool") if (PROMTOOL_DIR / "promtool").exists() else None)
    if found is None:
        pytest.fail("promtool not found: run scripts/ensure-services.sh (it unpacks Debian's prometheus package)")
    return found


def test_prometheus_config_passes_promtool(promtool):
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(promtool, tmp_path):
    """The check above can fail: a scrape job without a name is refused."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_CONFIG.read_text().replace("job_name: classifier", "jobname: classifier"))
    result = subprocess.run([promtool, "check", "config", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("service", sorted(SERVICE_METRICS))
def test_every_service_exposition_passes_promtool_lint(promtool, service):
    """`promtool check metrics` lints names, units, suffixes and help texts of what a service serves."""
    metrics = ServiceMetrics(service)
    for key in SERVICE_METRICS[service]:
        if key == "stage_latency":
            metrics.stage("end_to_end", [0.02])
        elif key in ("batch_size", "batch_duration"):
            metrics.observe(key, 1, stream="emotion:faces")
        elif key == "inference":
            metrics.observe(key, 0.01)
        elif key in ("frames", "frames_shed"):
            metrics.count(key, camera="cam0")
        elif key in ("entries", "dead_letters", "reclaimed"):
            metrics.count(key, stream="emotion:faces")
        else:
            metrics.count(key)
    result = subprocess.run([promtool, "check", "metrics"], input=render(metrics, "")[0], capture_output=True,
                            timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_scrape_jobs_reach_every_service_on_its_port():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service, port in DEFAULT_PORTS.items():
        sd = jobs[service]["dns_sd_configs"][0]
        assert service in sd["names"] and sd["port"] == port, service
    assert jobs["dashboard"]["static_configs"][0]["targets"] == [f"dashboard:{DashboardSettings().port}"]


def _metric_names(node) -> set[str]:
    """Metric names a PromQL expression selects, from its syntax tree."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    found: set[str] = set()
    for attr in ("args", "expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attr, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and type(item).__module__.startswith("promql_parser"):
                found |= _metric_names(item)
    return found


def test_grafana_dashboard_queries_parse_and_name_exported_metrics():
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    known = exported_names() | FOREIGN_NAMES
    used: set[str] = set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        grid = panel["gridPos"]
        cell = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cell & cells, f"{panel['title']} overlaps another panel"
        cells |= cell
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _metric_names(promql_parser.parse(target["expr"]))  # raises on a syntax error
            assert names, target["expr"]
            used |= names
    assert used <= known, f"the dashboard queries metrics nobody exports: {sorted(used - known)}"
    for must in ("emotion_stage_latency_seconds_bucket", "emotion_consumer_group_lag", "emotion_frames_shed_total",
                 "emotion_dead_letters_total", "emotion_events_total"):
        assert must in used


def test_metric_name_walker_finds_every_selector():
    """The check above can fail: a query naming an unknown metric yields that name."""
    names = _metric_names(promql_parser.parse("sum(rate(a_total[1m])) / on() max(b{x='1'}) + c"))
    assert names == {"a_total", "b", "c"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(emotion_faces_total[1m])")


def test_compose_monitoring_profile(compose_project_dir):
    model = compose_model(compose_project_dir, "monitoring")
    services = model["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:") and grafana["image"].startswith("grafana/grafana:")
    for service in (prometheus, grafana):
        assert service["profiles"] == ["monitoring"]
        assert all(port["host_ip"] == "127.0.0.1" for port in service["ports"]), "published beyond loopback"
    mounts = {v["target"]: v for v in prometheus["volumes"]}
    config_flag = next(arg for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = mounts[config_flag.split("=", 1)[1]]
    # binds are relative to the project directory, an empty one here: map them back into the repository
    def in_repo(mount: dict) -> Path:
        return REPO_ROOT / Path(mount["source"]).relative_to(compose_project_dir)

    assert in_repo(config) == PROMETHEUS_CONFIG and config["read_only"]
    grafana_mounts = {v["target"]: v for v in grafana["volumes"]}
    assert in_repo(grafana_mounts["/etc/grafana/provisioning"]) == GRAFANA / "provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "emotion.yml").read_text())["providers"][0]
    dashboards = grafana_mounts[provider["options"]["path"]]
    assert in_repo(dashboards) == GRAFANA / "dashboards" and dashboards["read_only"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_JSON.name}"
    # every emotion service listens for Prometheus on the compose network, and without the profile
    # neither Prometheus nor Grafana runs
    for name in ("capture", "detector", "classifier", "recorder"):
        assert services[name]["environment"]["EMOTION_METRICS__HOST"] == "0.0.0.0", name
    assert "prometheus" not in compose_model(compose_project_dir)["services"]
