"""Worker-level checks with the real tiny model in-process: non-finite outputs are withheld and counted (B01)."""

from __future__ import annotations

import pytest
import torch

from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.model import load_model
from server.jobs import NonFiniteOutput, RowSpec, SampleRequest
from server.worker import FixedRows, Worker


def test_fixed_rows_pads_and_slices():
    calls = []

    def fn(x, y):
        calls.append(x.shape[0])
        return x * 2 + y

    out = FixedRows(fn, 4)(torch.ones(3, 2), torch.zeros(3, 2))
    assert calls == [4] and out.shape == (3, 2) and torch.equal(out, torch.full((3, 2), 2.0))
    with pytest.raises(ValueError, match="rows=5"):
        FixedRows(fn, 4)(torch.ones(5, 2), torch.ones(5, 2))


def test_nonfinite_output_fails_the_request_and_is_counted(model_dir):
    from svg.sampling import Guidance, Solver

    def poisoned(cfg):
        model = load_model(cfg)
        with torch.no_grad():
            for p in model.pipeline.sit.parameters():
                p.fill_(float("nan"))
        return model

    metrics = ServerMetrics()
    worker = Worker(ServerConfig(model_dir=model_dir, device="cpu", max_rows=4, warmup=False), metrics, poisoned)
    worker.start()
    try:
        assert worker.ready.wait(120), worker.load_error
        job = SampleRequest("r1", "generate", (RowSpec(label=1, seed=0, index=0),), 2, 0.15, Guidance(), Solver.EULER)
        with pytest.raises(NonFiniteOutput, match="non-finite output"):
            worker.submit(job).result(timeout=60)
        assert metrics.nonfinite_total._value.get() == 1
        assert worker.scheduler.inflight() == 0
    finally:
        worker.stop()


def test_gpu_gauges_are_absent_without_a_gpu_and_never_break_a_scrape():
    text = ServerMetrics(gpu_device_index=0).render().decode()
    assert "svg_ready" in text
    if not torch.cuda.is_available():
        assert "svg_gpu_memory_bytes" not in text


def test_mfu_ratio_uses_rows_per_window():
    m = ServerMetrics(flops_per_row=1e9, peak_flops=1e12, mfu_window_s=10.0)
    m.observe_step(100, 0.5, now=0.0)
    m.observe_step(100, 0.5, now=1.0)
    assert abs(m.mfu_ratio._value.get() - 200 * 1e9 / 10.0 / 1e12) < 1e-12
    m.observe_step(1, 0.5, now=20.0)  # the old rows left the window
    assert abs(m.mfu_ratio._value.get() - 1e9 / 10.0 / 1e12) < 1e-12
