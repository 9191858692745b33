"""A REAL Prometheus (/usr/bin/prometheus, Debian package) scrapes the running server; we query it over its API."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest

from tests.server.conftest import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    if not shutil.which(PROMETHEUS):
        pytest.skip(f"{PROMETHEUS} not installed (apt-get install prometheus; .ci/run installs it)")
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: svg\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n")
    port = free_port()
    log = open(work / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def query(url: str, promql: str) -> list:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_server_metrics(prometheus, client):
    assert client.post("/generate", json={"class_id": 1, "steps": 2, "seed": 5}).status_code == 200
    want = float(client.get("/metrics").text.split("svg_images_total{endpoint=\"/generate\"} ")[1].split()[0])
    deadline = time.monotonic() + 90
    result, up = [], []
    while time.monotonic() < deadline:
        try:
            up = query(prometheus, 'up{job="svg"}')
            result = query(prometheus, 'svg_images_total{job="svg",endpoint="/generate"}')
        except httpx.HTTPError:  # Prometheus still starting
            result = []
        if result and float(result[0]["value"][1]) >= want:
            break
        time.sleep(0.5)
    assert up and up[0]["value"][1] == "1", up
    assert result and float(result[0]["value"][1]) >= want, result
    ready = query(prometheus, 'svg_ready{job="svg"}')
    assert ready and ready[0]["value"][1] == "1"
