"""Fused attention (+ QK-LayerNorm on load) vs the fp32 reference and SDPA: head dims 72/36/8, odd N, B05/B06."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.attention import attention_reference
from tests.kernels.tolerance import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _qkv(shape, dtype, device, seed=0, n_k=None):
    gen = torch.Generator().manual_seed(seed)
    b, h, n, d = shape
    kv_shape = (b, h, n if n_k is None else n_k, d)
    q = torch.randn(shape, generator=gen)
    k = torch.randn(kv_shape, generator=gen)
    v = torch.randn(kv_shape, generator=gen)
    return (t.to(device, dtype) for t in (q, k, v))


def _norm(d, device, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = (1 + 0.3 * torch.randn(d, generator=gen)).to(device)
    return weight, (0.1 * torch.randn(d, generator=gen)).to(device), 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d", [(1, 72), (17, 36), (256, 8), (257, 72)], ids=lambda v: str(v))
def test_matches_reference(device, dtype, n, d):
    q, k, v = _qkv((1, 1, n, d), dtype, device)
    out = kernels.flash_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    assert_close(out, attention_reference(q.float(), k.float(), v.float()), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_qk_layernorm_equals_separate(device, dtype):
    q, k, v = _qkv((1, 2, 17, 72), dtype, device, seed=1)
    q_norm, k_norm = _norm(72, device, 2), _norm(72, device, 3)
    fused = kernels.flash_attention(q, k, v, q_norm=q_norm, k_norm=k_norm)
    separate = kernels.flash_attention(kernels.qk_layernorm(q, *q_norm[:2]), kernels.qk_layernorm(k, *k_norm[:2]), v)
    expected = attention_reference(q.float(), k.float(), v.float(), q_norm, k_norm)
    assert_close(fused, expected, dtype)
    assert_close(separate, expected, dtype)


def test_b05_head_dim_72_bf16_matches_sdpa(device):
    q, k, v = _qkv((2, 16, 256, 72), torch.bfloat16, device, seed=4)
    out = kernels.flash_attention(q, k, v)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert (out.float() - expected).abs().max().item() < 2e-2


def test_b06_dims_past_64_are_not_truncated(device):
    # q, k zero in dims 0-63 and random in 64-71: a kernel that reads only 64 dims sees all-zero scores, i.e.
    # uniform attention, which differs from the reference by far more than the tolerance.
    q, k, v = _qkv((1, 2, 64, 72), torch.float32, device, seed=5)
    q[..., :64] = 0
    k[..., :64] = 0
    q[..., 64:] *= 3
    out = kernels.flash_attention(q, k, v)
    expected = attention_reference(q, k, v)
    uniform = v.mean(dim=2, keepdim=True).expand_as(v)
    assert (expected - uniform).abs().max().item() > 0.1
    assert_close(out, expected)


def test_non_contiguous_views_from_packed_qkv(device):
    # the SiT layout: qkv (B, N, 3, H, D) permuted to (3, B, H, N, D); q, k, v are strided views
    torch.manual_seed(6)
    b, n, h, d = 1, 17, 2, 72
    qkv = torch.randn(b, n, 3, h, d, device=device, dtype=torch.float16).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert not q.is_contiguous()
    out = kernels.flash_attention(q, k, v)
    assert_close(out, attention_reference(q.contiguous().float(), k.contiguous().float(), v.contiguous().float()),
                 torch.float16)


def test_cross_attention_and_explicit_scale(device):
    q, k, v = _qkv((1, 1, 17, 64), torch.float32, device, seed=7, n_k=33)
    out = kernels.flash_attention(q, k, v, scale=0.05)
    assert_close(out, attention_reference(q, k, v, scale=0.05))


def test_all_zero_query_rows_give_mean_of_values(device):
    q, k, v = _qkv((1, 1, 17, 72), torch.bfloat16, device, seed=8)
    q[0, 0, 3] = 0  # zero scores -> uniform weights over the keys
    out = kernels.flash_attention(q, k, v)
    assert torch.isfinite(out).all()
    assert_close(out[0, 0, 3], v[0, 0].float().mean(dim=0), torch.bfloat16)
    assert_close(out, attention_reference(q.float(), k.float(), v.float()), torch.bfloat16)


def test_fp16_near_overflow(device):
    # values near the fp16 limit stay finite (output is a convex combination of v), and q at 3e4 is tamed by the
    # fused QK-LayerNorm computed in fp32 (a fp16 variance would overflow).
    q, k, v = _qkv((1, 1, 17, 72), torch.float16, device, seed=9)
    v = (v.float().clamp(-1, 1) * 6.0e4).half()
    q = (q.float().clamp(-2, 2) * 3.0e4).half()
    q_norm = _norm(72, device, 10)
    out = kernels.flash_attention(q, k, v, q_norm=q_norm)
    expected = attention_reference(q.float(), k.float(), v.float(), q_norm)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float() / 6.0e4, expected / 6.0e4, atol=2e-3, rtol=2e-3)


def test_disable_switch_runs_reference(device, monkeypatch):
    monkeypatch.setenv(kernels.DISABLE_ENV, "1")
    assert kernels.backend_name(device) == "reference"
    q, k, v = _qkv((1, 1, 5, 8), torch.float32, device, seed=11)
    torch.testing.assert_close(kernels.flash_attention(q, k, v), attention_reference(q, k, v))


def test_head_dim_above_128_falls_back_to_reference(device):
    q, k, v = _qkv((1, 1, 3, 136), torch.float32, device, seed=12)
    assert not kernels.attention.supports(q)
    assert_close(kernels.flash_attention(q, k, v), attention_reference(q, k, v))


def test_traceable_by_torch_compile(device):
    # the fake implementation lets dynamo/AOT trace the op without running it on real data
    q, k, v = _qkv((1, 2, 17, 72), torch.float32, device, seed=13)
    q_norm = _norm(72, device, 14)

    def block(q, k, v):
        return kernels.flash_attention(q, k, v, q_norm=q_norm, k_norm=q_norm) * 2

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    assert_close(compiled(q, k, v), 2 * attention_reference(q, k, v, q_norm, q_norm))
    torch.library.opcheck(
        torch.ops.svg_kernels.flash_attention.default,
        (q, k, v, q_norm[0], q_norm[1], 1e-5, None, None, 0.0, 1 / math.sqrt(72)),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)), r"q must be 4-D"),
        (lambda: (torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8).half(), torch.zeros(1, 1, 3, 8)), "share one dtype"),
        (lambda: (torch.zeros(1, 1, 3, 8), torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8)), "must agree on B, H"),
        (lambda: (torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 0, 8), torch.zeros(1, 1, 0, 8)), "at least one key"),
    ],
    ids=["rank", "dtype", "heads", "no-keys"],
)
def test_bad_input_names_field_and_value(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.flash_attention(*make())


def test_bad_norm_triple_shape():
    q = torch.zeros(1, 1, 3, 8)
    with pytest.raises(ValueError, match=r"q_norm weight and bias must have shape \(8,\)"):
        kernels.flash_attention(q, q, q, q_norm=(torch.ones(7), torch.zeros(7), 1e-5))


def test_autograd_inputs_take_the_differentiable_path(device):
    # the kernels are forward-only: with autograd tracking, flash_attention must still give correct gradients
    q, k, v = _qkv((1, 2, 17, 72), torch.float32, device, seed=15)
    q_norm = _norm(72, device, 16)
    weight = q_norm[0].clone().requires_grad_(True)
    q.requires_grad_(True)
    out = kernels.flash_attention(q, k, v, q_norm=(weight, q_norm[1], 1e-5))
    out.square().sum().backward()
    q_ref = q.detach().clone().requires_grad_(True)
    weight_ref = q_norm[0].clone().requires_grad_(True)
    attention_reference(q_ref, k, v, (weight_ref, q_norm[1], 1e-5)).square().sum().backward()
    assert_close(q.grad, q_ref.grad)
    assert_close(weight.grad, weight_ref.grad)
