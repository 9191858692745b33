"""The device worker: one thread that owns the model and runs the step-level batching loop.

Lifecycle: :meth:`Worker.start` spawns the thread, which loads the model (``/health`` answers meanwhile), warms it
up, sets ``ready`` and then loops:

1. run queued device tasks (``/encode``, ``/reconstruct``, edit preparation) between steps;
2. ask :class:`server.scheduler.Scheduler` for the next step's rows; resolve dropped (cancelled / past deadline)
   requests; create the :class:`svg.sampling.Trajectory` of each newly admitted row from its own seed;
3. call :func:`svg.sampling.step_batch` ONCE on all running trajectories through the SiT engine;
4. retire finished rows, decode them in separate batches of at most ``decode_batch`` through the decoder engine,
   check every row for NaN/inf (a non-finite row fails its request with 500 ``non-finite output``, never a garbage
   PNG), and resolve each request's future when all its images are in.

Determinism: a row's noise comes only from ``(seed, index)`` (``svg.sampling.initial_noise``) and its trajectory
carries its own grid, class and guidance, so its result never depends on its batch mates (cases B10, B33, B40) —
up to the model's own batch-size dependence, which is zero on CPU float32 in our tests.

The HTTP side never touches torch state: it calls :meth:`submit`, :meth:`cancel` and :meth:`run_device`, which
only enqueue work and return ``concurrent.futures.Future`` objects that the event loop awaits.
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
from server.metrics import ServerMetrics
from server.model import LoadedModel, images_to_uint8, load_model
from server.jobs import (Cancelled, DeadlineExceeded, JobError, NonFiniteOutput, NotReady, OutOfMemory, RowSpec,
                         SampleRequest, SampleResult, WorkerError)
from server.scheduler import DropReason, Scheduler

log = logging.getLogger("svg.server")


class FixedRows:
    """Calls ``fn`` with its row dimension padded to exactly ``rows`` (repeating row 0) and slices the result.

    CPU (and GPU) GEMMs pick their blocking and reduction order from the shape, so the same row can differ in the
    last bit between a 1-row and a 3-row call. With one fixed shape every row's result depends only on its own
    inputs: this is what makes batched and solo outputs bit-identical (cases B10, B33, B40).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], rows: int) -> None:
        self.fn, self.rows = fn, rows

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        n = args[0].shape[0]
        if n > self.rows:
            raise ValueError(f"rows={n} exceeds the fixed row count {self.rows}")
        if n == self.rows:
            return self.fn(*args)
        padded = [torch.cat([a, a[:1].expand(self.rows - n, *a.shape[1:])]) for a in args]
        return self.fn(*padded)[:n]


# The worker contract lives in server/jobs.py; the old failure names stay as aliases inside this module.
RequestFailed = JobError


@dataclass
class SampleJob:
    """One sampling request (generate, edit or interpolate) as the worker tracks it."""

    request_id: str
    endpoint: str
    rows: list[RowSpec]
    steps: int
    shift: float
    guidance: object  # svg.sampling.Guidance
    solver: object  # svg.sampling.Solver
    strength: float = 1.0  # SDEdit strength (edit rows only)
    future: Future = field(default_factory=Future)
    images: dict[int, np.ndarray] = field(default_factory=dict)
    nfe: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    decode_s: float = 0.0
    cancel_reason: str = "client_disconnect"
    failed: bool = False
    on_event: Callable | None = None  # SampleRequest.on_event (progress streaming)
    progress: dict[int, tuple[int, int]] = field(default_factory=dict)  # row -> (steps done, steps it runs)
    reported: int = 0

    @property
    def guided(self) -> bool:
        from svg.sampling import GuidanceMode

        return self.guidance.mode is not GuidanceMode.NONE and self.guidance.scale != 1.0

    def costs(self) -> list[int]:
        """Row costs for the scheduler: 2 for guided rows (unconditional twin), else 1."""
        return [2 if self.guided else 1] * len(self.rows)


