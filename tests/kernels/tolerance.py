"""Per-dtype tolerance table for comparing kernels with their fp32 PyTorch references."""

from __future__ import annotations

import torch

# Per-dtype tolerances (atol, rtol) against the fp32 PyTorch reference. bf16 keeps 8 mantissa bits (one ulp at 1.0
# is 7.8e-3), fp16 keeps 11 (9.8e-4); fp32 kernels use IEEE dots (no TF32), so only summation order differs.
TOLERANCE = {
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Compare in fp32 with the tolerance of ``dtype`` (default: actual's dtype); fail on any non-finite value."""
    assert torch.isfinite(actual.float()).all(), "kernel output has inf/NaN"
    atol, rtol = TOLERANCE[dtype or actual.dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)
