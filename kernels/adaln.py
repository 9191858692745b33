"""adaLN modulation ``LN(x)·(1 + scale) + shift`` in one pass, and the gated residual add ``x + gate·y``.

Both are the DiT/SiT block's memory-bound glue (Peebles & Xie 2023, DiT §3.2 "adaLN-Zero"; SVG keeps it:
``norm1/norm2 = LayerNorm(h, elementwise_affine=False, eps=1e-6)``, ``x += gate·Attn(norm1(x)·(1+scale)+shift)``,
svg_reference.md). PyTorch runs LayerNorm, mul and add as separate kernels, reading x three times; here each row of
x is read once and written once.

Anatomy per op: Triton kernel -> ``_launch_*`` (checks, real strides) -> custom op + fake -> public function that
falls back to the ``*_reference`` beside it when ``SVG_DISABLE_TRITON=1`` or the device cannot run Triton.
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
def _adaln_modulate_kernel(
    x_ptr, shift_ptr, scale_ptr, y_ptr,
    n_rows, N, C,
    sxb, sxn, sxc, s_shift_b, s_shift_c, s_scale_b, s_scale_c,
    eps,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BF16_RTNE: tl.constexpr,
):
    # grid = (cdiv(B * N, ROWS),): one program normalises ROWS token rows of C channels.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)                     # (ROWS,)
    cols = tl.arange(0, BLOCK_C)                                            # (BLOCK_C,)
    row_ok = rows < n_rows
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    b = (rows // N).to(tl.int64)
    n = (rows % N).to(tl.int64)
    x = tl.load(x_ptr + (b * sxb + n * sxn)[:, None] + cols[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    shift = tl.load(shift_ptr + (b * s_shift_b)[:, None] + cols[None, :] * s_shift_c, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + (b * s_scale_b)[:, None] + cols[None, :] * s_scale_c, mask=mask, other=0.0)
    y = xc * rstd[:, None] * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    if BF16_RTNE:  # interpreter only: make its truncating bf16 cast round like the GPU
        y = round_to_bf16(y)
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_kernel(
    x_ptr, gate_ptr, y_ptr, out_ptr,
    n_rows, N, C,
    sxb, sxn, sxc, sgb, sgc, syb, syn, syc,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BF16_RTNE: tl.constexpr,
):
    # grid = (cdiv(B * N, ROWS),): out[b, n] = x[b, n] + gate[b] * y[b, n], in fp32.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < C)[None, :]
    b = (rows // N).to(tl.int64)
    n = (rows % N).to(tl.int64)
    x = tl.load(x_ptr + (b * sxb + n * sxn)[:, None] + cols[None, :] * sxc, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + (b * syb + n * syn)[:, None] + cols[None, :] * syc, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + (b * sgb)[:, None] + cols[None, :] * sgc, mask=mask, other=0.0).to(tl.float32)
    out = x + g * y
    if BF16_RTNE:
        out = round_to_bf16(out)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def _rows_per_program(block_c: int) -> int:
    """Token rows per program: ~2k elements on the GPU (one SVG-XL row of 1152 -> 2048 lanes), ~8k under the
    interpreter, whose cost is per program rather than per element."""
    budget = 8192 if interpreted() else 2048
    return max(1, min(64, budget // block_c))


def adaln_modulate_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """PyTorch reference: ``layer_norm(x, no affine, eps) * (1 + scale[:, None]) + shift[:, None]`` in fp32.

    Shapes: x (B, N, C); shift, scale (B, C). Returns (B, N, C) in x's dtype. Source: DiT ``modulate`` (adaLN).
    """
    c = x.shape[-1]
    y = torch.nn.functional.layer_norm(x.float(), (c,), eps=eps)
    return (y * (1.0 + scale.float()[:, None, :]) + shift.float()[:, None, :]).to(x.dtype)


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PyTorch reference: ``x + gate[:, None] * y`` in fp32, returned in x's dtype. x, y (B, N, C); gate (B, C)."""
    return (x.float() + gate.float()[:, None, :] * y.float()).to(x.dtype)


