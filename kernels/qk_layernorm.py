"""Per-head QK-LayerNorm: LayerNorm over the last dim (head_dim) with affine weight and bias, eps 1e-5.

SVG's SiT normalises q and k of every head with one ``nn.LayerNorm(head_dim)`` per block (shared across heads;
svg_reference.md "QK-norm = nn.LayerNorm(head_dim) with affine weight and bias, eps 1e-5").

Anatomy: ``_qk_layernorm_kernel`` (Triton) -> ``_launch`` (checks, strides) -> custom op ``svg_kernels::qk_layernorm``
with a fake implementation -> public :func:`qk_layernorm`, which falls back to :func:`qk_layernorm_reference` when
``SVG_DISABLE_TRITON=1`` or the device cannot run Triton (see :mod:`kernels._common`).

Statistics are always fp32 (case B03: fp16 inputs around 300 would overflow a fp16 sum of squares), the block is the
next power of two of the head dim with the padding lanes masked (B07: dims 5 and 72), and the launcher passes the
real strides of up to four leading dims, so transposed views are read correctly without a copy (B08).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._common import (
    MAX_ROW_BLOCK, block_size, check_float_dtype, check_same_device, interpreted, needs_autograd, round_to_bf16,
    use_triton,
)


@triton.jit
def _qk_layernorm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    n_rows, size1, size2,            # leading dims (size0, size1, size2) flattened to n_rows
    stride0, stride1, stride2, stride_d,
    D, eps,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BF16_RTNE: tl.constexpr,
):
    # One program normalises BLOCK_R rows of length D; rows are decomposed back into 3 leading indices so that
    # any strided view (e.g. x.view(B,N,H,D).transpose(1,2)) is addressed with its real strides.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)                 # (BLOCK_R,)
    cols = tl.arange(0, BLOCK_D)                                              # (BLOCK_D,)
    row_ok = rows < n_rows
    col_ok = cols < D
    i2 = rows % size2
    i1 = (rows // size2) % size1
    i0 = rows // (size2 * size1)
    row_off = i0.to(tl.int64) * stride0 + i1.to(tl.int64) * stride1 + i2.to(tl.int64) * stride2
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + row_off[:, None] + cols[None, :] * stride_d, mask=mask, other=0.0).to(tl.float32)

    mean = tl.sum(x, axis=1) / D                                              # (BLOCK_R,) fp32
    xc = tl.where(mask, x - mean[:, None], 0.0)                               # padding lanes stay 0
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)                                           # eps inside the root (B04)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    if BF16_RTNE:  # interpreter only: make its truncating bf16 cast round like the GPU
        y = round_to_bf16(y)
    out_off = rows.to(tl.int64)[:, None] * D + cols[None, :]                  # output is contiguous
    tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=mask)


def qk_layernorm_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """PyTorch reference: ``F.layer_norm`` over the last dim in fp32, cast back to ``x.dtype``.

    Shapes: x (..., D) fp16/bf16/fp32; weight, bias (D,). Returns the shape and dtype of x.
    Source: ``nn.LayerNorm(head_dim, eps=1e-5)`` as SVG applies it to q and k (svg_reference.md, SiT block).
    """
    d = x.shape[-1]
    y = torch.nn.functional.layer_norm(x.float(), (d,), weight.float(), bias.float(), eps)
    return y.to(x.dtype)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
    check_float_dtype("x", x)
    check_float_dtype("weight", weight)
    check_float_dtype("bias", bias)
    check_same_device(x=x, weight=weight, bias=bias)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a last (head_dim) dimension of size >= 1; got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if tuple(weight.shape) != (d,) or tuple(bias.shape) != (d,):
        raise ValueError(
            f"weight and bias must have shape ({d},) to match x.shape[-1]; got weight {tuple(weight.shape)}, "
            f"bias {tuple(bias.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (an all-zero row would give 0/0); got {eps}")


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Run the Triton kernel. Raises ``ValueError`` for head dims above the largest supported block."""
    _check(x, weight, bias, eps)
    d = x.shape[-1]
    if d > MAX_ROW_BLOCK:
        raise ValueError(f"qk_layernorm kernel supports x.shape[-1] <= {MAX_ROW_BLOCK}; got {d}")
    view = x if x.dim() <= 4 else x.contiguous().view(-1, d)   # the kernel decomposes at most 3 leading dims
    while view.dim() < 4:
        view = view.unsqueeze(0)                   # (S0, S1, S2, D), still a view: strides are kept
    s0, s1, s2, _ = view.shape
    n_rows = s0 * s1 * s2
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return y
    block_d = block_size(d, minimum=2)
    block_r = max(1, min(64, 4096 // block_d))     # ~4k elements per program
    block_r = triton.next_power_of_2(block_r)
    grid = (triton.cdiv(n_rows, block_r),)
    _qk_layernorm_kernel[grid](
        view, weight.contiguous(), bias.contiguous(), y,
        n_rows, s1, s2,
        view.stride(0), view.stride(1), view.stride(2), view.stride(3),
        d, float(eps),
        BLOCK_R=block_r, BLOCK_D=block_d, BF16_RTNE=interpreted() and x.dtype == torch.bfloat16,
    )
    return y


@torch.library.custom_op("svg_kernels::qk_layernorm", mutates_args=())
def _qk_layernorm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    if use_triton(x):
        return _launch(x, weight, bias, eps)
    return qk_layernorm_reference(x, weight, bias, eps)


@_qk_layernorm_op.register_fake
def _qk_layernorm_fake(x, weight, bias, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def qk_layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-head LayerNorm over the last dim: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    Args:
        x: (..., D) fp16, bf16 or fp32, any strides (e.g. a transposed (B, H, N, D) view of (B, N, H, D)).
        weight, bias: (D,) affine parameters, shared by all heads.
        eps: added to the variance inside the square root; must be > 0. SVG uses 1e-5.

    Returns:
        Contiguous tensor with the shape and dtype of ``x``; statistics are computed in fp32.

    Raises:
        ValueError: shapes of weight/bias do not match D, eps <= 0, tensors on different devices.
        TypeError: a tensor is not fp16/bf16/fp32.

    Runs the Triton kernel on CUDA (or on CPU under ``TRITON_INTERPRET=1``), else :func:`qk_layernorm_reference`;
    ``SVG_DISABLE_TRITON=1`` forces the reference. Source: SVG SiT block, QK-norm (svg_reference.md).
    """
    _check(x, weight, bias, eps)
    if x.shape[-1] > MAX_ROW_BLOCK or needs_autograd(x, weight, bias):  # the kernel is forward-only
        return qk_layernorm_reference(x, weight, bias, eps)
    return _qk_layernorm_op(x, weight, bias, float(eps))
