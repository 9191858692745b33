"""The device worker: one thread that owns the model, the slot batch and the step loop.

Lifecycle: :meth:`Worker.start` spawns the thread, which loads the model (``/health`` answers meanwhile), builds the
:class:`svg.slots.SlotBatch` (``max_rows`` slots) and the engine's stepper, warms up every row bucket, sets
``ready`` and then loops (:meth:`Worker._iteration`):

1. run queued device tasks (``/encode``, ``/reconstruct``, edit preparation) between steps;
2. ``plan = scheduler.plan()``: resolve dropped requests (cancelled, past deadline) and retire their slots; admit
   each newly planned row into its slot (start noise from its own seed, its schedule of evaluations);
3. ``stepper(layout)``: ONE compiled-or-eager step (forward, guidance, update, edit re-impose) over the planned
   slots and their unconditional twins;
4. retire the rows that are done, decode them in batches of at most ``decode_batch`` (a non-finite row fails its
   request, never a garbage PNG), resolve complete requests, and report ``scheduler.update(finished, failed)``.

The scheduler owns the request lifecycle; the worker holds only device state and the futures. Determinism: a
row's noise comes only from ``(seed, index)`` and the step is batch-invariant (svg/slots.py), so its bytes never
depend on its batch mates or its slot (cases B10, B33, B40). The HTTP side never touches torch state: it calls
:meth:`submit`, :meth:`cancel` and :meth:`run_device`, which only enqueue work and return futures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from server.config import ServerConfig
from server.jobs import (Cancelled, DeadlineExceeded, JobError, NonFiniteOutput, NotReady, OutOfMemory,
                         ProgressEvent, SampleRequest, SampleResult, WorkerError)
from server.metrics import ServerMetrics
from server.model import LoadedModel, images_to_uint8, load_model
from server.scheduler import DropReason, RowKey, Scheduler

log = logging.getLogger("svg.server")


@dataclass(eq=False)
class _Live:
    """A request the worker has futures and images for (its lifecycle state lives in the scheduler)."""

    request: SampleRequest
    nfe: int  # forward rows per image: the sum of its exact per-evaluation costs
    stages: int  # evaluations per step (Heun 2)
    start: int  # first step on the grid (SDEdit)
    future: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    images: dict[int, np.ndarray] = field(default_factory=dict)
    evals_done: dict[int, int] = field(default_factory=dict)  # row -> evaluations done
    decode_s: float = 0.0
    cancel_reason: str = "client_disconnect"


class Worker:
    """Owns the device; see the module docstring.

    Args:
        cfg: the server configuration. metrics: where to record. model_loader: ``cfg -> LoadedModel`` (tests may
        pass a loader for another checkpoint; the default reads ``cfg``).
    """

    def __init__(self, cfg: ServerConfig, metrics: ServerMetrics,
                 model_loader: Callable[[ServerConfig], LoadedModel] = load_model) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.model_loader = model_loader
        self.scheduler = Scheduler(max_rows=cfg.max_rows, max_queue=cfg.max_queue, max_wait_s=cfg.batch_wait_s,
                                   max_requests_per_step=cfg.max_requests_per_step or None)
        self.model: LoadedModel | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._live: dict[str, _Live] = {}
        self._slot_of: dict[RowKey, int] = {}  # rows admitted to the slot batch
        self._tasks: deque[tuple[Callable[[LoadedModel], object], Future]] = deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="svg-device-worker", daemon=True)

    # -- called from the HTTP side -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the device thread (loads the model, warms up, then serves)."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; unfinished requests fail with :class:`NotReady`."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout)

    def submit(self, request: SampleRequest) -> Future:
        """Queue a sampling request; the future resolves to a :class:`SampleResult` or fails with a ``JobError``.

        Raises:
            NotReady: before the model is loaded. scheduler.QueueFull: at once, when the queue is full.
        """
        if not self.ready.is_set():
            raise NotReady("model is not loaded yet")
        from svg.editing import sdedit_start
        from svg.sampling import Solver, evaluation_costs, schedule, time_grid

        start = sdedit_start(request.steps, request.strength) if request.kind == "edit" else 0
        costs = evaluation_costs(schedule(time_grid(request.steps, request.shift), request.guidance, request.solver,
                                          start=start))
        live = _Live(request, sum(costs), 2 if Solver(request.solver) is Solver.HEUN else 1, start)
        with self._wake:
            if request.request_id in self._live:
                raise ValueError(f"request_id={request.request_id!r} is already live")
            self._live[request.request_id] = live
            try:
                self.scheduler.submit(request.request_id, [costs] * len(request.rows),
                                      time.monotonic() + self.cfg.request_timeout_s)
            except Exception:
                del self._live[request.request_id]
                raise
            self._wake.notify_all()
        self._update_gauges()
        return live.future

    def cancel(self, request_id: str, reason: str = "client_disconnect") -> bool:
        """Cancel a queued or running request at the next step boundary; ``reason`` labels the metric."""
        live = self._live.get(request_id)
        if live is not None:
            live.cancel_reason = reason
        ok = self.scheduler.cancel(request_id, DropReason.CANCELLED)
        with self._wake:
            self._wake.notify_all()
        return ok

    def run_device(self, fn: Callable[[LoadedModel], object]) -> Future:
        """Run ``fn(model)`` on the device thread between two steps; returns its future."""
        if not self.ready.is_set():
            raise NotReady("model is not loaded yet")
        fut: Future = Future()
        with self._wake:
            self._tasks.append((fn, fut))
            self._wake.notify_all()
        return fut

    # -- the device thread ---------------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            torch.set_grad_enabled(False)
            self.model = m = self.model_loader(self.cfg)
            from svg.slots import SlotBatch

            self.slots = SlotBatch(self.cfg.max_rows, m.tokens, m.channels, max_evals=2 * self.cfg.max_steps,
                                   num_classes=m.num_classes, device=m.device)
            self.stepper = m.sit_engine.stepper(self.slots)
            self.metrics.flops_per_row = m.flops_per_row
            if self.cfg.warmup:
                self._warmup()
        except Exception as exc:  # load failure: keep serving /health with the reason, never /ready
            log.exception("model load failed")
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        self.ready.set()
        self.metrics.ready.set(1)
        log.info("model ready on %s", self.model.device)
        while True:
            with self._wake:
                if self._stop:
                    break
            try:
                self._iteration()
            except torch.cuda.OutOfMemoryError:  # case B26: fail the running requests fast, free the cache
                log.exception("device out of memory")
                self._fail_all(OutOfMemory("device out of memory; retry with fewer images or steps"))
                torch.cuda.empty_cache()
            except Exception:  # a bug in one step must not kill the device thread: fail its requests, go on
                log.exception("worker step failed")
                self._fail_all(WorkerError("internal error in the device worker"))
        self.metrics.ready.set(0)
        self._fail_all(NotReady("server is shutting down"))

    def _warmup(self) -> None:
        """Compile/capture the step at every row bucket the scheduler can form, and decode one latent."""
        engine = self.model.sit_engine
        engine.warmup_step(self.stepper, getattr(engine, "buckets", None) or [1, self.cfg.max_rows])
        self.model.decode_tokens(self.slots.x[:1].clone())

    def _iteration(self) -> None:
        self._run_tasks()
        plan = self.scheduler.plan()
        for rid, reason in plan.dropped:
            self._drop(rid, reason)
        for key in [k for k in self._slot_of if k not in plan.slots]:  # rows of dropped / failed requests
            self.slots.retire(self._slot_of.pop(key))
        for rid, wait in plan.started:
            self.metrics.queue_wait_seconds.observe(wait)
            live = self._live[rid]
            live.started_at = time.monotonic()
            self._emit(live, "started", 0)
        for key in plan.admitted:
            self._admit(key, plan.slots[key])
        self._update_gauges()
        if not plan.rows:
            with self._wake:
                if not self._tasks and not self._stop:
                    self._wake.wait(timeout=plan.wait_s if plan.wait_s is not None else 0.1)
            return
        slots = [plan.slots[k] for k in plan.rows]
        layout = self.slots.layout(slots)  # (4, R): R = plan.cost forward rows
        t0 = time.perf_counter()
        self.stepper(layout)
        self.metrics.observe_step(layout.shape[1], time.perf_counter() - t0)
        done = set(self.slots.advance(slots))
        finished = [k for k in plan.rows if plan.slots[k] in done]
        self._progress(plan.rows)
        failed = self._decode(finished)
        done = self.scheduler.update(finished, failed)  # the lifecycle first, so a resolved future sees it
        for key in [k for k in self._slot_of if k[0] in failed]:
            self.slots.retire(self._slot_of.pop(key))
        for rid in failed:
            self._finish(self._live[rid], NonFiniteOutput("non-finite output: the model produced NaN/inf"))
        for rid in done:
            self._resolve(self._live[rid])

    def _admit(self, key: RowKey, slot: int) -> None:
        """Write the row's start state into its slot (noise from its own seed: batch- and slot-independent)."""
        from svg.editing import edit_trajectory
        from svg.sampling import RowPlan, initial_noise, time_grid

        m, live = self.model, self._live[key[0]]
        req, spec = live.request, live.request.rows[key[1]]
        if spec.edit is not None:
            reference, editable = (x.to(m.device) for x in spec.edit)
            plan = edit_trajectory(reference, spec.label, strength=req.strength, steps=req.steps, shift=req.shift,
                                   guidance=req.guidance, solver=req.solver, seed=spec.seed, index=spec.index,
                                   editable=editable, num_classes=m.num_classes)
        else:
            noise = spec.noise if spec.noise is not None else initial_noise(spec.seed, spec.index,
                                                                             (m.tokens, m.channels))
            plan = RowPlan(noise.to(m.device, torch.float32), spec.label, time_grid(req.steps, req.shift),
                           req.guidance, req.solver, num_classes=m.num_classes)
        self.slots.admit(slot, plan)
        self._slot_of[key] = slot
        live.evals_done[key[1]] = 0

    def _progress(self, rows: list[RowKey]) -> None:
        """Count one evaluation per row; a "progress" event per request whose slowest row completed a step."""
        advanced: dict[str, _Live] = {}
        for rid, index in rows:
            live = self._live[rid]
            live.evals_done[index] += 1
            advanced[rid] = live
        for live in advanced.values():
            if len(live.evals_done) == len(live.request.rows):
                slowest = min(live.evals_done.values())
                if slowest % live.stages == 0:
                    self._emit(live, "progress", live.start + slowest // live.stages)

    def _decode(self, finished: list[RowKey]) -> list[str]:
        """Retire finished rows, decode them in batches of ``decode_batch``; returns requests that failed (NaN/inf)."""
        failed: list[str] = []
        for i in range(0, len(finished), self.cfg.decode_batch):
            batch = finished[i:i + self.cfg.decode_batch]
            tokens = torch.stack([self.slots.retire(self._slot_of.pop(k)) for k in batch])  # (R, T, C), a copy
            t0 = time.perf_counter()
            images = self.model.decode_tokens(tokens)  # (R, 3, H, W)
            seconds = time.perf_counter() - t0
            self.metrics.decode_latency_seconds.observe(seconds)
            bad = (~torch.isfinite(tokens.flatten(1)).all(1)) | (~torch.isfinite(images.flatten(1)).all(1))
            pixels = images_to_uint8(torch.nan_to_num(images))
            for n, (rid, index) in enumerate(batch):
                live = self._live[rid]
                live.decode_s += seconds / len(batch)
                if bool(bad[n]) and rid not in failed:
                    self.metrics.nonfinite_total.inc()
                    failed.append(rid)
                live.images[index] = pixels[n]
        return failed

    def _resolve(self, live: _Live) -> None:
        now = time.monotonic()
        started = live.started_at or now
        req = live.request
        self._finish(live, SampleResult(images=[live.images[i] for i in range(len(req.rows))], nfe=live.nfe,
                                        queue_s=started - live.submitted_at,
                                        sampling_s=max(0.0, now - started - live.decode_s), decode_s=live.decode_s))

    def _finish(self, live: _Live, outcome: SampleResult | JobError) -> None:
        self._live.pop(live.request.request_id, None)
        if live.future.done():
            return
        if isinstance(outcome, JobError):
            live.future.set_exception(outcome)
        else:
            live.future.set_result(outcome)

    def _drop(self, rid: str, reason: DropReason) -> None:
        live = self._live.get(rid)
        if live is None:
            return
        if reason is DropReason.DEADLINE:
            self.metrics.cancellations_total.labels(reason="deadline").inc()
            self._finish(live, DeadlineExceeded(f"request_timeout_s={self.cfg.request_timeout_s} exceeded"))
        else:
            self.metrics.cancellations_total.labels(reason=live.cancel_reason).inc()
            self._finish(live, Cancelled(f"cancelled ({live.cancel_reason})"))

    def _emit(self, live: _Live, kind: str, step: int) -> None:
        callback = live.request.on_event
        if callback is None:
            return
        try:
            callback(ProgressEvent(kind, step, live.request.steps, time.monotonic() - live.submitted_at))
        except Exception:  # a bad callback must not kill the device loop
            log.exception("on_event callback of request %s failed", live.request.request_id)

    def _run_tasks(self) -> None:
        while True:
            with self._wake:
                if not self._tasks:
                    return
                fn, fut = self._tasks.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(self.model))
            except Exception as exc:  # handed to the awaiting request, which maps it to an HTTP status
                fut.set_exception(exc)

    def _fail_all(self, error: JobError) -> None:
        """Fail every live request (the scheduler forgets them, their slots are retired)."""
        self.scheduler.update(failed=list(self._live))
        for live in list(self._live.values()):
            self._finish(live, error)
        for key in list(self._slot_of):
            self.slots.retire(self._slot_of.pop(key))

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.scheduler.queue_depth())
        self.metrics.inflight_requests.set(self.scheduler.inflight())
