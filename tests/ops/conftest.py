"""Fixtures for the operations tests: a tiny random checkpoint and a live server on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200, failing early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s")


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
