"""The engine interface shared by every back-end (eager, torch.compile, TensorRT).

An engine wraps a module and never forks it: ``engine(*args)`` returns what ``module(*args)`` returns, within the
engine's stated tolerance. The scheduler and worker only ever see this interface, so a new back-end plugs in without
touching them.

Lifecycle::

    engine = EagerEngine(model)        # cheap, no device work
    engine.build()                     # compile / load a cached artefact
    engine.warmup([1, 2, 4, 8])        # run every row bucket once, before /ready
    out = engine(x, t, y)              # same signature as SiT.forward
    engine.close()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class EngineError(RuntimeError):
    """Raised when an engine cannot be built or cannot serve a request shape (e.g. beyond a TensorRT profile)."""


class Engine:
    """Base class: wraps ``module`` and forwards calls to it.

    Attributes:
        name: short engine name used in metrics and ``/models`` (``eager``, ``compile``, ``tensorrt``).
        max_rows: the largest row count one call accepts, or ``None`` when unbounded.
        compile_seconds: wall time spent in ``build``/``warmup`` compiling (0 for eager).
    """

    name = "base"

    def __init__(self, module: nn.Module, *, max_rows: int | None = None) -> None:
        self.module = module
        self.max_rows = max_rows
        self.compile_seconds = 0.0
        self.warmup_seconds = 0.0

    def build(self) -> "Engine":
        """Prepare the engine (compile, load from cache). Returns ``self``."""
        return self

    def warmup(self, row_counts: Sequence[int]) -> None:
        """Run once for each row count the scheduler can form, so serving never compiles. Default: no-op."""

    def padded_rows(self, rows: int) -> int:
        """The row count a call with ``rows`` rows actually runs at (buckets pad up). Eager: ``rows``."""
        if self.max_rows is not None and rows > self.max_rows:
            raise EngineError(f"rows={rows} exceeds this engine's max_rows={self.max_rows}")
        return rows

    @torch.no_grad()
    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.module(*args)

    def close(self) -> None:
        """Release device memory and compiled artefacts."""


class EagerEngine(Engine):
    """Plain PyTorch module call: the reference every other engine is checked against."""

    name = "eager"
