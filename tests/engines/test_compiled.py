"""Compiled engine on CPU (inductor): parity with eager, no recompilation after warm-up (T17/B30), no aliasing of
outputs between calls, no graph breaks (T18), bucket padding and the row limit."""

from __future__ import annotations

import random

import pytest
import torch
import torch._dynamo

from engines.base import EagerEngine, EngineError
from tests.engines.conftest import BUCKETS, sit_inputs


def test_compiled_matches_eager_fp32(tiny_sit, compiled_sit):
    eager = EagerEngine(tiny_sit, device="cpu")
    for rows in (1, 3, 4):
        x, t, y = sit_inputs(rows, seed=rows)
        ref = eager(x, t, y)
        out = compiled_sit(x, t, y)
        assert out.shape == ref.shape == (rows, 64, 72)
        assert out.dtype == torch.float32
        assert ref.abs().max() > 1e-3  # the weights are non-trivial, so the comparison means something
        assert (out - ref).abs().max().item() < 1e-4


def test_one_graph_per_bucket_and_no_recompile_after_warmup(compiled_sit):
    assert compiled_sit.graphs_compiled == len(BUCKETS)
    assert set(compiled_sit.bucket_seconds) == set(BUCKETS)
    assert compiled_sit.compile_seconds > 0 and compiled_sit.warmup_seconds > 0
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    assert limit >= len(BUCKETS)
    before = dict(torch._dynamo.utils.counters["stats"])
    rng = random.Random(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(24):
            rows = rng.randint(1, BUCKETS[-1])
            out = compiled_sit(*sit_inputs(rows, seed=rows))
            assert out.shape[0] == rows
    assert dict(torch._dynamo.utils.counters["stats"]) == before


def test_padded_rows_and_limit(compiled_sit):
    assert [compiled_sit.padded_rows(r) for r in (1, 2, 3, 4)] == [1, 2, 4, 4]
    with pytest.raises(EngineError, match="max_rows=4"):
        compiled_sit.padded_rows(5)
    with pytest.raises(EngineError, match="rows=5"):
        compiled_sit(*sit_inputs(5, seed=0))
    with pytest.raises(EngineError, match="rows=0"):
        compiled_sit.padded_rows(0)


def test_outputs_not_overwritten_by_next_call(compiled_sit):
    # seed 1, seed 2, seed 1: byte-identical results, and the first result is untouched by later calls.
    first = compiled_sit(*sit_inputs(3, seed=1))
    snapshot = first.clone()
    second = compiled_sit(*sit_inputs(3, seed=2))
    third = compiled_sit(*sit_inputs(3, seed=1))
    assert not torch.equal(first, second)
    assert torch.equal(first, snapshot)
    assert first.numpy().tobytes() == third.numpy().tobytes()
    assert first.data_ptr() != third.data_ptr()


def test_no_graph_breaks_in_sit_and_guided_euler_step(tiny_sit):
    # fullgraph=True raises on any graph break, so this traces the library's own code: the SiT forward and
    # svg.sampling.step_batch, the batched guided Euler step the server's worker runs (one forward with the
    # unconditional twins appended, vectorised CFG, Euler update). backend="eager" only traces; unlike
    # torch._dynamo.explain it does not reset dynamo, so the shared compiled_sit fixture keeps its graphs.
    from svg.config import SIT_PRESETS
    from svg.sampling import Guidance, GuidanceMode, Trajectory, step_batch, time_grid

    x, t, y = sit_inputs(3, seed=3)
    sit_graph = torch.compile(tiny_sit, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(sit_graph(x, t, y), tiny_sit(x, t, y))

    classes, grid = SIT_PRESETS["tiny"].num_classes, time_grid(4, 0.15)

    def trajectories() -> list[Trajectory]:
        # a guided row, an unguided one (no twin) and a second guided row with another scale: every branch
        return [Trajectory(x[0].clone(), 3, grid, Guidance(GuidanceMode.CONSTANT, 4.0), num_classes=classes),
                Trajectory(x[1].clone(), 5, grid, Guidance(GuidanceMode.NONE, 1.0), num_classes=classes),
                Trajectory(x[2].clone(), 7, grid, Guidance(GuidanceMode.CONSTANT, 2.0), num_classes=classes)]

    eager, traced = trajectories(), trajectories()
    step_graph = torch.compile(step_batch, fullgraph=True, backend="eager")
    for _ in range(2):  # the second call runs the traced graph (or re-traces, again without a break)
        assert step_graph(tiny_sit, traced) == step_batch(tiny_sit, eager) == 5  # 3 rows + 2 unconditional twins
    assert [tr.index for tr in traced] == [2, 2, 2]
    for a, b in zip(traced, eager):
        assert torch.equal(a.z, b.z)
        assert (a.nfe, a.rows) == (b.nfe, b.rows)


def test_cuda_graphs_need_cuda(tiny_sit):
    from engines.compiled import CompiledEngine

    with pytest.raises(EngineError, match="cuda_graphs=True needs a CUDA device"):
        CompiledEngine(tiny_sit, device="cpu", cuda_graphs=True)


def test_warmup_needs_example(compiled_sit):
    with pytest.raises(EngineError, match="example"):
        compiled_sit.warmup([1])
