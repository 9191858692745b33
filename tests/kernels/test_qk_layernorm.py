"""QK-LayerNorm kernel vs its fp32 reference: awkward head dims, strided views, fp16 extremes, cases B03/B04/B07/B08."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.qk_layernorm import qk_layernorm_reference
from tests.kernels.tolerance import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _affine(d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(d)
    return (1 + 0.5 * torch.randn(d, generator=gen)).to(device), (0.1 * torch.randn(d, generator=gen)).to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 72), (1, 2, 17, 36), (1, 1, 257, 8), (3, 5)], ids=str)
def test_matches_reference(device, dtype, shape):
    torch.manual_seed(0)
    x = (3 * torch.randn(shape) + 1).to(device, dtype)
    w, b = _affine(shape[-1], device)
    y = kernels.qk_layernorm(x, w, b)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, qk_layernorm_reference(x.float(), w, b), dtype)


def test_b03_fp16_constant_300_gives_bias_without_overflow(device):
    # B03 (written for RMSNorm) adapted to SVG's LayerNorm: a constant row has mean 300 and variance 0, so the fp32
    # reference gives exactly `bias`; a fp16 sum of squares (300² · 72 > 65504) would overflow to inf.
    x = torch.full((1, 16, 256, 72), 300.0, dtype=torch.float16, device=device)
    w, b = _affine(72, device)
    y = kernels.qk_layernorm(x, w, b)
    expected = qk_layernorm_reference(x.float(), w, b)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(expected, b.expand_as(expected), atol=0, rtol=0)
    assert_close(y, expected, torch.float16)


def test_fp16_near_overflow_magnitudes(device):
    torch.manual_seed(1)
    x = (torch.rand(1, 2, 17, 72) * 2 - 1).mul(6.0e4).to(device, torch.float16)  # |x| up to 60000 < 65504
    w, b = _affine(72, device)
    y = kernels.qk_layernorm(x, w, b)
    assert_close(y, qk_layernorm_reference(x.float(), w, b), torch.float16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_b04_zero_row_is_finite_and_others_unaffected(device, dtype):
    torch.manual_seed(2)
    x = torch.randn(1, 2, 17, 72).to(device, dtype)
    x[0, 1, 5] = 0
    w, b = _affine(72, device)
    y = kernels.qk_layernorm(x, w, b)
    assert torch.isfinite(y).all()
    # eps inside the root: 0 · rsqrt(0 + eps) = 0, so the zero row comes back as the bias
    assert_close(y[0, 1, 5], b.to(dtype), dtype)
    assert_close(y, qk_layernorm_reference(x.float(), w, b), dtype)


@pytest.mark.parametrize(
    "shape,dtype,atol",
    [((2, 5), torch.float32, 1e-5), ((4, 72), torch.float32, 1e-5), ((4, 72), torch.bfloat16, 1e-2)],
    ids=["fp32-2x5", "fp32-4x72", "bf16-4x72"],
)
def test_b07_non_power_of_two_dims_match_torch(device, shape, dtype, atol):
    torch.manual_seed(3)
    x = torch.randn(shape).to(device, dtype)
    w = torch.ones(shape[-1], device=device)
    b = torch.zeros(shape[-1], device=device)
    y = kernels.qk_layernorm(x, w, b)
    expected = torch.nn.functional.layer_norm(x.float(), (shape[-1],), w, b, 1e-5)
    torch.testing.assert_close(y.float(), expected, atol=atol, rtol=0)


def test_b08_transposed_view_equals_contiguous(device):
    torch.manual_seed(4)
    bsz, n, h, d = 2, 17, 3, 72
    x = torch.randn(bsz, n * h * d, device=device).view(bsz, n, h, d).transpose(1, 2)  # (B, H, N, D) view
    assert not x.is_contiguous() and x.stride(-1) == 1
    w, b = _affine(d, device)
    torch.testing.assert_close(kernels.qk_layernorm(x, w, b), kernels.qk_layernorm(x.contiguous(), w, b))
    assert_close(kernels.qk_layernorm(x, w, b), qk_layernorm_reference(x.contiguous(), w, b))


def test_strided_last_dim_and_five_dims(device):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 4, 5, 16, device=device)[..., ::2]  # stride(-1) = 2, 5-D
    w, b = _affine(8, device)
    assert_close(kernels.qk_layernorm(x, w, b), qk_layernorm_reference(x, w, b))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weight": torch.ones(71)}, r"weight and bias must have shape \(72,\)"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"x": torch.zeros(2, 72, dtype=torch.int32)}, "x.dtype must be one of"),
    ],
    ids=["weight-shape", "eps", "dtype"],
)
def test_bad_input_names_field_and_value(kwargs, match):
    args = {"x": torch.zeros(2, 72), "weight": torch.ones(72), "bias": torch.zeros(72), "eps": 1e-5}
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.qk_layernorm(**args)
