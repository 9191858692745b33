"""GPU-only engine checks (skipped without CUDA / TensorRT): CUDA-graph engine recompiles (T17), aliasing, graph
memory (T20), bf16/fp16 finiteness (B01), TensorRT fp16 with LayerNorms in fp32 (T22/B02) and its profile (B31)."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch._dynamo

import engines
from engines.base import EagerEngine, EngineError, nonfinite_rows
from engines.compiled import CompiledEngine
from tests.engines.conftest import sit_inputs

GPU_BUCKETS = (1, 2, 4, 8, 16)


def _cuda(inputs):
    return tuple(a.cuda() for a in inputs)


@pytest.fixture(scope="module")
def graph_engine(tiny_sit):
    engine = CompiledEngine(copy.deepcopy(tiny_sit), device="cuda", dtype=torch.bfloat16, buckets=GPU_BUCKETS)
    engine.build()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    engine.warmup(GPU_BUCKETS, example=_cuda(sit_inputs(1, seed=0)))
    engine.graphs_compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    return engine


@pytest.mark.gpu
def test_cuda_graph_engine_no_recompile_after_200_requests(graph_engine, tiny_sit):
    assert graph_engine.cuda_graphs and graph_engine.graphs_compiled == len(GPU_BUCKETS)
    reference = copy.deepcopy(tiny_sit).cuda()
    rng = random.Random(0)
    before = dict(torch._dynamo.utils.counters["stats"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(200):
            rows = rng.randint(1, 16)
            x, t, y = _cuda(sit_inputs(rows, seed=i))
            out = graph_engine(x, t, y)
            assert out.shape[0] == rows and out.dtype == torch.float32
            if i % 50 == 0:
                with torch.no_grad():
                    ref = reference(x, t, y)
                assert (out - ref).abs().max() < 0.03 * ref.abs().max()
    assert dict(torch._dynamo.utils.counters["stats"]) == before


@pytest.mark.gpu
def test_cuda_graph_outputs_not_overwritten(graph_engine):
    first = graph_engine(*_cuda(sit_inputs(3, seed=1)))
    snapshot = first.clone()
    graph_engine(*_cuda(sit_inputs(3, seed=2)))
    third = graph_engine(*_cuda(sit_inputs(3, seed=1)))
    assert torch.equal(first, snapshot)
    assert first.cpu().numpy().tobytes() == third.cpu().numpy().tobytes()


@pytest.mark.gpu
def test_cuda_graph_memory_shared_pool(tiny_sit):
    # T20: all buckets' graphs together use about the memory of the largest alone, and stay flat under load.
    def growth(buckets):
        torch.cuda.synchronize()
        start = torch.cuda.memory_reserved()
        engine = CompiledEngine(copy.deepcopy(tiny_sit), device="cuda", dtype=torch.bfloat16, buckets=buckets)
        engine.warmup(buckets, example=_cuda(sit_inputs(1, seed=0)))
        torch.cuda.synchronize()
        return engine, torch.cuda.memory_reserved() - start

    _, largest = growth([16])
    engine, all_buckets = growth(list(GPU_BUCKETS))
    assert all_buckets <= 1.2 * largest + (8 << 20)
    after_warmup = torch.cuda.memory_reserved()
    rng = random.Random(1)
    for i in range(1000):
        engine(*_cuda(sit_inputs(rng.randint(1, 16), seed=i)))
    assert torch.cuda.memory_reserved() <= after_warmup + (8 << 20)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_eager_stays_finite(tiny_sit, dtype):
    # B01: fp16 with norms in fp32 must not turn the latents into NaN; inputs ×100 stress the LayerNorms.
    engine = EagerEngine(copy.deepcopy(tiny_sit), device="cuda", dtype=dtype)
    x, t, y = _cuda(sit_inputs(4, seed=3))
    out = engine(x * 100, t, y)
    assert not nonfinite_rows(out).any()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_fp16_matches_fp32_and_enforces_profile(tiny_sit, tmp_path):
    engine = engines.create("tensorrt", copy.deepcopy(tiny_sit), device="cuda", dtype="fp16", max_rows=8,
                            cache_dir=tmp_path, preset="tiny")
    reference = copy.deepcopy(tiny_sit).cuda()
    x, t, y = _cuda(sit_inputs(3, seed=4))
    x = x * 100  # T22: large activations overflow a LayerNorm computed in fp16
    out = engine(x, t, y)
    with torch.no_grad():
        ref = reference(x, t, y)
    assert not nonfinite_rows(out).any()
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cosine > 0.999
    with pytest.raises(EngineError, match="rows=9 exceeds this engine's max_rows=8"):
        engine(*_cuda(sit_inputs(9, seed=0)))
    again = engines.create("tensorrt", copy.deepcopy(tiny_sit), device="cuda", dtype="fp16", max_rows=8,
                           cache_dir=tmp_path, preset="tiny")
    assert again.loaded_from_cache and again.plan_path == engine.plan_path
