"""Kernel tests: run the Triton kernels through the CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` must be set before ``kernels`` is imported, because ``@triton.jit`` chooses between compiled
and interpreted kernels when it decorates them. On a CUDA machine it is left alone, so the compiled kernels run.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

@pytest.fixture(scope="session")
def device() -> str:
    """Where the kernels run: the GPU if there is one, else the CPU through the Triton interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session", autouse=True)
def _kernels_are_triton(device):
    """Fail loudly instead of silently comparing the reference with itself."""
    import kernels

    if kernels.triton_disabled():
        pytest.fail(f"{kernels.DISABLE_ENV} is set: the kernel tests would only test the references")
    backend = kernels.backend_name(device)
    if backend == "reference":
        pytest.fail(
            f"kernels run the PyTorch reference on {device}: kernels was imported before TRITON_INTERPRET=1 was set "
            "(export TRITON_INTERPRET=1 when running the whole suite on a CPU machine)"
        )
