"""Fixtures for the operations tests: a tiny random checkpoint and a live server on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.net import free_port, wait_http  # noqa: F401  (re-exported to the ops test modules)

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny RANDOM checkpoint directory, made with the documented command."""
    out = tmp_path_factory.mktemp("tiny_model")
    subprocess.run([sys.executable, "-m", "svg.pipeline", "make-random", "--preset", "tiny", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def live_server(tiny_model_dir, tmp_path_factory):
    """``python -m server`` on the tiny model (CPU) at a free port; yields its base URL once /ready is 200."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    # One intra-op thread and small padded batches: the CPU settings of docs/operations.md's smoke run.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--model-dir", str(tiny_model_dir), "--device", "cpu",
             "--max-rows", "8", "--decode-batch", "4", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/ready", 300, process)
    except (RuntimeError, TimeoutError) as exc:
        process.kill()
        pytest.fail(f"server did not become ready: {exc}\n{log_path.read_text()[-3000:]}")
    yield url
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
