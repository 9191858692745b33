"""What every kernel file shares: the one switch that turns custom kernels off, and the device check.

The decision "Triton kernel or PyTorch reference" is taken per call by :func:`use_triton`:

* ``SVG_DISABLE_TRITON=1`` in the environment -> always the reference (read on every call, so a test or an
  operator can flip it without re-importing anything);
* CUDA tensors -> the compiled Triton kernel;
* CPU tensors -> the Triton kernel only when the kernels were *defined* under ``TRITON_INTERPRET=1`` (Triton
  decides between compiled and interpreted when ``@triton.jit`` runs, i.e. when this package is imported);
  otherwise the reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

DISABLE_ENV = "SVG_DISABLE_TRITON"
INTERPRET_ENV = "TRITON_INTERPRET"

# Captured once, when the kernel modules are imported, because that is when @triton.jit picks its mode.
_INTERPRETED_AT_IMPORT = os.environ.get(INTERPRET_ENV, "0") not in ("", "0")

# Largest feature dimension a single program keeps in registers (adaLN rows, QK-LN rows).
MAX_ROW_BLOCK = 16384


def triton_disabled() -> bool:
    """True when ``SVG_DISABLE_TRITON`` is set to anything but ``""``/``"0"``."""
    return os.environ.get(DISABLE_ENV, "0") not in ("", "0")


def interpreted() -> bool:
    """True when this package's kernels were defined for the Triton CPU interpreter (``TRITON_INTERPRET=1``)."""
    return _INTERPRETED_AT_IMPORT


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a call on these tensors runs the Triton kernel (True) or the PyTorch reference (False).

    All tensors must live on one device; CPU tensors only run Triton through the interpreter.
    """
    if triton_disabled():
        return False
    device = tensors[0].device
    if device.type == "cuda":
        return not _INTERPRETED_AT_IMPORT
    if device.type == "cpu":
        return _INTERPRETED_AT_IMPORT
    return False


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """True when autograd must track this call: the kernels are forward-only, so the public ops then run their
    differentiable PyTorch path instead (training keeps working with the Triton back-end selected)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def backend_name(device: torch.device | str) -> str:
    """``"triton"``, ``"triton-interpreter"`` or ``"reference"``: what a call on ``device`` would run now."""
    probe = torch.empty(0, device=device)
    if not use_triton(probe):
        return "reference"
    return "triton-interpreter" if _INTERPRETED_AT_IMPORT else "triton"


def block_size(n: int, minimum: int = 16) -> int:
    """Next power of two >= ``n`` (and >= ``minimum``): ``tl.arange`` needs power-of-two extents (case B07)."""
    return max(minimum, triton.next_power_of_2(n))


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the tensors if they are not all on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"all tensors must be on one device; got {listing}")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_float_dtype(name: str, t: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``t`` is fp16, bf16 or fp32."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}.dtype must be one of float16, bfloat16, float32; got {t.dtype}")


@triton.jit
def round_to_bf16(x):
    """fp32 tile -> fp32 tile holding the nearest bf16 value (round to nearest, ties to even).

    The GPU's fp32 -> bf16 cast already rounds this way; the Triton CPU interpreter truncates instead (one ulp,
    7.8e-3 at 1.0), so the kernels call this before a bf16 cast when ``interpreted()`` to give GPU numerics on CPU.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return ((bits >> 16) << 16).to(tl.float32, bitcast=True)
