"""Fixtures: a tiny RANDOM checkpoint made with svg.pipeline, and real uvicorn servers on loopback (subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import io

import httpx
import pytest
from PIL import Image

from tests.net import free_port, wait_http  # free_port: re-exported to the server test modules

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 250
MAX_IMAGES = 8
MAX_UPLOAD_BYTES = 4 * 2**20
MAX_UPLOAD_PIXELS = 4_000_000


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random checkpoint directory (``python -m svg.pipeline make-random --preset tiny``)."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    subprocess.run([sys.executable, "-m", "svg.pipeline", "make-random", "--preset", "tiny", str(out)],
                   check=True, capture_output=True, cwd=REPO)
    return out


class ServerProcess:
    """``python -m server`` in a subprocess on a free loopback port; ``url``, ``pid``, ``client()``."""

    def __init__(self, model_dir: Path, log_path: Path, **flags) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "server", "--model-dir", str(model_dir), "--device", "cpu",
                "--port", str(self.port), "--log-level", "warning"]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.api_key = flags.get("api_key")

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            wait_http(self.url + "/ready", timeout, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {self.log_path.read_text()[-3000:]}") from None

    def client(self, timeout: float = 120.0, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers, **kw)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_server(model_dir: Path, tmp_path_factory, name: str, **flags) -> ServerProcess:
    srv = ServerProcess(model_dir, tmp_path_factory.mktemp(name) / "server.log", **flags)
    try:
        srv.wait_ready()
    except Exception:
        srv.stop()
        raise
    return srv


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text, e.g. ``metric_value(t, "svg_nfe_total")``; 0 when absent."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    """The main test server, shared by the HTTP modules (one uvicorn start for all of them)."""
    srv = start_server(model_dir, tmp_path_factory, "main", max_rows=8, batch_wait_s=0.15, max_steps=MAX_STEPS,
                       max_images=MAX_IMAGES, max_upload_bytes=MAX_UPLOAD_BYTES,
                       max_upload_pixels=MAX_UPLOAD_PIXELS, request_timeout_s=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def png_bytes(mode="RGB", size=(64, 64), color=None, **save) -> bytes:
    img = Image.new(mode, size, color) if color is not None else Image.new(mode, size)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()
