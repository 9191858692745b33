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


def _mixed_plans(x, classes):
    from svg.sampling import Guidance, GuidanceMode, RowPlan, Solver, time_grid

    # a guided row, an unguided one (no twin), a Heun row with cfg_star and a late-guidance row: every branch
    return [RowPlan(x[0].clone(), 3, time_grid(4, 0.15), Guidance(GuidanceMode.CONSTANT, 4.0), num_classes=classes),
            RowPlan(x[1].clone(), 5, time_grid(3, 0.15), Guidance(), num_classes=classes),
            RowPlan(x[2].clone(), 7, time_grid(2, 0.3), Guidance(GuidanceMode.ZERO_INIT, 2.0), Solver.HEUN,
                    num_classes=classes),
            RowPlan(x[0].clone(), 1, time_grid(5, 0.15), Guidance(GuidanceMode.LATE, 3.0), num_classes=classes)]


def _run(stepper, slots, plans, order):
    for slot, plan in zip(order, plans):
        slots.admit(slot, plan)
    active = list(order)
    while active:
        stepper(slots.layout(active))
        done = slots.advance(active)
        active = [s for s in active if s not in done]
    return [slots.retire(s).clone() for s in order]


def test_no_graph_breaks_in_sit_and_the_sampling_step(tiny_sit):
    # fullgraph=True raises on any graph break, so this traces the library's own code: the SiT forward and
    # svg.slots.step, the one sampling step (forward with twins, guidance mix, Euler/Heun update, edit re-impose).
    # backend="eager" only traces; unlike torch._dynamo.explain it does not reset dynamo, so the shared
    # compiled_sit fixture keeps its graphs.
    from svg.config import SIT_PRESETS
    from svg.slots import SlotBatch, step

    x, t, y = sit_inputs(3, seed=3)
    sit_graph = torch.compile(tiny_sit, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(sit_graph(x, t, y), tiny_sit(x, t, y))
    config = SIT_PRESETS["tiny"]
    results = []
    for compiled in (False, True):
        slots = SlotBatch(4, config.num_tokens, config.in_channels, max_evals=8, num_classes=config.num_classes)
        fn = (torch.compile(lambda layout: step(tiny_sit, slots, layout), fullgraph=True, backend="eager")
              if compiled else (lambda layout: step(tiny_sit, slots, layout)))
        with torch.no_grad():
            results.append(_run(fn, slots, _mixed_plans(x, config.num_classes), [0, 1, 2, 3]))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_compiled_step_one_graph_per_bucket_no_recompile_and_rows_equal_across_buckets(tiny_sit):
    import copy

    from engines.compiled import CompiledEngine
    from svg.config import SIT_PRESETS
    from svg.slots import SlotBatch

    config = SIT_PRESETS["tiny"]
    engine = CompiledEngine(copy.deepcopy(tiny_sit), device="cpu", buckets=(1, 2, 4, 8)).build()
    engine.module.cond_rows = 8  # as engines.create does for a batch-invariant SiT
    slots = SlotBatch(8, config.num_tokens, config.in_channels, max_evals=10, num_classes=config.num_classes)
    stepper = engine.stepper(slots)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    engine.warmup_step(stepper, [1, 2, 4, 8])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 4  # one graph per bucket
    x = sit_inputs(3, seed=4)[0]
    plans = _mixed_plans(x, config.num_classes)
    stats = dict(torch._dynamo.utils.counters["stats"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        together = _run(stepper, slots, plans, [5, 0, 7, 2])  # 4..6 forward rows: buckets 4 and 8
        alone = [_run(stepper, slots, [plan], [slot])[0] for plan, slot in zip(plans, [1, 3, 4, 6])]  # 1..2 rows
    assert dict(torch._dynamo.utils.counters["stats"]) == stats  # served without compiling anything
    assert all(torch.equal(a, b) for a, b in zip(together, alone))  # compiled buckets are batch-invariant too
    eager = EagerEngine(copy.deepcopy(tiny_sit), device="cpu")
    eager_slots = SlotBatch(8, config.num_tokens, config.in_channels, max_evals=10, num_classes=config.num_classes)
    reference = _run(eager.stepper(eager_slots), eager_slots, plans, [0, 1, 2, 3])
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(together, reference))
    assert slots.occupied() == []


def test_cuda_graphs_need_cuda(tiny_sit):
    from engines.compiled import CompiledEngine

    with pytest.raises(EngineError, match="cuda_graphs=True needs a CUDA device"):
        CompiledEngine(tiny_sit, device="cpu", cuda_graphs=True)


def test_warmup_needs_example(compiled_sit):
    with pytest.raises(EngineError, match="example"):
        compiled_sit.warmup([1])
