"""A live server scraped by a live Prometheus: an alert fires on purpose, and the dashboard's metrics exist."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import free_port, wait_http
from .test_grafana import DASHBOARD, queried_metrics

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "ops" / "prometheus"

# Loaded only in this test: the real p99 expression with a threshold any request exceeds, and no `for`.
TEST_RULES = {
    "groups": [{
        "name": "svg-test",
        "rules": [{
            "alert": "SVGTestGenerateLatency",
            "expr": 'histogram_quantile(0.99, sum by (le, instance) (rate(svg_request_latency_seconds_bucket'
                    '{endpoint="/generate"}[5m]))) > 0.0001',
            "labels": {"severity": "test"},
            "annotations": {"summary": "fired on purpose by tests/ops/test_live_monitoring.py"},
        }],
    }],
}


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _post_generate(url: str, seed: int) -> int:
    body = json.dumps({"class_id": 1, "num_images": 1, "steps": 2, "cfg": 1.0, "seed": seed}).encode()
    request = urllib.request.Request(url + "/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


@pytest.fixture()
def prometheus(live_server, tmp_path):
    """Prometheus scraping the live server every second with the real alerts.yml plus the test rule."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: apt-get install -y prometheus")
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (tmp_path / "test_rules.yml").write_text(yaml.safe_dump(TEST_RULES))
    config["rule_files"] = [str(PROM_DIR / "alerts.yml"), str(tmp_path / "test_rules.yml")]
    (svg_job,) = [job for job in config["scrape_configs"] if job["job_name"] == "svg"]
    svg_job["static_configs"] = [{"targets": [live_server.removeprefix("http://")]}]
    config["scrape_configs"] = [svg_job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready", 60, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_alert_fires_on_purpose_against_live_server_and_prometheus(live_server, prometheus):
    for seed in range(3):
        assert _post_generate(live_server, seed) == 200
    firing, deadline = [], time.monotonic() + 90
    while time.monotonic() < deadline and not firing:
        _post_generate(live_server, 99)  # keep the rate non-zero
        alerts = _get_json(prometheus + "/api/v1/alerts")["data"]["alerts"]
        firing = [a for a in alerts if a["labels"]["alertname"] == "SVGTestGenerateLatency" and a["state"] == "firing"]
        time.sleep(1)
    assert firing, f"the test alert never fired; alerts: {alerts}"
    assert firing[0]["labels"]["instance"] == live_server.removeprefix("http://")
    # The real rules load and evaluate without error against real series, and a ready server does not page.
    groups = _get_json(prometheus + "/api/v1/rules")["data"]["groups"]
    real = [rule for group in groups if group["name"] == "svg-serving" for rule in group["rules"]]
    assert len(real) == 6 and all(rule["health"] == "ok" for rule in real), real
    no_ready = [rule for rule in real if rule["name"] == "SVGNoReadyReplica"][0]
    assert no_ready["state"] == "inactive"
    # The scrape itself works: up == 1 and svg_ready == 1 as Prometheus sees them.
    up = _get_json(prometheus + "/api/v1/query?query=svg_ready")["data"]["result"]
    assert up and up[0]["value"][1] == "1"


def test_live_metrics_expose_every_dashboard_metric(live_server):
    """Scrape the live server: every metric the dashboard queries exists (GPU gauges only with CUDA)."""
    assert _post_generate(live_server, 5) == 200
    with urllib.request.urlopen(live_server + "/metrics", timeout=5) as response:
        text = response.read().decode()
    exposed = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    exposed |= {f"{name}_total" for name in exposed}
    queried = queried_metrics([t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]])
    missing = {name for name in queried - exposed if not name.startswith("svg_gpu_")}
    assert not missing, f"dashboard metrics missing from a live /metrics: {sorted(missing)}"
