"""One switch for scaled dot-product attention with optional per-head QK-LayerNorm.

Backends:
    ``sdpa``     torch ``F.scaled_dot_product_attention`` (the reference's call; default scale head_dim**-0.5).
    ``triton``   ``kernels.flash_attention`` (fused QK-LayerNorm + attention), imported lazily.
    ``xformers`` ``xformers.ops.memory_efficient_attention``, imported lazily.
    ``auto``     sdpa on CPU. On CUDA: sdpa until :func:`validate_triton_attention` has checked the Triton kernel
                 against sdpa on this device for the model's shapes (the server and ``SVGPipeline.to`` call it at
                 load time); the Triton kernel only when that check passed. A kernel that gives wrong numbers on
                 some GPU/head_dim is therefore never chosen silently (case B05); it is logged and sdpa is used.

The default comes from the environment variable ``SVG_ATTENTION`` (read when first needed, not at import) and
can be changed with :func:`set_attention_backend`.
"""

from __future__ import annotations

import enum
import importlib
import os
from typing import Callable, Optional

import logging

import torch
import torch.nn.functional as F

__all__ = ["AttentionBackend", "set_attention_backend", "get_attention_backend", "attention", "sdpa_attention",
           "NormParams", "resolve_backend", "validate_triton_attention"]

# (weight (D,), bias (D,), eps) of a LayerNorm over head_dim, shared by all heads.
NormParams = tuple[torch.Tensor, torch.Tensor, float]


class AttentionBackend(str, enum.Enum):
    """Attention implementations selectable with :func:`set_attention_backend` or ``SVG_ATTENTION``."""

    SDPA = "sdpa"
    TRITON = "triton"
    XFORMERS = "xformers"
    AUTO = "auto"


_backend: Optional[AttentionBackend] = None
_log = logging.getLogger(__name__)


def _parse(name: str | AttentionBackend) -> AttentionBackend:
    try:
        return AttentionBackend(name)
    except ValueError:
        allowed = [b.value for b in AttentionBackend]
        raise ValueError(f"attention backend={name!r} is invalid; allowed: {allowed}") from None


def set_attention_backend(name: str | AttentionBackend) -> None:
    """Select the backend used by :func:`attention` for the whole process.

    Raises:
        ValueError: unknown name.
        RuntimeError: ``triton``/``xformers`` when that backend cannot be imported.
    """
    global _backend
    backend = _parse(name)
    if backend is AttentionBackend.TRITON:
        _triton_fn()
    elif backend is AttentionBackend.XFORMERS:
        _xformers_fn()
    _backend = backend


def get_attention_backend() -> AttentionBackend:
    """The selected backend (``SVG_ATTENTION`` or ``auto`` if never set)."""
    global _backend
    if _backend is None:
        _backend = _parse(os.environ.get("SVG_ATTENTION", "auto"))
    return _backend


def _triton_fn() -> Callable:
    try:
        kernels = importlib.import_module("kernels")
        return getattr(kernels, "flash_attention")
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            "attention backend 'triton' needs kernels.flash_attention, which could not be imported "
            f"({exc}); use SVG_ATTENTION=sdpa or auto"
        ) from exc


def _xformers_fn() -> Callable:
    try:
        ops = importlib.import_module("xformers.ops")
    except ImportError as exc:
        raise RuntimeError("attention backend 'xformers' needs the xformers package; use sdpa or auto") from exc
    return ops.memory_efficient_attention


def _layer_norm(x: torch.Tensor, params: Optional[NormParams]) -> torch.Tensor:
    if params is None:
        return x
    weight, bias, eps = params
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_norm: Optional[NormParams] = None,
                   k_norm: Optional[NormParams] = None) -> torch.Tensor:
    """The PyTorch reference: ``softmax(LN(q)·LN(k)ᵀ / sqrt(D))·v`` with ``F.scaled_dot_product_attention`` (the
    reference's call). q, k, v (B, H, N, D) -> (B, H, N, D). Every other backend is checked against this."""
    return F.scaled_dot_product_attention(_layer_norm(q, q_norm), _layer_norm(k, k_norm), v)


_auto_cuda: Optional[AttentionBackend] = None


