"""Worker-level checks with real models in-process: batch-invariant bytes whatever shares the step and whatever
slot a request gets (issue 10), progress events, no slot leaks, non-finite outputs withheld and counted (B01)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from server.config import ServerConfig
from server.jobs import NonFiniteOutput, ProgressEvent, RowSpec, SampleRequest
from server.metrics import ServerMetrics
from server.model import load_model
from server.worker import Worker
from svg.sampling import Guidance, GuidanceMode, Solver

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def _request(rid, labels, *, steps=4, guidance=Guidance(GuidanceMode.CONSTANT, 4.0), solver=Solver.EULER, seed=11,
             kind="generate", edit=None, strength=1.0, noise=None, on_event=None):
    rows = tuple(RowSpec(label=c, seed=seed, index=i, edit=edit, noise=noise) for i, c in enumerate(labels))
    return SampleRequest(rid, kind, rows, steps, 0.15, guidance, solver, strength=strength, on_event=on_event)


@pytest.fixture(scope="module")
def demo_worker():
    """The demo model with the DEFAULT server configuration (CPU)."""
    worker = Worker(ServerConfig(device="cpu"), ServerMetrics())
    worker.start()
    assert worker.ready.wait(600), worker.load_error
    yield worker
    worker.stop()


def test_one_request_alone_and_among_seven_others_gives_identical_bytes(demo_worker):
    w = demo_worker
    m = w.model
    admitted: list[int] = []  # slots in admission order
    latents: dict[int, torch.Tensor] = {}  # admission index -> final latent, recorded when its slot is retired
    admit, retire = w.slots.admit, w.slots.retire

    def record_admit(slot, plan, *a):
        admitted.append(slot)
        return admit(slot, plan, *a)

    def record_retire(slot):
        latent = retire(slot)
        latents[max(i for i, s in enumerate(admitted) if s == slot)] = latent.clone()
        return latent

    w.slots.admit, w.slots.retire = record_admit, record_retire
    try:
        # One image with late guidance: its first steps run ONE forward row alone (M = 1 in every GEMM of the
        # conditioning path) and it decodes alone: both are where CPU BLAS/convolutions round differently.
        target = dict(steps=4, guidance=Guidance(GuidanceMode.LATE, 4.0))
        alone = w.submit(_request("alone", [3], **target)).result(timeout=600)
        alone_slots, alone_latents = list(admitted), [latents[0]]
        admitted.clear()
        latents.clear()
        g = torch.Generator().manual_seed(0)
        reference = torch.randn(m.tokens, m.channels, generator=g)
        editable = (torch.arange(m.tokens) % 2).float()[:, None]
        others = [
            _request("o1", [1], steps=6, guidance=Guidance()),
            _request("o2", [2, 5, 9], steps=3, guidance=Guidance(GuidanceMode.LATE, 3.0), seed=5),
            _request("o3", [4], steps=5, guidance=Guidance(GuidanceMode.ZERO_INIT, 2.0), solver=Solver.HEUN),
            _request("o4", [6], steps=8, kind="edit", edit=(reference, editable), strength=0.5, seed=2),
            _request("o5", [8], steps=2, kind="interpolate", noise=torch.randn(m.tokens, m.channels, generator=g)),
            _request("o6", [0], steps=7, guidance=Guidance(GuidanceMode.LINEAR, 2.0), seed=9),
            _request("o7", [2], steps=4, guidance=Guidance(GuidanceMode.INTERVAL, 5.0, interval=(0.2, 0.6))),
        ]
        futures = [w.submit(r) for r in others[:4]] + [w.submit(_request("mixed", [3], **target))] + \
                  [w.submit(r) for r in others[4:]]
        results = [f.result(timeout=600) for f in futures]
    finally:
        w.slots.admit, w.slots.retire = admit, retire
    mixed = results[4]
    mixed_slots = admitted[6:7]  # o1..o4 hold rows 0..5 of the admission order
    assert mixed_slots != alone_slots  # the same request really ran in other slots
    assert all(np.array_equal(a, b) for a, b in zip(alone.images, mixed.images))  # bit-identical bytes
    assert torch.equal(latents[6], alone_latents[0])  # and bit-identical latents
    assert mixed.nfe == alone.nfe == 6  # late guidance: steps 3 and 4 of 4 run the twin
    assert results[2].nfe == 2 * 5 * 2 - 2  # Heun, cfg_star's first step has no twin (both of its evaluations)
    assert w.slots.occupied() == [] and w.scheduler.inflight() == 0  # nothing leaked


def test_progress_events_and_a_failing_callback_do_not_stop_the_loop(demo_worker):
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def record(event):
        with lock:
            events.append(event)

    def broken(event):
        raise RuntimeError("a bad callback")

    bad = demo_worker.submit(_request("bad-callback", [1], steps=2, on_event=broken))
    good = demo_worker.submit(_request("events", [1, 2], steps=3, on_event=record))
    assert len(bad.result(timeout=300).images) == 1 and len(good.result(timeout=300).images) == 2
    assert [e.kind for e in events] == ["started", "progress", "progress", "progress"]
    assert [e.step for e in events] == [0, 1, 2, 3] and all(e.total == 3 for e in events)


def test_nonfinite_output_fails_the_request_and_is_counted(model_dir):
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
        job = _request("r1", [1, 2], steps=2, guidance=Guidance())
        with pytest.raises(NonFiniteOutput, match="non-finite output"):
            worker.submit(job).result(timeout=60)
        assert metrics.nonfinite_total._value.get() == 1
        assert worker.scheduler.inflight() == 0 and worker.slots.occupied() == []
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
