"""Shared pytest settings: where the read-only shared material lives, GPU/TensorRT skips, and the rule that our own
data (parity fixtures, MNIST) is never skipped silently in CI.

Skips are only for what a machine may legitimately lack: a CUDA GPU, TensorRT, an optional system package. The
parity fixtures and MNIST under ``../shared`` are part of the project's test data: with ``CI=true`` or
``SVG_REQUIRE_FIXTURES=1`` a test that needs them FAILS when they are missing, naming the missing path. Elsewhere
(a developer's clone without ``../shared``) those tests skip with the same message.
"""

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


def fixtures_required() -> bool:
    """True in CI (``CI=true``, as CI systems set it) or with ``SVG_REQUIRE_FIXTURES=1``."""
    return os.environ.get("CI", "").lower() in ("true", "1") or os.environ.get("SVG_REQUIRE_FIXTURES") == "1"


def missing_shared_data(what: str, path: Path) -> None:
    """Fail (CI / SVG_REQUIRE_FIXTURES=1) or skip (elsewhere) a test whose shared data at ``path`` is missing."""
    message = (f"{what} not found at {path}: the project's test data lives in ../shared next to the checkout "
               f"(or set SVG_SHARED_DIR)")
    if fixtures_required():
        pytest.fail(f"{message}; CI=true / SVG_REQUIRE_FIXTURES=1 make this a failure, not a skip", pytrace=False)
    pytest.skip(message)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing entirely: no GPU either
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "mnist: needs ../shared/data/mnist.npz (fails in CI when missing)")


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


def pytest_runtest_setup(item):
    if item.get_closest_marker("mnist") is not None and not MNIST_PATH.is_file():
        missing_shared_data("MNIST (mnist.npz)", MNIST_PATH)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not (PARITY_DIR / "manifest.json").exists():
        missing_shared_data("parity fixtures (manifest.json)", PARITY_DIR / "manifest.json")
    return PARITY_DIR
