"""The engine interface shared by every back-end (eager, torch.compile, TensorRT).

An engine wraps a module and never forks it: ``engine(*args)`` returns what ``module(*args)`` returns, within the
engine's stated tolerance. The scheduler and worker only ever see this interface, so a new back-end plugs in without
touching them.

Lifecycle::

    engine = EagerEngine(model)        # cheap, no device work
    engine.build()                     # compile / load a cached artefact
    engine.warmup([1, 2, 4, 8])        # run every row bucket once, before /ready
    out = engine(x, t, y)              # same signature as SiT.forward
    run = engine.stepper(slots)        # the sampling step (svg.slots.step) over a SlotBatch, through this engine
    engine.warmup_step(run, [1, 2, 4]) # compile / capture each row bucket of the step before /ready
    run(layout)                        # one DiT step of the rows in layout (svg.slots.SlotBatch.layout)
    engine.close()

Every positional argument is a tensor whose dim 0 is the row dimension (the SiT's ``x (R,T,C), t (R,), y (R,)``,
the decoder's ``latent (R,C,h,w)``). Outputs always come back as float32, on the engine's device: the sampler's
state stays in fp32 whatever the engine computes in (see :mod:`engines.precision`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from engines.precision import autocast_context, prepare_module


class EngineError(RuntimeError):
    """Raised when an engine cannot be built or cannot serve a request shape (e.g. beyond a TensorRT profile).

    The server maps it to a 4xx response (422 naming the limit) when raised for a request shape, and refuses to
    start when raised by ``build``.
    """


def nonfinite_rows(out: torch.Tensor) -> torch.Tensor:
    """Per-row non-finite detection for the worker (case B01: never ship a NaN image).

    Args:
        out: any tensor whose dim 0 is the row dimension, e.g. the velocity ``(R, T, C)`` or a latent.

    Returns:
        ``(R,)`` bool tensor on ``out``'s device, True where the row holds a NaN or an inf. No host sync: the
        caller decides when to read it (``.any().item()`` once per step is enough).
    """
    if out.dim() == 0:
        raise ValueError("out must have a row dimension (dim 0); got a 0-d tensor")
    return ~torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)


class DecodeAdapter(nn.Module):
    """Presents an autoencoder's ``decode(latent, clamp=...)`` (or a bare decoder module) as ``forward(latent)``.

    Args:
        decoder: an object with ``decode(latent, clamp=...)`` (``svg.autoencoder.SVGAutoencoder``) or an
            ``nn.Module`` mapping ``(B, C, h, w)`` latents to ``(B, 3, H, W)`` images.
        clamp: clamp images to [-1, 1] (reference behaviour of the output path).
    """

    def __init__(self, decoder: nn.Module, clamp: bool = True) -> None:
        super().__init__()
        inner = getattr(decoder, "decoder", None)
        if hasattr(decoder, "decode") and isinstance(inner, nn.Module):
            # SVGAutoencoder.decode is decoder(latent) + clamp: wrap only the decoder, so an engine's device move
            # and half-precision cast never touch the encoders the server still runs eagerly (editing).
            decoder = inner
        self.decoder = decoder
        self.clamp = clamp

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent (B, C, h, w)`` denormalised latent -> ``(B, 3, H, W)`` images, in [-1, 1] when clamped."""
        if hasattr(self.decoder, "decode"):
            return self.decoder.decode(latent, clamp=self.clamp)
        image = self.decoder(latent)
        return image.clamp(-1.0, 1.0) if self.clamp else image


