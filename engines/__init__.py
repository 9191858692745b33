"""Inference engines for the SVG SiT and decoder: eager, torch.compile (+CUDA graphs) and TensorRT.

Every engine has the call signature of the module it wraps and the lifecycle
``build() -> warmup(row_counts) -> __call__(...) -> close()`` (see :mod:`engines.base`). :func:`create` runs the
whole start-up (build + warm-up of every bucket), so a server calls it before reporting ready::

    sit_engine = engines.create("compile", sit, device="cuda", max_rows=64)          # guided rows count twice
    dec_engine = engines.create("compile", autoencoder, role="decoder", device="cuda", max_rows=16)
    velocity = sit_engine(x, t, y)           # (R, T, C_out) float32
    images = dec_engine(latent)              # (R, 3, H, W) float32 in [-1, 1]
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from engines.base import DecodeAdapter, DecoderEngine, EagerEngine, Engine, EngineError, Stepper, nonfinite_rows
from engines.buckets import default_buckets, validate_buckets
from engines.precision import default_dtype, parse_dtype

__all__ = [
    "Engine", "EagerEngine", "DecoderEngine", "EngineError", "EngineKind", "Stepper", "create", "example_inputs",
    "nonfinite_rows",
]


class EngineKind(str, enum.Enum):
    """The ``--engine`` choices."""

    EAGER = "eager"
    COMPILE = "compile"
    TENSORRT = "tensorrt"


def _parse_kind(kind: str | EngineKind) -> EngineKind:
    try:
        return EngineKind(kind)
    except ValueError:
        raise ValueError(f"engine kind={kind!r} is invalid; allowed: {[k.value for k in EngineKind]}") from None


def _latent_shape(module: nn.Module, latent_shape: Sequence[int] | None) -> tuple[int, int, int]:
    if latent_shape is not None:
        return tuple(int(s) for s in latent_shape)
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "latent_channels"):  # SVGAutoencoder
        return (config.latent_channels, config.latent_size, config.latent_size)
    if config is not None and hasattr(config, "z_channels"):  # bare svg.decoder.Decoder
        return (config.z_channels, config.latent_size, config.latent_size)
    raise ValueError("latent_shape=(C, h, w) is required for a decoder without an svg config")


def example_inputs(module: nn.Module, role: str = "sit", latent_shape: Sequence[int] | None = None,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """One-row example inputs for warm-up and export.

    Returns:
        role ``sit``: ``(x (1, T, C) f32 zeros, t (1,) f32 zeros, y (1,) int64 zeros)`` from ``module.config``;
        role ``decoder``: ``(latent (1, C, h, w) f32 zeros,)``.

    Raises:
        ValueError: unknown role, or a decoder whose latent shape cannot be derived.
    """
    if role == "sit":
        config = module.config
        return (torch.zeros(1, config.num_tokens, config.in_channels, device=device),
                torch.zeros(1, device=device), torch.zeros(1, dtype=torch.int64, device=device))
    if role == "decoder":
        return (torch.zeros(1, *_latent_shape(module, latent_shape), device=device),)
    raise ValueError(f"role={role!r} is invalid; allowed: ['sit', 'decoder']")


def create(
    kind: str | EngineKind,
    module: nn.Module,
    *,
    role: str = "sit",
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    max_rows: int = 8,
    buckets: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    preset: str = "custom",
    latent_shape: Sequence[int] | None = None,
    cuda_graphs: bool | None = None,
    compile_mode: str | None = None,
    warmup: bool = True,
    batch_invariant: bool = True,
) -> Engine:
    """Build (and by default warm up) an engine: the server's ``--engine eager|compile|tensorrt``.

    Args:
        kind: ``"eager"``, ``"compile"`` or ``"tensorrt"``.
        module: ``svg.sit.SiT`` (role ``sit``) or ``SVGAutoencoder`` / ``svg.decoder.Decoder`` (role ``decoder``).
            The engine takes ownership (moves it, casts non-norm weights for half dtypes).
        role: ``"sit"`` (``engine(x, t, y)``) or ``"decoder"`` (``engine(latent)``).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: compute dtype; default bf16 on CUDA, fp32 on CPU (:mod:`engines.precision`).
        max_rows: the most rows one call may carry (for the SiT: the scheduler's ``max_rows``, guided images
            counted twice). Calls beyond it raise :class:`EngineError` (server: 422).
        buckets: compiled row sizes (``compile``); default ``1, 2, 4, ..., max_rows``.
        cache_dir: TensorRT plan cache directory.
        preset: preset name, part of the TensorRT cache key.
        latent_shape: ``(C, h, w)`` for a decoder whose config does not say it.
        cuda_graphs: ``compile`` only; default on for CUDA.
        compile_mode: ``torch.compile`` mode override.
        warmup: run every bucket once now (compile time in ``engine.compile_seconds``). A server that samples
            through :meth:`Engine.stepper` passes False and warms the step's buckets instead.
        batch_invariant: a row's output does not depend on the call's row count (eager and compile engines): the
            SiT's conditioning path runs at ``max_rows`` rows (``SiT.cond_rows``), a decoder pads 1-latent calls to
            2 (CPU convolutions round a 1-image batch differently). TensorRT makes no such promise.

    Returns:
        The built engine.

    Raises:
        ValueError: unknown kind/role/dtype, bad buckets.
        EngineError: the back-end cannot be built here (e.g. TensorRT not installed, CUDA graphs without CUDA).
    """
    kind = _parse_kind(kind)
    if role not in ("sit", "decoder"):
        raise ValueError(f"role={role!r} is invalid; allowed: ['sit', 'decoder']")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(dtype) if dtype is not None else default_dtype(device)
    if buckets is not None:
        buckets = validate_buckets(buckets)
        max_rows = buckets[-1]
    example = example_inputs(module, role, latent_shape, device)
    if kind is EngineKind.EAGER:
        engine: Engine = (DecoderEngine(module, device=device, dtype=dtype, max_rows=max_rows) if role == "decoder"
                          else EagerEngine(module, device=device, dtype=dtype, max_rows=max_rows))
    elif kind is EngineKind.COMPILE:
        from engines.compiled import CompiledEngine

        target = DecodeAdapter(module) if role == "decoder" else module
        engine = CompiledEngine(target, device=device, dtype=dtype, buckets=buckets or default_buckets(max_rows),
                                cuda_graphs=cuda_graphs, mode=compile_mode)
    else:
        from engines.tensorrt import TensorRTEngine, import_tensorrt

        import_tensorrt()  # fail fast, before any export work, with a message that says TensorRT is missing
        engine = TensorRTEngine(module, role=role, device=device, dtype=dtype, max_rows=max_rows,
                                cache_dir=cache_dir, preset=preset,
                                latent_shape=_latent_shape(module, latent_shape) if role == "decoder" else None)
    if role == "sit" and device.type == "cuda" and hasattr(module, "config"):
        # Kernel choice is made once, here: attention "auto" uses the Triton kernel only after it agrees with
        # SDPA on this GPU for this model's shapes (case B05). SVGPipeline.to() no longer does this.
        from svg.attention import validate_triton_attention

        c = module.config
        validate_triton_attention(device, c.num_heads, c.hidden_size // c.num_heads, c.num_tokens)
    if role == "sit" and hasattr(module, "ops"):
        from svg.sit import select_ops

        module.ops = select_ops(device)  # fixed for this engine's life: no global is read inside the forward
    if batch_invariant and kind is not EngineKind.TENSORRT:
        if role == "sit":
            engine.module.cond_rows = engine.max_rows
        else:
            engine.min_rows = min(2, engine.max_rows or 2)
    engine.build()
    if warmup:
        sizes = getattr(engine, "buckets", None) or sorted({1, max_rows})
        engine.warmup(sizes, example=example)
    return engine
