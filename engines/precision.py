"""Precision policy shared by all engines: bf16 (or fp16) GEMMs, norms in fp32, sampler state in fp32.

* CPU: float32 throughout (the default dtype of every engine there).
* GPU: weights of linear/conv/embedding layers and the activations between them in bf16; every normalisation layer
  (LayerNorm incl. QK-LayerNorm, GroupNorm, RMSNorm) keeps fp32 parameters and computes in fp32, because a LayerNorm's
  variance overflows or loses its eps in half precision (cases T16, T22, B02). The engine casts its output back
  to fp32, so the sampler's Euler state never leaves fp32.

The mechanism is ``torch.autocast`` (casts GEMM inputs to the compute dtype; weights are already in it, so no
per-call weight copy) plus a forward pre-hook on each norm module that upcasts its input. Both trace through
``torch.compile`` without graph breaks.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)
_HOOKED = "_engines_fp32_norm"


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"|"fp32"|"bfloat16"|"bf16"|"float16"|"fp16"`` (or a torch dtype) -> torch dtype.

    Raises:
        ValueError: any other name; the message lists the allowed ones.
    """
    if isinstance(name, torch.dtype):
        if name not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype={name} is not supported; allowed: float32, bfloat16, float16")
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype={name!r} is not supported; allowed: {sorted(table)}")
    return table[name]


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere (the project's precision policy)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def is_norm(module: nn.Module) -> bool:
    """True for normalisation layers, by type or by a class name ending in ``Norm`` (custom RMSNorm/QK-norm)."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def _upcast_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _fp32_norm(module: nn.Module, args: tuple, output):
    # Inside autocast a norm may still be dispatched in low precision; run its math in fp32 explicitly.
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


def prepare_module(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Put ``module`` in eval mode on ``device`` with the precision policy for ``dtype`` (in place, idempotent).

    Args:
        module: any model; modified in place (engines own their module).
        device: target device.
        dtype: compute dtype, one of :data:`SUPPORTED_DTYPES`. float32 leaves every parameter in fp32.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: an unsupported dtype, or a half dtype on a device type autocast does not support.
    """
    dtype = parse_dtype(dtype)
    module.eval().to(device)
    if dtype == torch.float32:
        return module
    for sub in module.modules():
        if is_norm(sub):
            sub.float()
            if not getattr(sub, _HOOKED, False):
                sub.register_forward_pre_hook(_upcast_inputs)
                sub.register_forward_hook(_fp32_norm)
                setattr(sub, _HOOKED, True)
            continue
        for param in sub.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buf in sub.named_buffers(recurse=False):
            if buf.is_floating_point():
                setattr(sub, name, buf.to(dtype))
    return module


def autocast_context(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` for half dtypes, a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
