"""Flash-style attention forward with optional per-head QK-LayerNorm applied as q and k tiles load.

Algorithm: online softmax over key blocks with fp32 running max / sum / accumulator (Dao et al. 2022,
FlashAttention, Alg. 1, forward only; exp2 with log2(e) folded into the q scale as in FlashAttention-2 §3.1).
SVG's QK-norm (nn.LayerNorm(head_dim), affine, eps 1e-5, svg_reference.md) is fused into the prologue: each q tile
is normalised once when it is loaded, each k tile when it is loaded, so q and k are never written back normalised.

Head dims: any D in [1, 128]. The D block is the next power of two (>= 16, the smallest ``tl.dot`` extent) and the
tail lanes are masked to 0 on load, so nothing is truncated (case B06: a kernel built for 64 dims would ignore
dims 64-71 of SVG-XL's D = 72). Token counts need not be powers of two (masked rows and key columns).

Anatomy: ``_attention_fwd_kernel`` -> ``_launch`` (checks) -> custom op ``svg_kernels::flash_attention`` + fake ->
public :func:`flash_attention`, falling back to :func:`attention_reference` when ``SVG_DISABLE_TRITON=1``, the
device cannot run Triton, or the shape is outside what the kernel supports.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from kernels._common import (
    block_size, check_float_dtype, check_same_device, interpreted, needs_autograd, round_to_bf16, use_triton,
)

log = logging.getLogger(__name__)

MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634  # log2(e): softmax computed with exp2

# A norm triple as the public API takes it: (weight (D,), bias (D,), eps).
NormTriple = Tuple[torch.Tensor, torch.Tensor, float]


@triton.jit
def _layernorm_tile(x, w_ptr, b_ptr, cols, col_ok, D, eps):
    """LayerNorm of a (rows, BLOCK_D) fp32 tile over its first D lanes; padding lanes come out 0."""
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(col_ok[None, :], x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return xc * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    qw_ptr, qb_ptr, kw_ptr, kb_ptr,
    sqb, sqh, sqn, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    H, N_Q, N_K, D,
    qk_scale, q_eps, k_eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    Q_NORM: tl.constexpr, K_NORM: tl.constexpr, IEEE_FP32: tl.constexpr, DOT_FP32: tl.constexpr,
    BF16_RTNE: tl.constexpr,
):
    # grid = (cdiv(N_Q, BLOCK_M), B * H): one program owns BLOCK_M query rows of one (batch, head).
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_base = q_ptr + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = k_ptr + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + h.to(tl.int64) * svh

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                        # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_D)                                          # (BLOCK_D,)
    row_ok = rows < N_Q
    col_ok = cols < D                                                     # tail lanes of the padded head dim
    q = tl.load(q_base + rows[:, None] * sqn + cols[None, :] * sqd,
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)        # (BLOCK_M, BLOCK_D)
    in_dtype = q.dtype
    q = q.to(tl.float32)
    if Q_NORM:
        q = _layernorm_tile(q, qw_ptr, qb_ptr, cols, col_ok, D, q_eps)
        q = tl.where(row_ok[:, None], q, 0.0)
    q = q * qk_scale                                                      # softmax scale and log2(e) folded in
    if BF16_RTNE:  # interpreter only: its bf16 cast truncates; round like the GPU
        q = round_to_bf16(q)
    q = q.to(in_dtype)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)             # running row max (log2 domain)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                           # running row sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start in range(0, N_K, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)                              # (BLOCK_N,)
        key_ok = keys < N_K
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k = tl.load(k_base + keys[:, None] * skn + cols[None, :] * skd, mask=kv_mask, other=0.0)
        if K_NORM:
            k = _layernorm_tile(k.to(tl.float32), kw_ptr, kb_ptr, cols, col_ok, D, k_eps)
            if BF16_RTNE:
                k = round_to_bf16(k)
            k = k.to(in_dtype)
        if DOT_FP32:  # interpreter: bf16 operands are unsupported by its numpy dot; values are already rounded
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
        elif IEEE_FP32:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")            # (BLOCK_M, BLOCK_N) fp32
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(key_ok[None, :], s, float("-inf"))
        # every block holds >= 1 valid key, so m_new is finite and exp2 never sees (-inf) - (-inf)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + keys[:, None] * svn + cols[None, :] * svd, mask=kv_mask, other=0.0)
        if DOT_FP32:
            if BF16_RTNE:
                p = round_to_bf16(p)
            pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
        elif IEEE_FP32:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    out = acc / l_i[:, None]
    if BF16_RTNE:
        out = round_to_bf16(out)
    o_base = o_ptr + bh.to(tl.int64) * N_Q * D                             # output (B, H, N_Q, D) contiguous
    tl.store(o_base + rows[:, None] * D + cols[None, :], out.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm: Optional[NormTriple] = None,
    k_norm: Optional[NormTriple] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """PyTorch reference: optional LayerNorm of q/k over D, then softmax(q kᵀ·scale) v, all in fp32.

    Shapes: q (B, H, N_q, D), k and v (B, H, N_k, D); returns (B, H, N_q, D) in q's dtype. ``scale`` defaults to
    1/sqrt(D). Source: scaled dot-product attention (Vaswani et al. 2017, eq. 1) with SVG's QK-norm.
    """
    d = q.shape[-1]
    qf, kf, vf = q.float(), k.float(), v.float()
    if q_norm is not None:
        qf = torch.nn.functional.layer_norm(qf, (d,), q_norm[0].float(), q_norm[1].float(), q_norm[2])
    if k_norm is not None:
        kf = torch.nn.functional.layer_norm(kf, (d,), k_norm[0].float(), k_norm[1].float(), k_norm[2])
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    weights = torch.softmax(qf @ kf.transpose(-2, -1) * scale, dim=-1)    # (B, H, N_q, N_k)
    return (weights @ vf).to(q.dtype)


def _differentiable_attention(q, k, v, q_norm, k_norm, scale) -> torch.Tensor:
    """Autograd path (the kernel is forward-only): LayerNorm then SDPA, in the input dtype."""
    d = q.shape[-1]
    if q_norm is not None:
        q = torch.nn.functional.layer_norm(q, (d,), q_norm[0].to(q.dtype), q_norm[1].to(q.dtype), q_norm[2])
    if k_norm is not None:
        k = torch.nn.functional.layer_norm(k, (d,), k_norm[0].to(k.dtype), k_norm[1].to(k.dtype), k_norm[2])
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


def _check(q, k, v, q_norm, k_norm, scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_dtype(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D); got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    check_same_device(q=q, k=k, v=v)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q (B, H, N_q, D) and k (B, H, N_k, D) must agree on B, H and D; got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if k.shape[2] < 1:
        raise ValueError(f"need at least one key: k.shape[2] must be >= 1; got {k.shape[2]}")
    d = q.shape[-1]
    for name, triple in (("q_norm", q_norm), ("k_norm", k_norm)):
        if triple is None:
            continue
        if len(triple) != 3:
            raise ValueError(f"{name} must be a (weight, bias, eps) triple; got {len(triple)} items")
        weight, bias, eps = triple
        if tuple(weight.shape) != (d,) or tuple(bias.shape) != (d,):
            raise ValueError(
                f"{name} weight and bias must have shape ({d},); got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        check_same_device(q=q, **{f"{name}.weight": weight, f"{name}.bias": bias})
        if not eps > 0:
            raise ValueError(f"{name} eps must be > 0; got {eps}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0; got {scale}")


def supports(q: torch.Tensor) -> bool:
    """Whether the Triton kernel handles q's head dim (1..128); other sizes run the reference."""
    return 1 <= q.shape[-1] <= MAX_HEAD_DIM


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch(q, k, v, qw, qb, q_eps, kw, kb, k_eps, scale) -> torch.Tensor:
    """Run the Triton kernel on (B, H, N, D) tensors with any strides. Raises ``ValueError`` for D > 128."""
    bsz, heads, n_q, d = q.shape
    n_k = k.shape[2]
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"flash_attention kernel supports head_dim in [1, {MAX_HEAD_DIM}]; got {d}")
    out = torch.empty((bsz, heads, n_q, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    block_d = block_size(d, minimum=16)
    fp32 = q.dtype == torch.float32
    if interpreted():
        # interpreter: cost is per program and per loop step, so use the largest tiles the shape allows
        block_m, block_n = min(256, block_size(n_q)), min(256, block_size(n_k))
        warps, stages = 4, 1
    elif fp32:
        block_m, block_n, warps, stages = 64, 32, 4, 2      # fp32 tiles are twice the bytes: keep shared memory low
    else:
        # 128-row tiles (FlashAttention-2 §3.3 sizes); 64 rows when 128-row tiles would leave SMs idle, as with
        # SVG-XL at 1 image (2 rows x 16 heads x 2 tiles = 64 programs). Untuned: see docs/kernels.md.
        block_m = 128 if triton.cdiv(n_q, 128) * bsz * heads >= _sm_count(q.device) else 64
        block_n = 64
        warps, stages = (4, 3) if block_d <= 64 or block_m == 64 else (8, 3)
    dummy = q  # unused pointer when a norm is off (constexpr branch removes the loads)
    qw, qb, kw, kb = (None if t is None else t.contiguous() for t in (qw, qb, kw, kb))
    grid = (triton.cdiv(n_q, block_m), bsz * heads)
    _attention_fwd_kernel[grid](
        q, k, v, out,
        qw if qw is not None else dummy, qb if qb is not None else dummy,
        kw if kw is not None else dummy, kb if kb is not None else dummy,
        *q.stride(), *k.stride(), *v.stride(),
        heads, n_q, n_k, d,
        scale * LOG2E, q_eps, k_eps,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        Q_NORM=qw is not None, K_NORM=kw is not None, IEEE_FP32=fp32, DOT_FP32=interpreted(),
        BF16_RTNE=interpreted() and q.dtype == torch.bfloat16,
        num_warps=warps, num_stages=stages,
    )
    return out


@torch.library.custom_op("svg_kernels::flash_attention", mutates_args=())
def _flash_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_weight: Optional[torch.Tensor], q_bias: Optional[torch.Tensor], q_eps: float,
    k_weight: Optional[torch.Tensor], k_bias: Optional[torch.Tensor], k_eps: float,
    scale: float,
) -> torch.Tensor:
    if use_triton(q) and supports(q):
        return _launch(q, k, v, q_weight, q_bias, q_eps, k_weight, k_bias, k_eps, scale)
    q_norm = None if q_weight is None else (q_weight, q_bias, q_eps)
    k_norm = None if k_weight is None else (k_weight, k_bias, k_eps)
    return attention_reference(q, k, v, q_norm, k_norm, scale)


@_flash_attention_op.register_fake
def _flash_attention_fake(q, k, v, q_weight, q_bias, q_eps, k_weight, k_bias, k_eps, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


_warned_fallback: set = set()


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm: Optional[NormTriple] = None,
    k_norm: Optional[NormTriple] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention forward ``softmax(LN_q(q) LN_k(k)ᵀ · scale) v`` with the optional LayerNorms fused on load.

    Args:
        q: (B, H, N_q, D); k, v: (B, H, N_k, D); one dtype among fp16, bf16, fp32; any strides.
        q_norm, k_norm: optional ``(weight (D,), bias (D,), eps)`` per-head LayerNorm over D (statistics in fp32).
        scale: softmax scale, default ``1 / sqrt(D)``.

    Returns:
        (B, H, N_q, D) contiguous, dtype of q. Accumulation (scores, softmax sums, output) is fp32.

    Raises:
        ValueError: bad ranks/shapes, norm triples of the wrong shape, eps <= 0, scale <= 0, zero keys.
        TypeError: unsupported or mixed dtypes.

    The Triton kernel covers D in [1, 128] on CUDA (and on CPU under ``TRITON_INTERPRET=1``); other head dims,
    devices, or ``SVG_DISABLE_TRITON=1`` run :func:`attention_reference` instead (logged once per head dim).
    The kernel is forward-only: when autograd tracks an input, LayerNorm + SDPA run instead (differentiable).
    """
    _check(q, k, v, q_norm, k_norm, scale)
    if not supports(q) and q.shape[-1] not in _warned_fallback:
        _warned_fallback.add(q.shape[-1])
        log.warning("flash_attention: head_dim %d outside [1, %d]; using the PyTorch reference", q.shape[-1],
                    MAX_HEAD_DIM)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    tracked = (q, k, v) + tuple(t for n in (q_norm, k_norm) if n is not None for t in n[:2])
    if needs_autograd(*tracked):
        return _differentiable_attention(q, k, v, q_norm, k_norm, scale)
    qw, qb, q_eps = (None, None, 0.0) if q_norm is None else (q_norm[0], q_norm[1], float(q_norm[2]))
    kw, kb, k_eps = (None, None, 0.0) if k_norm is None else (k_norm[0], k_norm[1], float(k_norm[2]))
    return _flash_attention_op(q, k, v, qw, qb, q_eps, kw, kb, k_eps, scale)
