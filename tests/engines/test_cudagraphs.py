"""CUDA graphs that silently don't happen (case T19: ``reduce-overhead`` skipped CUDA graphs and nothing noticed).

The detection logic runs on CPU with a fake skip counter standing in for inductor's
``counters["inductor"]["cudagraph_skips"]``: per bucket it logs graphed / NOT graphed, feeds
``svg_engine_cudagraph_buckets`` in ``/metrics``, and strict mode fails start-up. The GPU side is
``python -m engines.cudagraphs`` (one CSV row per bucket, exit 1 on a skip).
"""

from __future__ import annotations

import logging

import pytest
import torch

from engines import cudagraphs
from engines.base import EngineError
from engines.cudagraphs import CudaGraphWatch, bucket_counts
from server.metrics import ServerMetrics


class FakeCounter:
    """Inductor's skip counter; ``skip_on`` lists the buckets whose warm-up 'skips' a graph."""

    def __init__(self, skip_on=()):
        self.value, self.skip_on, self.current = 0, set(skip_on), None

    def __call__(self) -> int:
        return self.value


def _warm(watch: CudaGraphWatch, counter: FakeCounter, buckets=(1, 2, 4, 8)) -> dict[int, bool]:
    for rows in buckets:
        with watch.bucket(rows):
            if rows in counter.skip_on:
                counter.value += 1  # what inductor does when it logs "skipping cudagraphs due to ..."
    return watch.finish()


@pytest.fixture(autouse=True)
def _clean():
    cudagraphs.reset()
    yield
    cudagraphs.reset()


def test_each_bucket_is_reported_logged_and_exported(caplog):
    counter = FakeCounter(skip_on={4})
    with caplog.at_level(logging.INFO, logger="svg.engines.cudagraphs"):
        graphed = _warm(CudaGraphWatch("sit", enabled=True, strict=False, counter=counter), counter)
    assert graphed == {1: True, 2: True, 4: False, 8: True}
    lines = [r.getMessage() for r in caplog.records]
    assert any("bucket 4 rows is NOT CUDA-graphed" in line for line in lines)
    assert sum("is CUDA-graphed" in line for line in lines) == 3
    assert bucket_counts() == {("sit", "graphed"): 3, ("sit", "skipped"): 1}
    text = ServerMetrics().render().decode()
    assert 'svg_engine_cudagraph_buckets{role="sit",state="graphed"} 3.0' in text
    assert 'svg_engine_cudagraph_buckets{role="sit",state="skipped"} 1.0' in text


def test_strict_mode_fails_start_up_naming_the_buckets(monkeypatch):
    counter = FakeCounter(skip_on={2, 8})
    with pytest.raises(EngineError, match=r"skipped for buckets \[2, 8\]"):
        _warm(CudaGraphWatch("decoder", enabled=True, strict=True, counter=counter), counter)
    monkeypatch.setenv("SVG_CUDAGRAPHS_STRICT", "1")
    assert CudaGraphWatch("sit", enabled=True).strict
    counter = FakeCounter()
    assert all(_warm(CudaGraphWatch("sit", enabled=True, counter=counter), counter).values())  # no skip: fine


def test_engines_without_cuda_graphs_report_nothing():
    counter = FakeCounter(skip_on={1})
    assert _warm(CudaGraphWatch("sit", enabled=False, strict=True, counter=counter), counter) == {}
    assert bucket_counts() == {}
    assert "svg_engine_cudagraph_buckets" not in ServerMetrics().render().decode()


def test_the_compiled_engine_calls_the_hook_per_bucket(monkeypatch):
    """The hook in CompiledEngine.warmup wraps each bucket's warm-up (CPU: graphs off, so the watch is disabled; the
    spy checks that it is built with the engine's setting and sees every bucket)."""
    from engines import compiled
    from engines.compiled import CompiledEngine
    from svg.config import SIT_PRESETS
    from svg.sit import SiT

    seen = []

    class Spy(CudaGraphWatch):
        def __init__(self, role, *, enabled, **kw):
            seen.append(("init", role, enabled))
            super().__init__(role, enabled=enabled, strict=False, counter=lambda: 0)

        def bucket(self, rows):
            seen.append(("bucket", rows))
            return super().bucket(rows)

    monkeypatch.setattr(compiled, "CudaGraphWatch", Spy)
    sit = SiT(SIT_PRESETS["tiny"])
    engine = CompiledEngine(sit, device="cpu", buckets=(1, 2), mode=None)
    monkeypatch.setattr(engine, "_compiled", lambda *args: sit(*args))  # no inductor compile on CPU here
    x, t, y = torch.zeros(1, 64, 36), torch.zeros(1), torch.zeros(1, dtype=torch.int64)
    engine.warmup([1, 2], example=(x, t, y))
    assert seen == [("init", "sit", False), ("bucket", 1), ("bucket", 2)]
    assert engine.cudagraph_buckets == {}
