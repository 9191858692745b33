"""Shared pytest settings: where the read-only shared material lives, and GPU/TensorRT skips."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Triton kernels run on the CPU through the interpreter when there is no GPU. It must be set before `kernels` is first
# imported (``@triton.jit`` picks interpreted or compiled at decoration time), and this root conftest loads first.
import torch  # noqa: E402  (after the comment above on purpose)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SVG_SHARED_DIR", REPO.parent / "shared"))
PARITY_DIR = SHARED / "fixtures" / "parity"
MNIST_PATH = SHARED / "data" / "mnist.npz"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing entirely: no GPU either
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    skip_trt = pytest.mark.skip(reason="needs TensorRT, which is not installed here")
    has_cuda = _has_cuda()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY_DIR / "manifest.json").exists():
        pytest.skip(f"parity fixtures not found at {PARITY_DIR} (set SVG_SHARED_DIR)")
    return PARITY_DIR
