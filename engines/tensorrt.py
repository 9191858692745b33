"""TensorRT engine for the SiT step and the decoder (optional: needs the ``tensorrt`` Python package and a GPU).

Pipeline: module -> ONNX (:mod:`engines.onnx_export`, opset >= 17) -> TensorRT builder with one optimization
profile over the rows dimension ``(min_rows, opt_rows, max_rows)`` -> serialized plan in an on-disk cache keyed by
everything that changes it (:mod:`engines.cache`) -> execution context.

Precision: fp16 or bf16 GEMMs with every ``INormalizationLayer`` (LayerNorm, QK-LayerNorm, GroupNorm) pinned to
fp32 under ``OBEY_PRECISION_CONSTRAINTS`` (cases T22, B02). A timing cache beside the plans makes rebuilds fast.

Shape errors never reach TensorRT: a call with more rows than the profile's max raises :class:`EngineError`
naming the limit, which the server maps to 422 (case B31). Size the profile's max for guided rows (each guided
image is two rows).

Where TensorRT is not installed, :meth:`TensorRTEngine.build` (called by ``engines.create`` at start-up) raises
:class:`EngineError` saying so; nothing is imported at module import time.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from engines.base import Engine, EngineError
from engines.cache import cache_key, engine_cache_dir, gpu_capability, gpu_identity, model_config, weights_hash
from engines.onnx_export import OPSET, export_decoder, export_sit
from engines.precision import parse_dtype

ROLES = ("sit", "decoder")
log = logging.getLogger("svg.engines.tensorrt")


def import_tensorrt():
    """Import and return the ``tensorrt`` module.

    Raises:
        EngineError: TensorRT is not installed; the message says so and names the alternatives.
    """
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise EngineError(
            "engine 'tensorrt' was selected but the TensorRT Python package is not installed on this machine "
            f"({exc}); install tensorrt>=10 for this CUDA version, or start with --engine compile or eager"
        ) from exc


class TensorRTEngine(Engine):
    """A TensorRT plan with a dynamic rows dimension; same call signature as the wrapped module.

    Args:
        module: ``svg.sit.SiT`` (role ``sit``) or an ``SVGAutoencoder`` / ``svg.decoder.Decoder`` (role ``decoder``);
            exported in float32.
        role: ``"sit"`` (``engine(x, t, y)``) or ``"decoder"`` (``engine(latent)``).
        device: a CUDA device.
        dtype: engine precision, ``torch.float16`` (default), ``torch.bfloat16`` or ``torch.float32``.
        max_rows: profile max (e.g. 2 × the scheduler's max images when every row may be guided).
        opt_rows: profile optimum (default ``max_rows``; TensorRT tunes kernels for it).
        min_rows: profile min (default 1).
        cache_dir: directory of plans and the timing cache (default ``$SVG_ENGINE_CACHE`` or ``~/.cache/svg/engines``).
        preset: model preset name, part of the cache key.
        latent_shape: ``(C, h, w)`` for the decoder role.
        workspace_gib: builder workspace limit.

    Raises:
        ValueError: unknown role, bad profile (``1 <= min_rows <= opt_rows <= max_rows``), or a decoder without
            ``latent_shape``.
    """

    name = "tensorrt"

    def __init__(
        self,
        module: nn.Module,
        *,
        role: str = "sit",
        device: torch.device | str = "cuda",
        dtype: torch.dtype | str = torch.float16,
        max_rows: int = 16,
        opt_rows: int | None = None,
        min_rows: int = 1,
        cache_dir: str | Path | None = None,
        preset: str = "custom",
        latent_shape: tuple[int, int, int] | None = None,
        workspace_gib: float = 8.0,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role={role!r} is invalid; allowed: {list(ROLES)}")
        opt_rows = max_rows if opt_rows is None else opt_rows
        if not 1 <= min_rows <= opt_rows <= max_rows:
            raise ValueError(
                f"profile min_rows={min_rows}, opt_rows={opt_rows}, max_rows={max_rows} must satisfy "
                "1 <= min_rows <= opt_rows <= max_rows"
            )
        if role == "decoder" and latent_shape is None:
            raise ValueError("latent_shape=(C, h, w) is required for the decoder role")
        super().__init__(module, device=device, dtype=torch.float32, max_rows=max_rows)  # export in fp32
        self.role = role
        self.engine_dtype = parse_dtype(dtype)
        self.profile = (min_rows, opt_rows, max_rows)
        self.cache_dir = engine_cache_dir(cache_dir)
        self.preset = preset
        self.latent_shape = tuple(latent_shape) if latent_shape else None
        self.workspace_gib = workspace_gib
        self.plan_path: Path | None = None
        self.loaded_from_cache = False
        self._trt = None
        self._engine = None
        self._context = None

    # ---- cache -------------------------------------------------------------------------------------------------

    def cache_fields(self, trt_version: str, gpu: dict[str, str] | None = None) -> dict:
        """Every setting that changes the plan: the inputs of :func:`engines.cache.cache_key` (case T24).

        Args:
            trt_version: ``tensorrt.__version__``.
            gpu: ``{"name", "capability", "driver"}``; default :func:`engines.cache.gpu_identity` of the device.
        """
        return {
            "role": self.role,
            "preset": self.preset,
            "model_config": model_config(self.module),  # fixes the exported graph (heads, norms, sizes)
            "weights": weights_hash(self.module),
            "dtype": str(self.engine_dtype).removeprefix("torch."),
            "profile": list(self.profile),
            "latent_shape": list(self.latent_shape) if self.latent_shape else None,
            "opset": OPSET,
            "tensorrt": trt_version,
            "torch": torch.__version__,
            "gpu": dict(gpu) if gpu is not None else gpu_identity(self.device),
        }

    # ---- build -------------------------------------------------------------------------------------------------

    def build(self) -> "TensorRTEngine":
        """Load the plan from the cache or build it, then create the execution context.

        Raises:
            EngineError: TensorRT not installed, no CUDA device, ONNX parse or build failure.
        """
        trt = self._trt = import_tensorrt()
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise EngineError(f"engine 'tensorrt' needs a CUDA device; got device={self.device}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key = cache_key(self.cache_fields(trt.__version__))
        self.plan_path = self.cache_dir / f"{self.role}-{self.preset}-{key[:20]}.plan"
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self._engine, self.loaded_from_cache = load_or_build_plan(
            self.plan_path, runtime.deserialize_cuda_engine, lambda: self._build_plan(trt, logger))
        self._context = self._engine.create_execution_context()
        return self

    def _input_shapes(self, rows: int) -> dict[str, tuple[int, ...]]:
        if self.role == "decoder":
            return {"latent": (rows, *self.latent_shape)}
        config = self.module.config
        return {"x": (rows, config.num_tokens, config.in_channels), "t": (rows,), "y": (rows,)}

    def _build_plan(self, trt, logger) -> bytes:
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            onnx_path = Path(tmp) / f"{self.role}.onnx"
            if self.role == "sit":
                export_sit(self.module, onnx_path, max_rows=max(self.profile[2], 2))
            else:
                export_decoder(self.module, onnx_path, latent_shape=self.latent_shape,
                               max_rows=max(self.profile[2], 2))
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(onnx_path)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise EngineError(f"TensorRT could not parse the {self.role} ONNX graph: {errors}")
            # The parser keeps the weights; build inside the temporary directory's lifetime anyway.
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.workspace_gib * (1 << 30)))
            if self.engine_dtype == torch.float16:
                config.set_flag(trt.BuilderFlag.FP16)
            elif self.engine_dtype == torch.bfloat16:
                config.set_flag(trt.BuilderFlag.BF16)
            if self.engine_dtype != torch.float32:
                self._pin_norms_fp32(trt, network, config)
            profile = builder.create_optimization_profile()
            lo, opt, hi = self.profile
            for name, shape in self._input_shapes(1).items():
                profile.set_shape(name, (lo, *shape[1:]), (opt, *shape[1:]), (hi, *shape[1:]))
            config.add_optimization_profile(profile)
            timing_path = self.cache_dir / f"timing-trt{trt.__version__}-{gpu_capability(self.device)}.cache"
            timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
            config.set_timing_cache(timing, ignore_mismatch=False)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise EngineError(f"TensorRT failed to build the {self.role} engine (see the TensorRT log above)")
            _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    @staticmethod
    def _pin_norms_fp32(trt, network, config) -> int:
        """Force every normalisation layer to compute and output fp32 (T22/B02). Returns how many were pinned."""
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = 0
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.type == trt.LayerType.NORMALIZATION:
                layer.precision = trt.float32
                for out in range(layer.num_outputs):
                    layer.set_output_type(out, trt.float32)
                pinned += 1
        return pinned

    # ---- run ---------------------------------------------------------------------------------------------------

    def warmup(self, row_counts: Sequence[int], example: Sequence[torch.Tensor] | None = None) -> None:
        """Run each row count once (TensorRT tunes per profile, so this only settles allocators and kernels)."""
        if example is None:
            return
        for rows in row_counts:
            self(*[e[:1].expand(rows, *e.shape[1:]).contiguous() for e in example])

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """Run the plan on ``args`` (rows in ``[min_rows, max_rows]``); returns a fresh float32 tensor.

        Raises:
            EngineError: rows outside the profile (before TensorRT sees the shape), or the engine is not built.
        """
        rows = self._check_rows(args)
        if rows < self.profile[0]:
            raise EngineError(f"rows={rows} is below this engine's profile min_rows={self.profile[0]}")
        if self._context is None:
            raise EngineError("the TensorRT engine is not built; call build() first")
        names = ("latent",) if self.role == "decoder" else ("x", "t", "y")
        inputs = {}
        for name, arg in zip(names, args):
            dtype = torch.int64 if name == "y" else torch.float32
            inputs[name] = arg.to(self.device, dtype).contiguous()
            self._context.set_input_shape(name, tuple(inputs[name].shape))
            self._context.set_tensor_address(name, inputs[name].data_ptr())
        out = torch.empty(tuple(self._context.get_tensor_shape("out")), device=self.device, dtype=torch.float32)
        self._context.set_tensor_address("out", out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT execution failed for rows={rows}")
        return out

    def close(self) -> None:
        """Free the execution context and the engine."""
        self._context = None
        self._engine = None


def load_or_build_plan(path: Path, deserialize, build) -> tuple[object, bool]:
    """The engine of the cached plan at ``path``, or of a freshly built one (case T24).

    A plan that cannot be read or deserialized (truncated, corrupt, written by another TensorRT) is deleted with a
    warning and rebuilt; start-up goes on.

    Args:
        path: the plan file. deserialize: ``bytes -> engine or None`` (``trt.Runtime.deserialize_cuda_engine``).
        build: ``() -> bytes``, a new serialized plan.

    Returns:
        ``(engine, loaded_from_cache)``.

    Raises:
        EngineError: a freshly built plan does not deserialize either.
    """
    if path.exists():
        try:
            engine = deserialize(path.read_bytes())
        except (OSError, RuntimeError) as exc:  # unreadable file, or TensorRT raising on a bad plan
            engine, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "TensorRT could not deserialize it (truncated or corrupt)"
        if engine is not None:
            return engine, True
        log.warning("cached TensorRT plan %s is unusable (%s): deleted, rebuilding", path, why)
        path.unlink(missing_ok=True)
    plan = build()
    _atomic_write(path, plan)
    engine = deserialize(plan)
    if engine is None:
        raise EngineError(f"TensorRT could not deserialize the plan it just built ({path})")
    return engine, False


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crashed build never leaves a truncated plan in the cache."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
