"""On-disk cache keys for compiled artefacts (TensorRT plans).

A cached engine is reused only when every setting that changes the artefact matches: the full model config (which
fixes the exported graph: two models with equal weights but another head count export different graphs), a hash of
the weights, compute dtype, the rows profile / buckets, the ONNX opset, TensorRT and torch versions, and the GPU's
name, compute capability and driver version (style principle 4; case T24: an H100 and an H200 share sm90, and a plan
built under one driver must not be trusted under another). The key is the SHA-256 of the canonical JSON of those
fields, so adding a field invalidates old entries instead of silently reusing them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def engine_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where TensorRT plans and timing caches go: ``cache_dir``, else ``$SVG_ENGINE_CACHE``, else
    ``~/.cache/svg/engines`` (the container image sets ``SVG_ENGINE_CACHE=/cache/engines``, its volume)."""
    return Path(cache_dir or os.environ.get("SVG_ENGINE_CACHE") or Path.home() / ".cache/svg/engines")


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


def gpu_identity(device: torch.device | str | None = None) -> dict[str, str]:
    """What identifies a GPU for a compiled plan: ``{"name", "capability", "driver"}`` (all ``"cpu"`` without CUDA).

    ``driver`` is the NVIDIA driver version from NVML (nvidia-ml-py) or ``/proc/driver/nvidia/version``, or
    ``"unknown"`` when neither answers.
    """
    if not torch.cuda.is_available():
        return {"name": "cpu", "capability": "cpu", "driver": "cpu"}
    return {"name": torch.cuda.get_device_name(device), "capability": gpu_capability(device),
            "driver": driver_version()}


def driver_version() -> str:
    """The NVIDIA driver version (e.g. ``"570.86.15"``), or ``"unknown"``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no nvidia-ml-py, no driver library: fall back to the kernel module's version file
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return "unknown"
    words = [w for w in text.split() if w.count(".") >= 1 and w.replace(".", "").isdigit()]
    return words[0] if words else "unknown"


def model_config(module: nn.Module) -> dict | str:
    """The module's full config for the cache key: ``config.to_dict()`` / the dataclass as a dict, else its repr
    (layer types and sizes; a module without a config should be given one)."""
    config = getattr(module, "config", None)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return repr(module)
