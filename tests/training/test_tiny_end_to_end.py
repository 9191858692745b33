"""The documented one-command tiny training run (docs/training.md, "A tiny model end to end"): it trains stage 1,
encodes the latents, trains stage 2, and the server loads the result, reporting what was trained (10 MNIST
classes, not the preset's 1000) and answering a /generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from svg.checkpoint import read_svg
from tests.conftest import MNIST_PATH
from tests.net import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.mnist]  # missing MNIST fails under CI=true (tests/conftest.py)


def test_small_demo_trains_a_model_the_server_loads(tmp_path):
    model, runs = tmp_path / "model", tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "training.demo", "--small", "--data", str(MNIST_PATH),
                           "--out", str(model), "--runs", str(runs)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)  # any CWD works
    assert done.returncode == 0, done.stderr[-3000:]
    assert "serve it with" in done.stderr
    _, _, meta = read_svg(model / "sit.safetensors", "sit")
    assert json.loads(meta["config"])["num_classes"] == 10  # what was trained, not the tiny preset's 1000
    result = json.loads((runs / "small_result.json").read_text())
    assert result["stage2_result"]["steps"] == result["stage2"]["steps"] and result["stage2_result"]["bit_exact"]

    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "server", "--model-dir", str(model), "--device", "cpu",
                                   "--max-rows", "8", "--decode-batch", "4", "--host", "127.0.0.1", "--port",
                                   str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", 300, server)
        with urllib.request.urlopen(url + "/models", timeout=30) as response:
            models = json.loads(response.read())
        text = json.dumps(models)
        assert '"num_classes": 10' in text, text
        body = json.dumps({"class_id": 3, "num_images": 1, "steps": 2, "cfg": 2.0, "seed": 1}).encode()
        request = urllib.request.Request(url + "/generate", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200 and len(json.loads(response.read())["images"]) == 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
