"""torch.compile (inductor) engine with static row buckets and, on GPU, CUDA graphs.

Design (gpt-fast style: compile at the call site, report compile time apart from run time):

* ``dynamic=False``: every bucket gets its own fully static graph, which is what CUDA-graph capture needs and what
  lets inductor pick the best GEMM tiles per size. Requests pad up to the next bucket (:mod:`engines.buckets`).
* Dynamo's recompile limit (default 8 per code object) is raised explicitly to cover every bucket of every
  compiled engine in the process; past the limit Dynamo would silently fall back to eager (case T17).
* ``fullgraph=True``: a graph break is a build error, not a silent slowdown (case T18).
* CUDA graphs (``mode="reduce-overhead"``, CUDA-graph trees) on GPU: the outputs live in the graph's memory pool and
  the next replay overwrites them, so every call returns a clone the caller owns (the aliasing hazard in issue 6).
  All buckets share one pool, so graph memory grows with the largest bucket, not the sum (case T20).
* Inputs are staged: every call copies its arguments into fresh contiguous buffers of the bucket's row count, with
  the dtypes of the warm-up example. Dynamo guards each static graph on the exact sizes, strides and dtypes it was
  traced with, so a transposed view (the decoder's latent from ``svg.latent.to_latent``), a strided or offset slice
  of a bigger batch, or an exact bucket size that skipped padding would otherwise recompile after /ready (B30).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch._dynamo
from torch import nn

from engines.base import DecodeAdapter, Engine, EngineError, Stepper, _repeat_rows
from engines.buckets import bucket_for, default_buckets, validate_buckets
from engines.precision import autocast_context

# Recompiles reserved by all compiled engines of this process; the dynamo limit is kept >= this.
_RESERVED_RECOMPILES = 0


def _reserve_recompiles(count: int) -> None:
    """Raise dynamo's per-code-object recompile limit so ``count`` more static graphs fit (T17)."""
    global _RESERVED_RECOMPILES
    _RESERVED_RECOMPILES += count
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), _RESERVED_RECOMPILES + 8))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, _RESERVED_RECOMPILES + 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CompiledEngine(Engine):
    """``torch.compile`` engine: same call signature and result as the wrapped module, within fp tolerance.

    Args:
        module: the model (``svg.sit.SiT`` or a :class:`~engines.base.DecodeAdapter`); the engine takes ownership.
        device, dtype: as for :class:`~engines.base.Engine` (fp32 on CPU, bf16 on GPU by policy).
        buckets: row counts to compile; default ``default_buckets(max_rows)``. Must include every row count the
            scheduler forms after padding, i.e. its ``max_rows`` with unconditional twins counted.
        max_rows: largest row count when ``buckets`` is not given (default 8).
        cuda_graphs: capture CUDA graphs (default: True on CUDA, impossible elsewhere).
        mode: torch.compile mode; default ``"reduce-overhead"`` with CUDA graphs, ``"max-autotune-no-cudagraphs"``
            on CUDA without, inductor's default on CPU.

    Raises:
        EngineError: ``cuda_graphs=True`` on a non-CUDA device; a call with more rows than the largest bucket.
    """

    name = "compile"

    def __init__(
        self,
        module: nn.Module,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        buckets: Sequence[int] | None = None,
        max_rows: int = 8,
        cuda_graphs: bool | None = None,
        mode: str | None = None,
    ) -> None:
        self.buckets = validate_buckets(buckets) if buckets else default_buckets(max_rows)
        super().__init__(module, device=device, dtype=dtype, max_rows=self.buckets[-1])
        on_cuda = self.device.type == "cuda"
        if cuda_graphs is None:
            cuda_graphs = on_cuda
        if cuda_graphs and not on_cuda:
            raise EngineError(f"cuda_graphs=True needs a CUDA device; this engine runs on {self.device}")
        self.cuda_graphs = cuda_graphs
        if mode is None and on_cuda:
            mode = "reduce-overhead" if cuda_graphs else "max-autotune-no-cudagraphs"
        self.mode = mode
        self.bucket_seconds: dict[int, tuple[float, float]] = {}
        self._compiled = None
        # (shape without the row dimension, dtype) of each warm-up argument: the layout every call is staged into.
        self._signature: list[tuple[tuple[int, ...], torch.dtype]] | None = None

    def build(self) -> "CompiledEngine":
        """Wrap the forward in ``torch.compile`` (lazy: graphs are compiled per bucket in :meth:`warmup`)."""
        _reserve_recompiles(len(self.buckets))
        self._compiled = torch.compile(self._forward, fullgraph=True, dynamic=False, mode=self.mode)
        return self

    def _forward(self, *args: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.dtype):
            return self.module(*args).float()

    def padded_rows(self, rows: int) -> int:
        """The bucket a call with ``rows`` rows runs at.

        Raises:
            EngineError: ``rows`` < 1 or above the largest bucket (the message names the limit).
        """
        return bucket_for(super().padded_rows(rows), self.buckets)

    def warmup(self, row_counts: Sequence[int] | None = None, example: Sequence[torch.Tensor] | None = None) -> None:
        """Compile and run every bucket that ``row_counts`` (default: all buckets) pads to.

        The first call of a bucket (trace + inductor codegen) is added to ``compile_seconds``, the later ones
        (CUDA-graph recording, replay) to ``warmup_seconds``; ``bucket_seconds[b] = (compile_s, last run_s)``.

        Args:
            row_counts: row counts the scheduler can form.
            example: one-row example inputs, e.g. ``(x[:1], t[:1], y[:1])`` for the SiT, ``(latent[:1],)`` for the
                decoder. Values do not matter, shapes and dtypes do.

        Raises:
            EngineError: no example given, or a row count beyond the largest bucket.
        """
        if example is None:
            raise EngineError("warmup of a compiled engine needs one-row example inputs (example=...)")
        if self._compiled is None:
            self.build()
        self._signature = [(tuple(e.shape[1:]), e.dtype) for e in example]
        # One eager call first: modules that initialise global state lazily (e.g. svg.attention's backend choice)
        # would otherwise change a guarded global during the first trace and force a recompile of bucket 1.
        with torch.no_grad():
            self._forward(*[e.to(self.device)[:1] for e in example])
        sizes = sorted({self.padded_rows(r) for r in (row_counts or self.buckets)})
        for size in sizes:
            inputs = [_repeat_rows(e.to(self.device), size) for e in example]
            timings = []
            # CUDA-graph trees run a bucket eagerly once, record it on the next call, replay from then on: three
            # calls leave every bucket in replay before serving starts.
            for _ in range(3 if self.cuda_graphs else 2):
                _sync(self.device)
                start = time.perf_counter()
                self(*inputs)
                _sync(self.device)
                timings.append(time.perf_counter() - start)
            self.bucket_seconds[size] = (timings[0], timings[-1])
            self.compile_seconds += timings[0]
            self.warmup_seconds += sum(timings[1:])

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        """Stage the rows into the bucket's buffers, run the compiled graph, return ``rows`` rows as float32 (a copy).

        Raises:
            EngineError: more rows than the largest bucket; after warm-up, a different argument count, an argument
                whose shape beyond dim 0 differs from the warm-up example, or a float/integer dtype mix-up.
        """
        if self._compiled is None:
            self.build()
        rows = self._check_rows(args)
        staged = self._stage(args, rows, self.padded_rows(rows))
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
            # The graph pool output is overwritten by the next replay: hand back a copy the caller owns.
            return self._compiled(*staged)[:rows].clone()
        out = self._compiled(*staged)
        return out if out.shape[0] == rows else out[:rows]

    def _stage(self, args: Sequence[torch.Tensor], rows: int, size: int) -> list[torch.Tensor]:
        """Copy each argument into a fresh contiguous ``(size, ...)`` buffer on the engine's device.

        The buffer has the warm-up dtype (a float stays a float, an integer an integer: ``t`` as float64 or ``y``
        as int32 are cast, never reinterpreted) and zeros in the padding rows (t = 0, class 0 and a zero latent
        are all valid inputs). One copy of the inputs per call is small next to the forward, and it makes the
        graph's input layout independent of the caller's (B30).
        """
        signature = self._signature
        if signature is not None and len(args) != len(signature):
            raise EngineError(f"this engine was warmed up with {len(signature)} arguments; got {len(args)}")
        staged = []
        for index, arg in enumerate(args):
            shape, dtype = (tuple(arg.shape[1:]), arg.dtype) if signature is None else signature[index]
            if tuple(arg.shape[1:]) != shape:
                raise EngineError(f"argument {index} has shape {tuple(arg.shape)}; this engine was warmed up for "
                                  f"({', '.join(['R', *map(str, shape)])}) and would have to recompile")
            if arg.dtype.is_floating_point != dtype.is_floating_point:
                raise EngineError(f"argument {index} has dtype {arg.dtype}; this engine was warmed up with {dtype}")
            buffer = torch.empty((size, *shape), dtype=dtype, device=self.device)
            buffer[:rows].copy_(arg)
            if size > rows:
                buffer[rows:].zero_()
            staged.append(buffer)
        return staged

    def stepper(self, slots) -> Stepper:
        """The sampling step over ``slots``, compiled whole: forward, guidance mix, update and write-back.

        ``torch.compile(fullgraph=True, dynamic=False)`` of :func:`svg.slots.step` with this engine's forward; each
        row bucket is one static graph (on CUDA one CUDA graph: the slot buffers are marked static addresses, the
        layout is copied into a persistent per-bucket buffer). A call pads its layout to the bucket with scratch
        rows: the only padding layer. Warm the buckets with :meth:`warmup_step` before serving.
        """
        from svg.slots import step

        if self.cuda_graphs:
            for buffer in slots.buffers():
                torch._dynamo.mark_static_address(buffer)
        _reserve_recompiles(len(self.buckets))
        compiled = torch.compile(lambda layout: step(self._forward, slots, layout), fullgraph=True, dynamic=False,
                                 mode=self.mode)
        layouts: dict[int, torch.Tensor] = {}  # bucket -> its persistent layout buffer

        def run(layout: torch.Tensor) -> None:
            rows = layout.shape[1]
            size = self.padded_rows(rows)
            staged = layouts.setdefault(size, torch.empty(4, size, dtype=torch.int64, device=self.device))
            staged[:, :rows].copy_(layout)
            if size > rows:
                staged[:, rows:].copy_(slots.padding(size - rows))
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                compiled(staged)

        return Stepper(run, slots)

    def warmup_step(self, run: Stepper, row_counts: Sequence[int]) -> None:
        """Compile (first call) and capture/replay (later calls) the step at each bucket of ``row_counts``."""
        for size in sorted({self.padded_rows(r) for r in row_counts}):
            timings = []
            for _ in range(3 if self.cuda_graphs else 2):
                _sync(self.device)
                start = time.perf_counter()
                run(run.slots.padding(size))
                _sync(self.device)
                timings.append(time.perf_counter() - start)
            self.bucket_seconds[size] = (timings[0], timings[-1])
            self.compile_seconds += timings[0]
            self.warmup_seconds += sum(timings[1:])

    def close(self) -> None:
        """Drop the compiled callable (dynamo's global cache is left to other engines)."""
        self._compiled = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class CompiledDecoderEngine(CompiledEngine):
    """:class:`CompiledEngine` for the decoder: ``engine(latent (R, C, h, w)) -> (R, 3, H, W)`` float32.

    Args:
        decoder: ``SVGAutoencoder`` (its ``decode`` is compiled) or a bare decoder module.
        clamp: clamp images to [-1, 1] (reference behaviour).
        **kwargs: as for :class:`CompiledEngine`.
    """

    def __init__(self, decoder: nn.Module, *, clamp: bool = True, **kwargs) -> None:
        super().__init__(DecodeAdapter(decoder, clamp), **kwargs)