class Worker:
    """Owns the device; see the module docstring.

    Args:
        cfg: the server configuration. metrics: where to record. model_loader: ``cfg -> LoadedModel`` (tests may
        pass a loader for another checkpoint; the default reads ``cfg``). clock: monotonic clock for deadlines.
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
        self._jobs: dict[str, SampleJob] = {}
        self._trajectories: dict[tuple[str, int], object] = {}
        self._decode_queue: deque[tuple[str, int]] = deque()
        self._tasks: deque[tuple[Callable[[LoadedModel], object], Future]] = deque()
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="svg-device-worker", daemon=True)

    # -- called from the HTTP side -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the device thread (loads the model, warms up, then serves)."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; unfinished requests fail with 503."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout)

    def submit(self, request: SampleRequest) -> Future:
        """Queue a sampling request; the future resolves to a :class:`server.jobs.SampleResult` or fails with a
        :class:`server.jobs.JobError`. Raises ``scheduler.QueueFull`` at once when the queue is full, NotReady
        before load."""
        job = SampleJob(request.request_id, request.kind, list(request.rows), request.steps, request.shift,
                        request.guidance, request.solver, strength=request.strength,
                        on_event=request.on_event)
        if not self.ready.is_set():
            raise NotReady("model is not loaded yet")
        with self._wake:
            self._jobs[job.request_id] = job
            try:
                self.scheduler.submit(job.request_id, job.costs(), time.monotonic() + self.cfg.request_timeout_s)
            except Exception:
                del self._jobs[job.request_id]
                raise
            self._wake.notify_all()
        self._update_gauges()
        return _result_future(job)

    def cancel(self, request_id: str, reason: str = "client_disconnect") -> bool:
        """Cancel a queued or running job at the next step boundary; ``reason`` labels the cancellation metric."""
        job = self._jobs.get(request_id)
        if job is not None:
            job.cancel_reason = reason
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
            self.model = self.model_loader(self.cfg)
            self._sit = self.model.sit_engine
            if self.cfg.batch_invariant:
                self._sit = FixedRows(self.model.sit_engine, self.cfg.max_rows)
                decoder = self.model.decoder_engine
                self.model.decoder_engine = FixedRows(decoder, self.cfg.decode_batch)
                self.model.decoder_engine.name = getattr(decoder, "name", "eager")
            self.metrics.flops_per_row = self.model.flops_per_row
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
                self._fail_running(OutOfMemory("device out of memory; retry with fewer images or steps"))
                torch.cuda.empty_cache()
            except Exception:  # a bug in one step must not kill the device thread: fail its requests, go on
                log.exception("worker step failed")
                self._fail_running(WorkerError("internal error in the device worker"))
        self.metrics.ready.set(0)
        self._fail_running(NotReady("server is shutting down"))

    def _warmup(self) -> None:
        """One 1-image, 1-step guided request through the whole path (step_batch + decode)."""
        from svg.sampling import Guidance, GuidanceMode, Solver, Trajectory, initial_noise, step_batch, time_grid

        m = self.model
        tr = Trajectory(initial_noise(0, 0, (m.tokens, m.channels)).to(m.device), 0, time_grid(1, 0.15),
                        Guidance(GuidanceMode.CONSTANT, 4.0), Solver.EULER, num_classes=m.num_classes)
        step_batch(self._sit, [tr])
        m.decode_tokens(tr.z[None])

    def _iteration(self) -> None:
        self._run_tasks()
        plan = self.scheduler.plan()
        for rid, reason in plan.dropped:
            self._drop(rid, reason)
        for rid, wait in plan.started:
            self.metrics.queue_wait_seconds.observe(wait)
            job = self._jobs.get(rid)
            if job is not None:
                job.started_at = time.monotonic()
        for key in plan.admitted:
            self._trajectories[key] = self._make_trajectory(self._jobs[key[0]], key[1])
        for rid, _ in plan.started:
            self._emit(self._jobs.get(rid), "started")
        self._update_gauges()
        if not plan.rows:
            with self._wake:
                if not self._tasks and not self._stop:
                    self._wake.wait(timeout=plan.wait_s if plan.wait_s is not None else 0.1)
            return
        from svg.sampling import step_batch

        trajectories = [self._trajectories[k] for k in plan.rows]
        before = [tr.rows for tr in trajectories]
        t0 = time.perf_counter()
        rows = step_batch(self._sit, trajectories)
        if rows:
            self.metrics.observe_step(rows, time.perf_counter() - t0)
        finished = []
        for key, tr, b in zip(plan.rows, trajectories, before):
            job = self._jobs[key[0]]
            job.nfe += tr.rows - b
            job.progress[key[1]] = (tr.index - tr.start, tr.steps - tr.start)
            if tr.done:
                finished.append(key)
        for rid in {key[0] for key in plan.rows}:
            self._emit(self._jobs.get(rid), "progress")
        self.scheduler.finish(finished)
        self._decode_queue.extend(finished)
        self._decode_ready()

    def _emit(self, job: SampleJob | None, kind: str) -> None:
        """Call the job's ``on_event``: ``started`` once; ``progress`` when its slowest row advanced a DiT step
        (all rows admitted), so a request gets exactly one ``progress`` per step it runs."""
        if job is None or job.on_event is None:
            return
        from server.jobs import ProgressEvent

        first = self._trajectories.get((job.request_id, 0))
        total = first.steps - first.start if first is not None else job.steps
        if kind == "progress":
            if len(job.progress) < len(job.rows):
                return
            done, total = min(d for d, _ in job.progress.values()), max(t for _, t in job.progress.values())
            if done <= job.reported:
                return
            job.reported = done
        else:
            done = 0
        try:
            job.on_event(ProgressEvent(kind, done, total, time.monotonic() - job.submitted_at))
        except Exception:  # a listener's bug must never fail the step loop
            log.exception("progress listener failed, request_id=%s", job.request_id)

    def _make_trajectory(self, job: SampleJob, index: int):
        from svg.editing import edit_trajectory
        from svg.sampling import Trajectory, initial_noise, time_grid

        m, spec = self.model, job.rows[index]
        if spec.edit is not None:
            reference, editable = (x.to(m.device) for x in spec.edit)
            return edit_trajectory(reference, spec.label, strength=job.strength, steps=job.steps, shift=job.shift,
                                   guidance=job.guidance, solver=job.solver, seed=spec.seed, index=spec.index,
                                   editable=editable, num_classes=m.num_classes)
        shape = (m.tokens, m.channels)
        noise = spec.noise if spec.noise is not None else initial_noise(spec.seed, spec.index, shape)
        return Trajectory(noise.to(m.device), spec.label, time_grid(job.steps, job.shift), job.guidance, job.solver,
                          num_classes=m.num_classes)

    def _decode_ready(self) -> None:
        """Decode finished rows in batches of ``decode_batch``; per-row non-finite check; resolve complete jobs."""
        m = self.model
        while self._decode_queue:
            batch = []
            while self._decode_queue and len(batch) < self.cfg.decode_batch:
                key = self._decode_queue.popleft()
                if key[0] in self._jobs and key in self._trajectories:
                    batch.append(key)
            if not batch:
                return
            tokens = torch.stack([self._trajectories.pop(k).z for k in batch])  # (R, T, C)
            t0 = time.perf_counter()
            images = m.decode_tokens(tokens)  # (R, 3, H, W)
            dt = time.perf_counter() - t0
            self.metrics.decode_latency_seconds.observe(dt)
            bad = (~torch.isfinite(tokens.reshape(len(batch), -1)).all(1)) | \
                  (~torch.isfinite(images.reshape(len(batch), -1)).all(1))
            pixels = images_to_uint8(torch.nan_to_num(images))
            for n, key in enumerate(batch):
                job = self._jobs.get(key[0])
                if job is None or job.failed:
                    continue
                job.decode_s += dt / len(batch)
                if bool(bad[n]):
                    self._fail_nonfinite(job)
                    continue
                job.images[key[1]] = pixels[n]
                if len(job.images) == len(job.rows):
                    self._resolve(job)

    def _fail_nonfinite(self, job: SampleJob) -> None:
        self.metrics.nonfinite_total.inc()
        job.failed = True
        self.scheduler.cancel(job.request_id)
        self._finish_job(job, NonFiniteOutput("non-finite output: the model produced NaN/inf for this request"))

    def _resolve(self, job: SampleJob) -> None:
        self._finish_job(job, None)

    def _finish_job(self, job: SampleJob, error: Exception | None) -> None:
        self._jobs.pop(job.request_id, None)
        for i in range(len(job.rows)):
            self._trajectories.pop((job.request_id, i), None)
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(job)

    def _drop(self, rid: str, reason: DropReason) -> None:
        job = self._jobs.get(rid)
        if job is None:
            return
        if job.failed:  # already answered (non-finite); the scheduler drop only frees its rows
            self._finish_job(job, None)
            return
        if reason is DropReason.DEADLINE:
            self.metrics.cancellations_total.labels(reason="deadline").inc()
            err: RequestFailed = DeadlineExceeded(f"request_timeout_s={self.cfg.request_timeout_s} exceeded")
        else:
            self.metrics.cancellations_total.labels(reason=job.cancel_reason).inc()
            err = Cancelled(f"cancelled ({job.cancel_reason})")
        self._finish_job(job, err)

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

    def _fail_running(self, error: Exception) -> None:
        for job in list(self._jobs.values()):
            self.scheduler.cancel(job.request_id)
            self._finish_job(job, error)
        self.scheduler.plan()  # flush the cancelled requests out of the scheduler

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.scheduler.queue_depth())
        self.metrics.inflight_requests.set(self.scheduler.inflight())



def _result_future(job: SampleJob) -> Future:
    """The :class:`server.jobs.SampleResult` future of ``job`` (NFE per image: the job counts rows of all images)."""
    out: Future = Future()

    def done(fut: Future) -> None:
        if fut.exception() is not None:
            out.set_exception(fut.exception())
            return
        now = time.monotonic()
        started = job.started_at or now
        out.set_result(SampleResult(images=[job.images[i] for i in range(len(job.rows))],
                                    nfe=job.nfe // len(job.rows), queue_s=started - job.submitted_at,
                                    sampling_s=max(0.0, now - started - job.decode_s), decode_s=job.decode_s))

    job.future.add_done_callback(done)
    return out
