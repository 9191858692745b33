"""Shared fixtures for the engine tests: one tiny SiT with non-trivial weights, one compiled engine reused by all
tests of a module (inductor compiles are slow on CPU, so each bucket is compiled once per session)."""

from __future__ import annotations

import pytest
import torch

from svg.config import SIT_PRESETS
from svg.sit import SiT

BUCKETS = (1, 2, 4)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Replace the adaLN-Zero init (which makes the output identically 0) by small random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.requires_grad and param.is_floating_point():
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return module


def sit_inputs(rows: int, seed: int, config=SIT_PRESETS["tiny"]):
    """``x (rows, T, C) f32, t (rows,) f32 in [0, 1], y (rows,) int64`` incl. the null class."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, config.num_tokens, config.in_channels, generator=gen)
    t = torch.rand(rows, generator=gen)
    y = torch.randint(0, config.num_classes + 1, (rows,), generator=gen)
    return x, t, y


@pytest.fixture(scope="session")
def tiny_sit() -> SiT:
    torch.manual_seed(0)
    return randomize(SiT(SIT_PRESETS["tiny"])).eval()


@pytest.fixture(scope="session")
def compiled_sit(tiny_sit):
    """A CompiledEngine over a private copy of the tiny SiT, buckets (1, 2, 4), warmed up; plus graph count."""
    import copy

    import torch._dynamo

    from engines.compiled import CompiledEngine

    engine = CompiledEngine(copy.deepcopy(tiny_sit), device="cpu", buckets=BUCKETS).build()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    engine.warmup(BUCKETS, example=sit_inputs(1, seed=0))
    engine.graphs_compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    return engine
