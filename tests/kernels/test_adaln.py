"""adaLN modulation and gated residual kernels vs their fp32 references (C = 5, 72, 1152; N = 1, 17)."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.adaln import adaln_modulate_reference, gated_residual_reference
from tests.kernels.tolerance import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(b, n, c, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(b, n, c, generator=gen) + 0.5).to(device, dtype)
    shift = (0.5 * torch.randn(b, c, generator=gen)).to(device, dtype)
    scale = (0.5 * torch.randn(b, c, generator=gen)).to(device, dtype)
    return x, shift, scale


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,n,c", [(1, 1, 5), (2, 17, 72), (1, 3, 1152)], ids=str)
def test_modulate_matches_reference(device, dtype, b, n, c):
    x, shift, scale = _inputs(b, n, c, dtype, device)
    y = kernels.adaln_modulate(x, shift, scale)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, adaln_modulate_reference(x.float(), shift.float(), scale.float()), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,n,c", [(1, 1, 5), (2, 17, 72), (1, 3, 1152)], ids=str)
def test_gated_residual_matches_reference(device, dtype, b, n, c):
    x, gate, _ = _inputs(b, n, c, dtype, device, seed=1)
    y = _inputs(b, n, c, dtype, device, seed=2)[0]
    out = kernels.gated_residual(x, gate, y)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, gated_residual_reference(x.float(), gate.float(), y.float()), dtype)


def test_modulate_zero_rows_give_shift(device):
    x, shift, scale = _inputs(2, 17, 72, torch.float32, device, seed=3)
    x[1, 4] = 0
    y = kernels.adaln_modulate(x, shift, scale)
    assert torch.isfinite(y).all()
    assert_close(y[1, 4], shift[1])  # LN(0) = 0, so the row is exactly the shift
    assert_close(y, adaln_modulate_reference(x, shift, scale))


def test_modulate_fp16_near_overflow(device):
    x, shift, scale = _inputs(1, 17, 72, torch.float16, device, seed=4)
    x = (x.float().clamp(-3, 3) * 2.0e4).half()  # |x| up to 60000: a fp16 variance would be inf
    y = kernels.adaln_modulate(x, shift, scale)
    assert_close(y, adaln_modulate_reference(x.float(), shift.float(), scale.float()), torch.float16)


def test_non_contiguous_inputs(device):
    # x as a transposed view, shift/scale as column slices of the (B, 6C) adaLN projection output
    torch.manual_seed(5)
    b, n, c = 2, 17, 72
    x = torch.randn(b, c, n, device=device).transpose(1, 2)
    proj = torch.randn(b, 6 * c, device=device)
    shift, scale, gate = proj[:, :c], proj[:, c:2 * c], proj[:, 2 * c:3 * c]
    y = torch.randn(b, c, n, device=device).transpose(1, 2)
    assert not x.is_contiguous() and not shift.is_contiguous()
    assert_close(kernels.adaln_modulate(x, shift, scale), adaln_modulate_reference(x, shift, scale))
    assert_close(kernels.gated_residual(x, gate, y), gated_residual_reference(x, gate, y))


def test_traceable_by_torch_compile(device):
    x, shift, scale = _inputs(1, 5, 8, torch.float32, device, seed=6)

    def block(x, shift, scale):
        return kernels.gated_residual(x, scale, kernels.adaln_modulate(x, shift, scale))

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    expected = gated_residual_reference(x, scale, adaln_modulate_reference(x, shift, scale))
    assert_close(compiled(x, shift, scale), expected)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: kernels.adaln_modulate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)), "x must be 3-D"),
        (lambda: kernels.adaln_modulate(torch.zeros(2, 3, 4), torch.zeros(2, 5), torch.zeros(2, 4)),
         r"shift must have shape \(B, C\) = \(2, 4\); got \(2, 5\)"),
        (lambda: kernels.adaln_modulate(torch.zeros(1, 3, 4), torch.zeros(1, 4), torch.zeros(1, 4), eps=-1.0),
         "eps must be > 0; got -1.0"),
        (lambda: kernels.gated_residual(torch.zeros(1, 3, 4), torch.zeros(1, 4), torch.zeros(1, 2, 4)),
         r"y must have the shape of x \(1, 3, 4\); got \(1, 2, 4\)"),
    ],
    ids=["rank", "shift-shape", "eps", "y-shape"],
)
def test_bad_input_names_field_and_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_autograd_inputs_take_the_differentiable_path(device):
    x, shift, scale = _inputs(1, 5, 8, torch.float32, device, seed=7)
    x.requires_grad_(True)
    kernels.gated_residual(x, scale, kernels.adaln_modulate(x, shift, scale)).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    gated_residual_reference(x_ref, scale, adaln_modulate_reference(x_ref, shift, scale)).sum().backward()
    assert_close(x.grad, x_ref.grad)
