"""On-disk cache keys for compiled artefacts (TensorRT plans).

A cached engine is reused only when every setting that changes the artefact matches: model preset, a hash of the
weights, compute dtype, the rows profile / buckets, the ONNX opset, TensorRT and torch versions and the GPU's compute
capability (style principle 4). The key is the SHA-256 of the canonical JSON of those fields, so adding a field
invalidates old entries instead of silently reusing them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def weights_hash(module: nn.Module) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and bytes of ``module.state_dict()``, in name order.

    About 1 s per GB of weights on a CPU; call it once at build time.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``fields`` (keys sorted, lists for tuples).

    Raises:
        TypeError: a value that is not JSON-serialisable (the message names the field).
    """
    for name, value in fields.items():
        try:
            json.dumps(value)
        except TypeError as exc:
            raise TypeError(f"cache key field {name!r}={value!r} is not JSON-serialisable") from exc
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()


def gpu_capability(device: torch.device | str | None = None) -> str:
    """``"sm90"``-style compute capability of a CUDA device, or ``"cpu"`` without one."""
    if not torch.cuda.is_available():
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"
