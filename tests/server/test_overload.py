"""Overload and faults over real HTTP on a tight server (max_rows 2, max_queue 2, 4 s deadline, API key):
auth, queue overflow (B25), deadlines (504), client disconnect (B24), oversized batches (B26), workers (B28).

Timing-free: each step waits for the server's own state in /metrics (a request started, the queue depth reached, a
cancellation counted), never for a sleep or a latency threshold. Client disconnects are raw sockets closed by the
test itself, and every assertion runs in the test's thread."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
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


def wait_for(tc, condition, what: str, limit_s: float = 120.0) -> str:
    """Poll /metrics until ``condition(text)`` holds; return that text. The limit is a safety net against a hang,
    never a pass/fail threshold: each step of these tests waits for the server's own state, not for time."""
    deadline = time.monotonic() + limit_s
    text = ""
    while time.monotonic() < deadline:
        text = metrics(tc)
        if condition(text):
            return text
        time.sleep(0.02)
    raise AssertionError(f"server never reached: {what}\n{text[-2000:]}")


def gauge(text: str, name: str, labels: str = "") -> float:
    return metric_value(text, name, labels)


def open_generate(server, body: dict) -> socket.socket:
    """Send POST /generate on a raw socket and return it without reading: closing it is a client disconnect."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


LONG = {"num_images": 8, "steps": 1000, "cfg": 4.0}  # guided: each image fills max_rows=2 for 1000 steps


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


def test_queue_overflow_is_429_with_retry_after_at_once(tight, tc):
    text = metrics(tc)
    rejected0 = gauge(text, "svg_rejections_total", 'reason="queue_full"')
    started0 = gauge(text, "svg_queue_wait_seconds_count")
    running = open_generate(tight, {"class_id": 1, **LONG})
    queued = []
    try:
        wait_for(tc, lambda t: gauge(t, "svg_queue_wait_seconds_count") == started0 + 1
                 and gauge(t, "svg_inflight_requests") == 1, "the first request started")
        queued = [open_generate(tight, {"class_id": k, **LONG}) for k in (2, 3)]  # max_queue = 2: both wait
        wait_for(tc, lambda t: gauge(t, "svg_queue_depth") == 2, "two requests queued")
        r = tc.post("/generate", json={"class_id": 4, "steps": 1})
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        text = metrics(tc)
        # Refused at once: nothing moved while it was answered (same queue, same running request).
        assert gauge(text, "svg_queue_depth") == 2 and gauge(text, "svg_inflight_requests") == 3
        assert gauge(text, "svg_rejections_total", 'reason="queue_full"') == rejected0 + 1
    finally:
        for sock in [running, *queued]:
            sock.close()
    wait_for(tc, lambda t: gauge(t, "svg_inflight_requests") == 0 and gauge(t, "svg_queue_depth") == 0,
             "the disconnected requests were dropped")


def test_deadline_gives_504_and_frees_the_queue(tc):
    before = gauge(metrics(tc), "svg_cancellations_total", 'reason="deadline"')
    t0 = time.monotonic()
    # 8 guided images x 1000 steps at max_rows=2 is 8000 sequential DiT steps: far past the 4 s deadline.
    r = tc.post("/generate", json={"class_id": 2, **LONG})
    assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
    assert time.monotonic() - t0 >= 3.9  # not before the deadline (a lower bound: a slow machine cannot break it)
    text = wait_for(tc, lambda t: gauge(t, "svg_inflight_requests") == 0, "the expired request left")
    assert gauge(text, "svg_cancellations_total", 'reason="deadline"') == before + 1
    assert gauge(text, "svg_queue_depth") == 0


def test_client_disconnect_cancels_and_metrics_answer_while_the_model_runs(tight, tc):
    text = metrics(tc)
    cancelled0 = gauge(text, "svg_cancellations_total", 'reason="client_disconnect"')
    started0 = gauge(text, "svg_queue_wait_seconds_count")
    sock = open_generate(tight, {"class_id": 3, **LONG})
    try:
        text = wait_for(tc, lambda t: gauge(t, "svg_queue_wait_seconds_count") == started0 + 1,
                        "the request started")
        # B24: the event loop never waits for the model. /metrics answers while the request is mid-way: the NFE
        # counter moves between two answers and the request is still in flight in both.
        nfe = gauge(text, "svg_nfe_total")
        text = wait_for(tc, lambda t: gauge(t, "svg_nfe_total") > nfe, "the model made progress")
        assert gauge(text, "svg_inflight_requests") == 1
    finally:
        sock.close()
    text = wait_for(tc, lambda t: gauge(t, "svg_cancellations_total", 'reason="client_disconnect"')
                    == cancelled0 + 1, "the disconnect cancelled the request")
    text = wait_for(tc, lambda t: gauge(t, "svg_inflight_requests") == 0, "the cancelled request left")
    assert gauge(text, "svg_queue_depth") == 0
    assert 'svg_requests_total{endpoint="/generate",status="499"}' in text
    # No more rows run for it: a 1-step unguided request now adds exactly its own single row to the NFE counter.
    nfe = gauge(text, "svg_nfe_total")
    assert tc.post("/generate", json={"class_id": 1, "steps": 1, "cfg": 1.0}).status_code == 200
    assert gauge(metrics(tc), "svg_nfe_total") == nfe + 1


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
