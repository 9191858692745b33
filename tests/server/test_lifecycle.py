"""Start-up over real HTTP (uvicorn in a thread): /health answers while the model loads, /ready and the model
endpoints answer 503 until it is loaded and warmed up; a half-precision (float16) path still returns finite images
or the 500 ``non-finite output`` error, never a garbage PNG (B01)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from server.app import create_app
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.model import load_model
from server.worker import Worker
from tests.server.conftest import free_port


class ThreadServer:
    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def test_health_answers_while_loading_and_ready_waits(model_dir):
    release = threading.Event()

    def slow_loader(cfg):
        release.wait(60)
        return load_model(cfg)

    cfg = ServerConfig(model_dir=model_dir, device="cpu", max_rows=2, decode_batch=1)
    metrics = ServerMetrics()
    app = create_app(cfg, worker=Worker(cfg, metrics, slow_loader), metrics=metrics)
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/health").json() == {"status": "loading"}
        r = c.get("/ready")
        assert r.status_code == 503 and "retry-after" in r.headers
        assert c.post("/generate", json={"class_id": 1, "steps": 1}).status_code == 503
        assert "svg_ready 0.0" in c.get("/metrics").text
        release.set()
        deadline = time.monotonic() + 120
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/ready").status_code == 200
        assert c.get("/health").json() == {"status": "ready"}
        assert "svg_ready 1.0" in c.get("/metrics").text


def test_load_failure_is_reported_on_health(tmp_path):
    cfg = ServerConfig(model_dir=tmp_path / "missing", device="cpu")
    with ThreadServer(create_app(cfg)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        deadline = time.monotonic() + 60
        while c.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "missing" in r.json()["error"]
        assert c.get("/ready").status_code == 503


@pytest.mark.parametrize("device,dtype", [
    ("cpu", "bfloat16"),
    pytest.param("cuda", "float16", marks=pytest.mark.gpu),  # the B01 path; fp16 on CPU is impractically slow
])
def test_half_precision_generate_is_finite_or_refused(model_dir, device, dtype):
    cfg = ServerConfig(model_dir=model_dir, device=device, dtype=dtype, max_rows=2, decode_batch=1, warmup=False)
    with ThreadServer(create_app(cfg)) as srv, httpx.Client(base_url=srv.url, timeout=120) as c:
        deadline = time.monotonic() + 120
        while c.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = c.post("/generate", json={"class_id": 207, "steps": 2, "cfg": 4.0, "seed": 0})
        if r.status_code == 500:
            assert r.json()["error"] == "non-finite output"
        else:
            assert r.status_code == 200, r.text
            assert r.json()["images"][0]["png_base64"]
