"""Writable paths are checked at start-up (case T31: a cache directory the server cannot write kept it up but never
ready, 503 with an OSError, until the health check gave up). Now ``python -m server`` exits within seconds with one
line naming the path and the fix. Runs as any user: the unwritable directory lies below a regular file, which no
user (root included) can create a directory in."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from server.config import ServerConfig
from server.paths import check_writable, planned_writes

from .conftest import REPO, free_port


def _blocked(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a directory")
    return tmp_path / "a-file" / "cache"


def test_server_with_an_unwritable_inductor_cache_exits_at_once_naming_it(tiny_model_dir, tmp_path):
    blocked = _blocked(tmp_path)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(blocked), "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "server", "--model-dir", str(tiny_model_dir), "--device", "cpu",
                           "--sit-engine", "compile", "--host", "127.0.0.1", "--port", str(free_port())],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(blocked) in lines[0] and "TORCHINDUCTOR_CACHE_DIR" in lines[0] and "fix:" in lines[0]
    assert seconds < 60, seconds  # import time only; before the fix the server never exited


def test_the_engine_cache_and_triton_caches_are_checked_where_used(tmp_path, monkeypatch):
    blocked = _blocked(tmp_path)
    monkeypatch.setenv("SVG_ENGINE_CACHE", str(blocked))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    trt = ServerConfig(engine="tensorrt", device="cuda")
    problem = check_writable(trt, "cuda")
    assert problem and str(blocked) in problem and "SVG_ENGINE_CACHE" in problem
    compiled = ServerConfig(sit_engine="compile", device="cuda")
    assert {w.env for w in planned_writes(compiled, "cuda")} == {"TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"}
    assert check_writable(compiled, "cuda") is None and (tmp_path / "inductor").is_dir()
    assert not list((tmp_path / "inductor").iterdir())  # the probe file is removed again
    assert planned_writes(ServerConfig(device="cpu"), "cpu") == []  # eager on CPU writes nothing