def _check_bnc(x: torch.Tensor, per_batch: dict) -> None:
    check_float_dtype("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (B, N, C); got shape {tuple(x.shape)}")
    bsz, _, c = x.shape
    for name, t in per_batch.items():
        check_float_dtype(name, t)
        if tuple(t.shape) != (bsz, c):
            raise ValueError(f"{name} must have shape (B, C) = ({bsz}, {c}); got {tuple(t.shape)}")
    check_same_device(x=x, **per_batch)
    if c > MAX_ROW_BLOCK:
        raise ValueError(f"channel count C must be <= {MAX_ROW_BLOCK}; got {c}")


def _launch_rows(kernel, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *scalars) -> torch.Tensor:
    """Run a row-wise kernel over x (B, N, C) with two more operands ``a``, ``b`` (their real strides are passed):
    ROWS rows of BLOCK_C (C padded to a power of two, tail lanes masked) per program."""
    bsz, n, c = x.shape
    out = torch.empty((bsz, n, c), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_c = block_size(c, minimum=2)
    rows = _rows_per_program(block_c)
    kernel[(triton.cdiv(bsz * n, rows),)](
        x, a, b, out, bsz * n, n, c,
        *x.stride(), *a.stride(), *b.stride(),
        *scalars, ROWS=rows, BLOCK_C=block_c, BF16_RTNE=interpreted() and x.dtype == torch.bfloat16,
        num_warps=4 if block_c <= 1024 else 8,
    )
    return out


def _launch_modulate(x, shift, scale, eps) -> torch.Tensor:
    return _launch_rows(_adaln_modulate_kernel, x, shift, scale, float(eps))


def _launch_gated(x, gate, y) -> torch.Tensor:
    return _launch_rows(_gated_residual_kernel, x, gate, y)


@torch.library.custom_op("svg_kernels::adaln_modulate", mutates_args=())
def _adaln_modulate_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    if use_triton(x):
        return _launch_modulate(x, shift, scale, eps)
    return adaln_modulate_reference(x, shift, scale, eps)


@_adaln_modulate_op.register_fake
def _adaln_modulate_fake(x, shift, scale, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("svg_kernels::gated_residual", mutates_args=())
def _gated_residual_op(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if use_triton(x):
        return _launch_gated(x, gate, y)
    return gated_residual_reference(x, gate, y)


@_gated_residual_op.register_fake
def _gated_residual_fake(x, gate, y):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Fused adaLN: ``LayerNorm(x; no affine, eps) * (1 + scale) + shift`` per batch row.

    Args:
        x: (B, N, C) tokens, fp16/bf16/fp32, any strides.
        shift, scale: (B, C) modulation from the conditioning (any float dtype, any strides).
        eps: LayerNorm epsilon, > 0 (SVG/DiT use 1e-6).

    Returns:
        (B, N, C) contiguous, dtype of x; statistics and the modulation are computed in fp32.

    Raises:
        ValueError: wrong ranks or shapes, C > 16384, eps <= 0, mixed devices. TypeError: non-float dtypes.

    Source: DiT adaLN ``modulate(norm(x), shift, scale)`` (Peebles & Xie 2023, §3.2), as used by SVG's SiT.
    """
    _check_bnc(x, {"shift": shift, "scale": scale})
    if not eps > 0:
        raise ValueError(f"eps must be > 0; got {eps}")
    if needs_autograd(x, shift, scale):  # the kernel is forward-only
        return adaln_modulate_reference(x, shift, scale, eps)
    return _adaln_modulate_op(x, shift, scale, float(eps))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gated residual add ``x + gate[:, None, :] * y`` in one pass (fp32 arithmetic).

    Args:
        x: (B, N, C) residual stream; y: (B, N, C) branch output (attention or MLP); gate: (B, C). Any strides.

    Returns:
        (B, N, C) contiguous, dtype of x (a new tensor; x is not modified).

    Raises:
        ValueError: shapes disagree or C > 16384, mixed devices. TypeError: non-float dtypes.

    Source: DiT adaLN-Zero block ``x = x + gate.unsqueeze(1) * branch`` (Peebles & Xie 2023, §3.2).
    """
    _check_bnc(x, {"gate": gate})
    check_float_dtype("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must have the shape of x {tuple(x.shape)}; got {tuple(y.shape)}")
    check_same_device(x=x, y=y)
    if needs_autograd(x, gate, y):  # the kernel is forward-only
        return gated_residual_reference(x, gate, y)
    return _gated_residual_op(x, gate, y)
