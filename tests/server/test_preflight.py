"""Start-up refuses configurations this machine cannot serve (T30; issue 6: TensorRT missing)."""

import importlib.util
import subprocess
import sys

import pytest
import torch


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args, "--port", "0"], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA start-up path")
def test_cuda_device_without_cuda_exits_at_startup():
    proc = _run("--device", "cuda")
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_engine_without_tensorrt_exits_at_startup():
    proc = _run("--device", "cpu", "--sit-engine", "tensorrt")
    assert proc.returncode == 2
    assert "TensorRT Python package is not installed" in proc.stderr


def test_max_steps_below_the_request_default_exits_at_startup():
    from server.config import DEFAULT_STEPS

    proc = _run("--device", "cpu", "--max-steps", str(DEFAULT_STEPS - 1))
    assert proc.returncode == 2
    assert f"max_steps={DEFAULT_STEPS - 1}" in proc.stderr and f"steps={DEFAULT_STEPS}" in proc.stderr
