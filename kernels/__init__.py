"""Triton kernels for the SiT hot path, each with a PyTorch reference and a fallback.

Public ops (CPU and CUDA tensors alike):

* :func:`flash_attention` ``(q, k, v, q_norm=None, k_norm=None, scale=None)`` -- q, k, v (B, H, N, D);
* :func:`qk_layernorm` ``(x, weight, bias, eps=1e-5)`` -- per-head LayerNorm over the last dim;
* :func:`adaln_modulate` ``(x, shift, scale, eps=1e-6)`` -- ``LN(x)·(1+scale)+shift``, x (B, N, C);
* :func:`gated_residual` ``(x, gate, y)`` -- ``x + gate·y``.

Switches: ``SVG_DISABLE_TRITON=1`` turns every custom kernel off (the references run); on CPU the kernels run
only when this package is imported under ``TRITON_INTERPRET=1``. :func:`backend_name` says which one runs.
"""

from kernels._common import DISABLE_ENV, backend_name, interpreted, triton_disabled
from kernels.adaln import adaln_modulate, adaln_modulate_reference, gated_residual, gated_residual_reference
from kernels.attention import attention_reference, flash_attention
from kernels.qk_layernorm import qk_layernorm, qk_layernorm_reference

__all__ = [
    "DISABLE_ENV",
    "adaln_modulate",
    "adaln_modulate_reference",
    "attention_reference",
    "backend_name",
    "flash_attention",
    "gated_residual",
    "gated_residual_reference",
    "interpreted",
    "qk_layernorm",
    "qk_layernorm_reference",
    "triton_disabled",
]
