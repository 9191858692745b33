"""Every Prometheus metric of the inference server, in one place.

Names follow ``svg_<what>_<unit>`` in base units (seconds, bytes, ratios). Labels take only values from the closed
sets below (endpoint paths we serve, HTTP status codes, fixed reason strings), never seeds, ids or user paths, so the
series count is bounded. Histogram buckets reach 600 s so a slow request lands in a finite bucket (case B27).

Each :class:`ServerMetrics` owns its own ``CollectorRegistry``; the server process holds exactly one (workers are
forced to 1, case B28), so counters never jump between scrapes.

Example::

    m = ServerMetrics(flops_per_row=237.2e9, peak_flops=989.4e12)
    m.requests_total.labels(endpoint="/generate", status="200").inc()
    body = m.render()          # bytes in the Prometheus text format
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# Seconds; from 5 ms (a /health round trip) to 600 s (a long queued batch job): every latency the server can take
# with its maximum request timeout of 600 s falls in a finite bucket (B27).
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 450.0, 600.0,
)
# One DiT step or one decode batch: 1 ms to 60 s (a large batch on CPU).
STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Rows per DiT step: powers of two up to 1024 (guided rows count twice).
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Closed label sets.
ENDPOINTS = ("/generate", "/encode", "/reconstruct", "/edit", "/interpolate", "/models", "/health", "/ready",
             "/metrics", "other")
CANCEL_REASONS = ("client_disconnect", "deadline", "shutdown")
REJECT_REASONS = ("queue_full", "not_ready", "too_large", "unauthorized")
SLOW_CLIENT_PHASES = ("headers", "body")  # where a too-slow client was when its connection was closed

# FLOP of one SVG-XL image: 25 Euler steps with guidance = 50 forwards of ~237.2 GFLOP each (docs/serving.md §6.1).
SVG_XL_IMAGE_FLOP = 11.86e12
SVG_XL_FORWARD_FLOP = SVG_XL_IMAGE_FLOP / 50
# H100/H200 dense BF16 peak, FLOP/s (NVIDIA datasheet as quoted in docs/serving.md §6.2).
H200_BF16_PEAK_FLOPS = 989.4e12


def endpoint_label(path: str) -> str:
    """Map a request path to a bounded ``endpoint`` label value (unknown paths collapse to ``other``)."""
    return path if path in ENDPOINTS else "other"


def cuda_identity(cuda_ordinal: int) -> dict[str, str]:
    """``{"uuid": "GPU-…", "pci_bus_id": "00000000:BB:DD.0"}`` of a CUDA device as torch sees it (after
    ``CUDA_VISIBLE_DEVICES``); fields torch does not report are left out."""
    import torch

    props = torch.cuda.get_device_properties(cuda_ordinal)
    identity = {}
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        identity["uuid"] = text if text.startswith(("GPU-", "MIG-")) else "GPU-" + text
    if hasattr(props, "pci_bus_id") and hasattr(props, "pci_device_id"):
        domain = getattr(props, "pci_domain_id", 0)
        identity["pci_bus_id"] = f"{domain:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    return identity


def nvml_handle(nvml, cuda_ordinal: int, identity: dict[str, str] | None = None,
                visible_devices: str | None = None):
    """The NVML handle of the CUDA device ``cuda_ordinal``.

    NVML numbers every GPU of the machine and ignores ``CUDA_VISIBLE_DEVICES``, so the CUDA ordinal is not an NVML
    index: with ``CUDA_VISIBLE_DEVICES=2`` CUDA's device 0 is NVML's device 2. Resolved, in order, by the device's
    UUID, by its PCI bus id, then by the ``CUDA_VISIBLE_DEVICES`` entry (an index, or a full or prefix ``GPU-`` UUID);
    without any of them the ordinal is the NVML index (all GPUs visible).

    Args:
        nvml: the ``pynvml`` module (initialised). identity: from :func:`cuda_identity`.
        visible_devices: the ``CUDA_VISIBLE_DEVICES`` value (None: unset).

    Raises:
        LookupError: ``visible_devices`` has no entry for the ordinal, or names a device NVML does not list.
    """
    identity = identity or {}
    if identity.get("uuid", "").startswith("GPU-"):
        return nvml.nvmlDeviceGetHandleByUUID(identity["uuid"])
    if identity.get("pci_bus_id"):
        return nvml.nvmlDeviceGetHandleByPciBusId(identity["pci_bus_id"])
    if visible_devices is None or not visible_devices.strip():
        return nvml.nvmlDeviceGetHandleByIndex(cuda_ordinal)
    entries = [e.strip() for e in visible_devices.split(",") if e.strip()]
    if cuda_ordinal >= len(entries):
        raise LookupError(f"CUDA_VISIBLE_DEVICES={visible_devices!r} has no entry for CUDA device {cuda_ordinal}")
    entry = entries[cuda_ordinal]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    for index in range(nvml.nvmlDeviceGetCount()):  # a UUID, possibly abbreviated as CUDA allows
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        if uuid.startswith(entry) or uuid.removeprefix("GPU-").startswith(entry):
            return handle
    raise LookupError(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU that NVML lists")


class _GpuCollector:
    """Reports ``svg_gpu_memory_bytes`` and ``svg_gpu_utilization_ratio`` through nvidia-ml-py, only with CUDA.

    The serving device is found by UUID / PCI bus id (:func:`nvml_handle`), not by passing the CUDA ordinal to NVML,
    which ignores ``CUDA_VISIBLE_DEVICES`` and would report another GPU. The import is deferred to the first scrape
    so that a CPU-only install needs neither the library nor a driver; when either is missing, or the device cannot
    be matched, the collector yields nothing (the reason is kept in ``error``).
    """

    def __init__(self, device_index: int) -> None:
        self.device_index = device_index
        self._nvml = None
        self._device = None
        self._tried = False
        self.error: str | None = None

    def _handle(self):
        if not self._tried:
            self._tried = True
            try:
                nvml = importlib.import_module("pynvml")
                nvml.nvmlInit()
                self._device = nvml_handle(nvml, self.device_index, cuda_identity(self.device_index),
                                           os.environ.get("CUDA_VISIBLE_DEVICES"))
                self._nvml = nvml
            # No library, no driver, pynvml's own NVMLError (not importable without the library), or no match:
            # export nothing.
            except Exception as exc:
                self._nvml = None
                self.error = repr(exc)
        return self._device if self._nvml is not None else None

    def collect(self):
        handle = self._handle()
        if handle is None:
            return
        mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        g = GaugeMetricFamily("svg_gpu_memory_bytes", "GPU memory in use on the serving device, bytes")
        g.add_metric([], float(mem.used))
        yield g
        u = GaugeMetricFamily("svg_gpu_utilization_ratio", "GPU busy fraction over the last sample period, 0..1")
        u.add_metric([], util.gpu / 100.0)
        yield u


class _CudaGraphCollector:
    """``svg_engine_cudagraph_buckets{role, state}``: compiled buckets that are (not) CUDA-graphed after warm-up
    (case T19), from ``engines.cudagraphs``. Nothing while no engine captures CUDA graphs."""

    def describe(self):
        return []  # names appear once an engine reports; no collect() (and no engines import) at registration

    def collect(self):
        from engines.cudagraphs import bucket_counts  # imported at scrape time: no torch at import

        counts = bucket_counts()
        if not counts:
            return
        g = GaugeMetricFamily("svg_engine_cudagraph_buckets",
                              "Compiled row buckets per engine role that are CUDA-graphed (state=graphed) or ran "
                              "without graphs after warm-up (state=skipped)", labels=["role", "state"])
        for (role, state), n in sorted(counts.items()):
            g.add_metric([role, state], float(n))
        yield g


class ServerMetrics:
    """All server metrics, registered in one private registry.

    Args:
        flops_per_row: FLOP of one SiT forward for one row of the served preset (for ``svg_mfu_ratio``); default is
            SVG-XL at 256 px (237.2e9).
        peak_flops: the device's dense peak in FLOP/s used as the MFU denominator (default H200 BF16, 989.4e12).
        gpu_device_index: CUDA device index for the nvidia-ml-py gauges, or ``None`` to not export them (no CUDA).
        mfu_window_s: the sliding window, in seconds, over which ``svg_mfu_ratio`` averages achieved FLOP/s.
    """

    def __init__(
        self,
        *,
        flops_per_row: float = SVG_XL_FORWARD_FLOP,
        peak_flops: float = H200_BF16_PEAK_FLOPS,
        gpu_device_index: int | None = None,
        mfu_window_s: float = 30.0,
    ) -> None:
        if flops_per_row <= 0 or peak_flops <= 0:
            raise ValueError(f"flops_per_row={flops_per_row} and peak_flops={peak_flops} must both be > 0")
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.flops_per_row = flops_per_row
        self.peak_flops = peak_flops
        self.requests_total = Counter(
            "svg_requests_total", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"],
            registry=r)
        self.request_latency_seconds = Histogram(
            "svg_request_latency_seconds", "End-to-end request latency, seconds", ["endpoint"],
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("svg_queue_depth", "Requests admitted but not yet started (waiting)", registry=r)
        self.queue_wait_seconds = Histogram(
            "svg_queue_wait_seconds", "Time from admission to a request's first DiT step, seconds",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.inflight_requests = Gauge(
            "svg_inflight_requests", "Sampling requests (generate, edit, interpolate) queued or running", registry=r)
        self.step_rows = Histogram(
            "svg_step_rows", "Model rows per DiT step (guided rows count twice)", buckets=ROW_BUCKETS, registry=r)
        self.step_latency_seconds = Histogram(
            "svg_step_latency_seconds", "Wall time of one batched DiT step, seconds", buckets=STEP_BUCKETS_S,
            registry=r)
        self.decode_latency_seconds = Histogram(
            "svg_decode_latency_seconds", "Wall time of one batched decode (latent -> pixels), seconds",
            buckets=STEP_BUCKETS_S, registry=r)
        self.images_total = Counter("svg_images_total", "Images returned, by endpoint", ["endpoint"], registry=r)
        self.nfe_total = Counter("svg_nfe_total", "Model rows evaluated (function evaluations)", registry=r)
        self.cancellations_total = Counter(
            "svg_cancellations_total", "Requests cancelled before completion, by reason", ["reason"], registry=r)
        self.rejections_total = Counter(
            "svg_rejections_total", "Requests refused before any work, by reason", ["reason"], registry=r)
        self.nonfinite_total = Counter(
            "svg_nonfinite_total", "Images withheld because the output was NaN/inf", registry=r)
        self.slow_client_closes_total = Counter(
            "svg_slow_client_closes_total", "Connections closed because the header or body arrived after its "
            "deadline (header_timeout_s, body_timeout_s), by phase", ["phase"], registry=r)
        self.ready = Gauge("svg_ready", "1 when the model is loaded and warmed up, else 0", registry=r)
        self.mfu_ratio = Gauge(
            "svg_mfu_ratio", "Estimated model FLOP utilisation of the SiT over the last window, 0..1", registry=r)
        # Pre-create the closed label values so that dashboards see zeros rather than missing series.
        for reason in CANCEL_REASONS:
            self.cancellations_total.labels(reason=reason)
        for reason in REJECT_REASONS:
            self.rejections_total.labels(reason=reason)
        for phase in SLOW_CLIENT_PHASES:
            self.slow_client_closes_total.labels(phase=phase)
        if gpu_device_index is not None:
            r.register(_GpuCollector(gpu_device_index))
        r.register(_CudaGraphCollector())
        self._mfu_window_s = mfu_window_s
        self._rows_window: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def observe_step(self, rows: int, seconds: float, now: float | None = None) -> None:
        """Record one DiT step of ``rows`` model rows that took ``seconds``; updates rows, NFE, latency and MFU."""
        now = time.monotonic() if now is None else now
        self.step_rows.observe(rows)
        self.step_latency_seconds.observe(seconds)
        self.nfe_total.inc(rows)
        with self._lock:
            self._rows_window.append((now, rows))
            while self._rows_window and self._rows_window[0][0] < now - self._mfu_window_s:
                self._rows_window.popleft()
            total_rows = sum(n for _, n in self._rows_window)
        achieved = total_rows * self.flops_per_row / self._mfu_window_s
        self.mfu_ratio.set(min(achieved / self.peak_flops, 1.0))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry)


def preset_flops_per_row(hidden: int, depth: int, tokens: int, in_channels: int) -> float:
    """Approximate FLOP of one SiT forward for one row: 2 x (12·d² + 2·N·d) MAC per token per block.

    Source: docs/serving.md §6.1 per-layer count (attention projections 4d², MLP 8d², attention 2Nd), plus the
    patch-embedding and final linear layers (2·C·d per token each). Scaled so SVG-XL gives ~237 GFLOP.

    Args:
        hidden: model width d; depth: number of blocks; tokens: N (256 at 256 px); in_channels: latent channels C.
    """
    per_token_block = 12 * hidden * hidden + 2 * tokens * hidden
    mac = depth * tokens * per_token_block + 2 * tokens * in_channels * hidden * 2
    return 2.0 * mac