class Engine:
    """Base class: wraps ``module`` and forwards calls to it, with the precision policy of :mod:`engines.precision`.

    Args:
        module: the model (``svg.sit.SiT``, or a :class:`DecodeAdapter`). The engine takes ownership: it is moved
            to ``device``, put in eval mode and, for bf16/fp16, its non-norm parameters are cast in place.
        device: where the engine runs (default: the module's current device).
        dtype: compute dtype: ``torch.float32`` (CPU default), ``torch.bfloat16`` (GPU default) or ``torch.float16``.
        max_rows: the largest row count one call accepts, or ``None`` when unbounded.

    Attributes:
        name: short engine name used in metrics and ``/models`` (``eager``, ``compile``, ``tensorrt``).
        compile_seconds: wall time spent compiling in ``build``/``warmup`` (first call of each bucket).
        warmup_seconds: wall time of the warm-up runs once compiled (second call of each bucket).
    """

    name = "base"

    def __init__(
        self,
        module: nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        max_rows: int | None = None,
    ) -> None:
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None; got {max_rows}")
        if device is None:
            first = next(iter(module.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.dtype = dtype
        self.module = prepare_module(module, self.device, dtype)
        self.max_rows = max_rows
        self.compile_seconds = 0.0
        self.warmup_seconds = 0.0
        # Calls with fewer rows are padded up to this (the decoder's convolutions round a 1-image batch
        # differently from any larger one on CPU; engines.create sets 2 for batch-invariant decoders).
        self.min_rows = 1

    def build(self) -> "Engine":
        """Prepare the engine (compile, load from cache). Returns ``self``."""
        return self

    def warmup(self, row_counts: Sequence[int], example: Sequence[torch.Tensor] | None = None) -> None:
        """Run once for each row count the scheduler can form, so serving never compiles.

        Args:
            row_counts: row counts to run (each is padded to its bucket).
            example: one-row example inputs (dim 0 of size 1); required by engines that compile, ignored here.
        """

    def padded_rows(self, rows: int) -> int:
        """The row count a call with ``rows`` rows actually runs at (buckets pad up). Eager: ``rows``.

        Raises:
            EngineError: ``rows`` < 1 or above ``max_rows``; the message names the limit.
        """
        if rows < 1:
            raise EngineError(f"rows={rows} is out of range; an engine call needs at least 1 row")
        if self.max_rows is not None and rows > self.max_rows:
            raise EngineError(f"rows={rows} exceeds this engine's max_rows={self.max_rows}")
        return max(rows, self.min_rows)

    def _check_rows(self, args: Sequence[torch.Tensor]) -> int:
        if not args:
            raise EngineError("an engine call needs at least one tensor argument")
        rows = args[0].shape[0]
        for index, arg in enumerate(args):
            if arg.shape[0] != rows:
                raise EngineError(
                    f"argument {index} has {arg.shape[0]} rows but argument 0 has {rows}; dim 0 must match"
                )
        self.padded_rows(rows)
        return rows

    def _run(self, *args: torch.Tensor) -> torch.Tensor:
        """One forward under the engine's precision policy; output in float32."""
        with autocast_context(self.device, self.dtype):
            return self.module(*args).float()

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """Same signature as the wrapped module's ``forward``; returns a float32 tensor the caller owns."""
        rows = self._check_rows(args)
        args = tuple(a.to(self.device) for a in args)
        size = self.padded_rows(rows)
        if size > rows:  # the min_rows padding: repeat row 0
            return self._run(*[torch.cat([a, _repeat_rows(a, size - rows)]) for a in args])[:rows]
        return self._run(*args)

    def stepper(self, slots) -> "Stepper":
        """The sampling step over ``slots`` (an ``svg.slots.SlotBatch`` on this device) through this engine.

        Returns a callable ``run(layout (4, R) int64)`` doing one :func:`svg.slots.step` in place, its forward
        under this engine's precision policy; it raises :class:`EngineError` when R exceeds ``max_rows``. This
        base version runs the step eagerly (eager and TensorRT engines); compiled engines compile it.
        """
        from svg.slots import step

        def run(layout: torch.Tensor) -> None:
            self.padded_rows(layout.shape[1])
            with torch.no_grad():
                step(self, slots, layout.to(self.device))  # the forward through this engine's own call

        return Stepper(run, slots)

    def warmup_step(self, run: "Stepper", row_counts: Sequence[int]) -> None:
        """Run the step once per row bucket of ``row_counts`` on padding rows only (they touch no slot's state)."""
        start = time.perf_counter()
        for size in sorted({self.padded_rows(r) for r in row_counts}):
            run(run.slots.padding(size))
        self.warmup_seconds += time.perf_counter() - start

    def close(self) -> None:
        """Release device memory and compiled artefacts."""


class Stepper:
    """``run(layout)``: one sampling step of the slot batch ``slots`` through an engine (:meth:`Engine.stepper`)."""

    def __init__(self, fn, slots) -> None:
        self.fn, self.slots = fn, slots

    def __call__(self, layout: torch.Tensor) -> None:
        self.fn(layout)


class EagerEngine(Engine):
    """Plain PyTorch module call: the reference every other engine is checked against."""

    name = "eager"

    def warmup(self, row_counts: Sequence[int], example: Sequence[torch.Tensor] | None = None) -> None:
        """Eager needs no warm-up for correctness; with an example it runs each count once to settle allocators."""
        if example is None:
            return
        start = time.perf_counter()
        for rows in row_counts:
            self(*[_repeat_rows(e, rows) for e in example])
        self.warmup_seconds += time.perf_counter() - start


class DecoderEngine(EagerEngine):
    """Eager engine for the decoder: ``engine(latent (R, C, h, w)) -> images (R, 3, H, W)`` float32 in [-1, 1].

    Args:
        decoder: ``SVGAutoencoder`` (its ``decode`` is called) or a bare decoder module.
        clamp: clamp images to [-1, 1] (default, reference behaviour).
        **kwargs: ``device``, ``dtype``, ``max_rows`` as for :class:`Engine`.
    """

    def __init__(self, decoder: nn.Module, *, clamp: bool = True, **kwargs) -> None:
        super().__init__(DecodeAdapter(decoder, clamp), **kwargs)


def _repeat_rows(example: torch.Tensor, rows: int) -> torch.Tensor:
    """Tile a one-row example to ``rows`` rows along dim 0."""
    return example[:1].expand(rows, *example.shape[1:]).contiguous()
