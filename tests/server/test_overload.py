"""Overload and faults over real HTTP on a tight server (max_rows 2, max_queue 2, 4 s deadline, API key):
auth, queue overflow (B25), deadlines (504), client disconnect (B24), oversized batches (B26), workers (B28)."""

from __future__ import annotations

import concurrent.futures as cf
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.server.conftest import REPO, metric_value, start_server

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def tight(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory, "tight", max_rows=2, max_queue=2, batch_wait_s=0,
                       request_timeout_s=4, max_steps=1000, max_images=8, api_key=API_KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tc(tight):
    with tight.client() as c:
        yield c


def metrics(tc) -> str:
    return tc.get("/metrics").text


def wait_until(fn, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(every)
    return False


def test_api_key_required_except_health(tight, tc):
    with httpx.Client(base_url=tight.url, timeout=30) as anon:
        assert anon.get("/health").status_code == 200
        assert anon.get("/ready").status_code == 200
        r = anon.post("/generate", json={"class_id": 1, "steps": 1})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        wrong = anon.post("/generate", json={"class_id": 1, "steps": 1}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert anon.get("/models").status_code == 401
        for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):  # the documented open paths (docs/server.md)
            assert anon.get(path).status_code == 200, path
        for path in ("/encode", "/reconstruct", "/edit", "/interpolate"):
            assert anon.post(path, json={}).status_code == 401, path
    assert tc.post("/generate", json={"class_id": 1, "steps": 1}).status_code == 200


def test_queue_overflow_is_429_with_retry_after_at_once(tc):
    before = metric_value(metrics(tc), "svg_rejections_total", 'reason="queue_full"')
    body = {"class_id": 1, "steps": 20, "cfg": 4.0}  # guided: one request fills max_rows=2

    def call(_):
        t0 = time.monotonic()
        r = tc.post("/generate", json=body)
        return r, time.monotonic() - t0

    with cf.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(call, range(6)))
    codes = sorted(r.status_code for r, _ in results)
    assert codes.count(429) >= 1 and codes.count(200) >= 3 and set(codes) <= {200, 429}, codes
    for r, dt in results:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"] == "queue_full"
            assert dt < 2.0  # refused at once, not after waiting
    after = metric_value(metrics(tc), "svg_rejections_total", 'reason="queue_full"')
    assert after - before == codes.count(429)


def test_deadline_gives_504_and_frees_the_queue(tc):
    before = metric_value(metrics(tc), "svg_cancellations_total", 'reason="deadline"')
    t0 = time.monotonic()
    # 8 guided images x 1000 steps at max_rows=2 is 8000 sequential DiT steps: far past 4 s on any machine.
    r = tc.post("/generate", json={"class_id": 2, "num_images": 8, "steps": 1000, "cfg": 4.0})
    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
    assert 3.5 < time.monotonic() - t0 < 30
    text = metrics(tc)
    assert metric_value(text, "svg_cancellations_total", 'reason="deadline"') == before + 1
    assert metric_value(text, "svg_inflight_requests") == 0 and metric_value(text, "svg_queue_depth") == 0


def test_client_disconnect_cancels_within_a_step_and_metrics_stay_fast(tight, tc):
    before = metric_value(metrics(tc), "svg_cancellations_total", 'reason="client_disconnect"')
    latencies, stop = [], threading.Event()

    def poll():
        with tight.client() as mc:
            while not stop.is_set():
                t0 = time.monotonic()
                assert mc.get("/metrics").status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with tight.client(timeout=0.5) as short:
            with pytest.raises(httpx.TimeoutException):
                short.post("/generate", json={"class_id": 3, "num_images": 8, "steps": 1000, "cfg": 4.0})
        assert wait_until(lambda: metric_value(metrics(tc), "svg_cancellations_total",
                                               'reason="client_disconnect"') == before + 1, timeout=3.0)
        text = metrics(tc)
        assert metric_value(text, "svg_inflight_requests") == 0 and metric_value(text, "svg_queue_depth") == 0
        nfe = metric_value(text, "svg_nfe_total")
        time.sleep(0.5)
        assert metric_value(metrics(tc), "svg_nfe_total") == nfe  # no more rows run for it
        assert 'svg_requests_total{endpoint="/generate",status="499"}' in metrics(tc)
    finally:
        stop.set()
        poller.join()
    assert len(latencies) >= 3
    assert statistics.median(latencies) < 0.1, latencies  # the event loop never blocks on the model (B24)


def test_oversized_batch_is_422_then_small_batch_works(tc):
    r = tc.post("/generate", json={"class_id": 1, "num_images": 4096, "steps": 1})
    assert r.status_code == 422
    d = r.json()["detail"][0]
    assert d["field"] == "num_images" and d["value"] == 4096 and "max_images=8" in d["msg"]
    assert tc.post("/generate", json={"class_id": 1, "num_images": 1, "steps": 1}).status_code == 200


def test_more_than_one_worker_is_refused():
    out = subprocess.run([sys.executable, "-m", "server", "--workers", "2"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "workers=2" in out.stderr and "one process owns the device" in out.stderr