def _resolve(q: torch.Tensor) -> AttentionBackend:
    global _auto_cuda
    backend = get_attention_backend()
    if backend is not AttentionBackend.AUTO:
        return backend
    if q.device.type != "cuda":
        return AttentionBackend.SDPA
    # Decided once by validate_triton_attention at load time, so (compiled) calls only read a global.
    return _auto_cuda if _auto_cuda is not None else AttentionBackend.SDPA


def validate_triton_attention(device: torch.device | str, num_heads: int, head_dim: int, tokens: int,
                              dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16),
                              atol: float = 2e-2) -> bool:
    """Check the Triton attention kernel against SDPA on ``device`` and let ``auto`` use it only if it agrees.

    Runs q, k, v of shape (2, num_heads, tokens, head_dim) with per-head QK-LayerNorm in each dtype of ``dtypes``
    and compares with LayerNorm + ``F.scaled_dot_product_attention`` (max abs error ≤ ``atol``, the B05 bound).
    Does nothing on a non-CUDA device (``auto`` is sdpa there). Never raises for a failing kernel: it logs a
    warning and keeps sdpa.

    Returns:
        True when ``auto`` will use the Triton kernel on CUDA from now on.
    """
    global _auto_cuda
    device = torch.device(device)
    if device.type != "cuda":
        return False
    try:
        fn = _triton_fn()
    except RuntimeError as exc:
        _log.warning("Triton attention unavailable, auto uses sdpa: %s", exc)
        _auto_cuda = AttentionBackend.SDPA
        return False
    gen = torch.Generator(device="cpu").manual_seed(0)
    ok = True
    for dtype in dtypes:
        q, k, v = (torch.randn(2, num_heads, tokens, head_dim, generator=gen).to(device, dtype) for _ in range(3))
        w = (1 + 0.1 * torch.randn(head_dim, generator=gen)).to(device, dtype)
        b = (0.1 * torch.randn(head_dim, generator=gen)).to(device, dtype)
        norm = (w, b, 1e-5)
        try:
            got = fn(q, k, v, q_norm=norm, k_norm=norm).float()
        except Exception as exc:  # any kernel failure (compile error, unsupported shape) means: do not use it
            _log.warning("Triton attention failed its self-check (%s, D=%d): %s; auto uses sdpa", dtype, head_dim, exc)
            ok = False
            break
        ref = sdpa_attention(q, k, v, norm, norm).float()
        err = (got - ref).abs().max().item()
        if not err <= atol:
            _log.warning("Triton attention disagrees with sdpa by %.3g (> %.3g) for %s, D=%d; auto uses sdpa",
                         err, atol, dtype, head_dim)
            ok = False
            break
    _auto_cuda = AttentionBackend.TRITON if ok else AttentionBackend.SDPA
    return ok


def resolve_backend(x: torch.Tensor) -> AttentionBackend:
    """The back-end a call on ``x``'s device runs now (``auto`` resolved). The SiT asks the same question to use
    the fused adaLN / gated-residual kernels, so one switch turns every custom kernel on or off."""
    return _resolve(x)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_norm: Optional[NormParams] = None,
    k_norm: Optional[NormParams] = None,
) -> torch.Tensor:
    """softmax(LN(q)·LN(k)ᵀ / sqrt(D))·v, with LN the optional per-head LayerNorm over head_dim.

    Args:
        q, k, v: (B, H, N, D), same dtype and device.
        q_norm, k_norm: optional ``(weight (D,), bias (D,), eps)`` applied to q / k before attention
            (SiT QK-norm, svg_reference.md §4: LayerNorm(head_dim), eps 1e-5, shared across heads).

    Returns:
        (B, H, N, D) attention output, dtype of q.

    Raises:
        ValueError: q/k/v not 4-D or with mismatched shapes.
        RuntimeError: the selected backend is not available.
    """
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share a (B, H, N, D) shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    backend = _resolve(q)
    if backend is AttentionBackend.TRITON:
        return _triton_fn()(q, k, v, q_norm=q_norm, k_norm=k_norm)
    if backend is AttentionBackend.XFORMERS:
        q, k = _layer_norm(q, q_norm), _layer_norm(k, k_norm)
        # xformers wants (B, N, H, D).
        out = _xformers_fn()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return sdpa_attention(q, k, v, q_norm, k_norm)
