"""Grafana dashboard and provisioning: valid JSON, the required panels, valid PromQL, only exported metrics."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "svg.json"
METRIC = re.compile(r"\bsvg_[a-z_]+\b")
SUFFIXES = ("_bucket", "_sum", "_count")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def server_metric_names() -> set[str]:
    """Every metric family the server can export: its registry, plus the GPU gauges that exist only with CUDA."""
    from server import metrics

    registry = metrics.ServerMetrics().registry
    names = {family.name for family in registry.collect()}
    # prometheus_client strips the _total suffix from counter family names.
    names |= {f"{name}_total" for name in names}
    names |= set(re.findall(r'GaugeMetricFamily\(\s*"(svg_[a-z_]+)"', inspect.getsource(metrics._GpuCollector)))
    return names


def queried_metrics(exprs: list[str]) -> set[str]:
    found = set()
    for expr in exprs:
        for name in METRIC.findall(expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            found.add(name)
    return found


def test_dashboard_json_is_well_formed():
    dashboard = _dashboard()
    assert dashboard["uid"] == "svg-serving" and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource_uid = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_dashboard_has_the_required_panels():
    exprs = " ".join(_exprs(_dashboard()))
    required = {
        "requests/s by endpoint and status": "sum by (endpoint, status) (rate(svg_requests_total",
        "latency quantiles": "histogram_quantile(0.99, sum by (le, endpoint) (rate(svg_request_latency_seconds_bucket",
        "queue depth": "svg_queue_depth",
        "rows per DiT step": "svg_step_rows_bucket",
        "images/s": "rate(svg_images_total",
        "NFE/s": "rate(svg_nfe_total",
        "cancellations": "svg_cancellations_total",
        "rejections": "svg_rejections_total",
        "GPU memory": "svg_gpu_memory_bytes",
        "GPU utilisation": "svg_gpu_utilization_ratio",
        "MFU": "svg_mfu_ratio",
    }
    missing = [what for what, fragment in required.items() if fragment not in exprs]
    assert not missing, f"dashboard lacks panels for {missing}"


def test_every_queried_metric_is_exported_by_the_server():
    queried = queried_metrics(_exprs(_dashboard()))
    exported = server_metric_names()
    assert len(queried) >= 15
    unknown = queried - exported
    assert not unknown, f"the dashboard queries metrics the server does not export: {sorted(unknown)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt-get install -y prometheus")
def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """Wrap each expression (template variables filled in) as a recording rule and let promtool parse it."""
    rules = []
    for i, expr in enumerate(_exprs(_dashboard())):
        concrete = expr.replace("$instance", ".*").replace("$endpoint", "/generate")
        rules.append({"record": f"dashboard:expr_{i}", "expr": concrete})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_provisioning_points_at_the_dashboard_folder_and_prometheus():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "svg.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
