"""Did CUDA graphs really happen? Per-bucket detection of inductor's silent CUDA-graph skips (case T19).

``torch.compile(mode="reduce-overhead")`` may decide not to capture a graph ("skipping cudagraphs due to ...": a CPU
tensor in the graph, a mutated input, dynamic shapes, ...) and then runs the compiled kernels without graphs: the
answers stay right and only the speed-up is lost, so nothing else notices. Inductor counts every such decision in
``torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]``. A compiled engine compiles each row bucket on its
first warm-up call, so the counter's growth while one bucket warms up says whether that bucket is graphed.

After warm-up, :meth:`CudaGraphWatch.finish`

* logs one line per bucket (``graphed`` or ``NOT graphed``),
* records the result for the process (:func:`bucket_counts`), which ``/metrics`` exports as
  ``svg_engine_cudagraph_buckets{role, state}`` (``server.metrics``),
* and in strict mode (``SVG_CUDAGRAPHS_STRICT=1``) raises :class:`~engines.base.EngineError`, so start-up fails
  instead of serving without graphs.

The hook in a compiled engine's warm-up::

    watch = CudaGraphWatch("sit", enabled=engine.cuda_graphs)
    for size in buckets:
        with watch.bucket(size):
            ...  # the bucket's warm-up calls (compile, record, replay)
    engine.cudagraph_buckets = watch.finish()

GPU check: ``python -m engines.cudagraphs`` compiles the tiny SiT with buckets 1, 2, 4, 8 on CUDA and prints one
CSV row per bucket (exit 1 when a bucket is not graphed).

Imports no torch at module level (``server.metrics`` reads :func:`bucket_counts`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("svg.engines.cudagraphs")

STRICT_ENV = "SVG_CUDAGRAPHS_STRICT"
STATES = ("graphed", "skipped")  # the closed label set of svg_engine_cudagraph_buckets{state}

_lock = threading.Lock()
_reports: dict[str, dict[int, bool]] = {}  # role -> {bucket rows: graphed}, the latest warm-up of each role


def inductor_skip_count() -> int:
    """Inductor's process-wide count of CUDA-graph skips (``counters["inductor"]["cudagraph_skips"]``)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def strict_from_env() -> bool:
    """``SVG_CUDAGRAPHS_STRICT`` as a bool (``1/true/yes/on``); default off."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class CudaGraphWatch:
    """Watches one engine's warm-up, bucket by bucket.

    Args:
        role: ``"sit"`` or ``"decoder"`` (the metric's ``role`` label).
        enabled: whether the engine captures CUDA graphs at all; when False nothing is recorded or checked.
        strict: fail on any skipped bucket; default :func:`strict_from_env`.
        counter: ``() -> int``, the skip counter (default :func:`inductor_skip_count`; tests pass a fake).
    """

    def __init__(self, role: str, *, enabled: bool, strict: bool | None = None,
                 counter: Callable[[], int] = inductor_skip_count) -> None:
        self.role, self.enabled = role, enabled
        self.strict = strict_from_env() if strict is None else strict
        self.counter = counter
        self.graphed: dict[int, bool] = {}

    @contextmanager
    def bucket(self, rows: int) -> Iterator[None]:
        """Wrap the warm-up calls of the bucket of ``rows`` rows; a skip counted meanwhile marks it not graphed."""
        if not self.enabled:
            yield
            return
        before = self.counter()
        yield
        self.graphed[rows] = self.counter() == before

    def finish(self) -> dict[int, bool]:
        """Log each bucket, record the result for ``/metrics``, and enforce strict mode.

        Returns:
            ``{bucket rows: graphed}`` (empty when CUDA graphs are off).

        Raises:
            EngineError: strict mode and at least one bucket is not graphed (the message names them).
        """
        if not self.enabled:
            return {}
        for rows, graphed in sorted(self.graphed.items()):
            if graphed:
                log.info("%s engine: bucket %d rows is CUDA-graphed", self.role, rows)
            else:
                log.warning("%s engine: bucket %d rows is NOT CUDA-graphed (inductor skipped capture; it runs "
                            "without graphs, slower; see TORCH_LOGS=perf_hints for the reason)", self.role, rows)
        with _lock:
            _reports[self.role] = dict(self.graphed)
        skipped = sorted(rows for rows, graphed in self.graphed.items() if not graphed)
        if skipped and self.strict:
            from engines.base import EngineError

            raise EngineError(f"{self.role} engine: CUDA graphs were skipped for buckets {skipped} "
                              f"({STRICT_ENV}=1 makes this fatal; run with TORCH_LOGS=perf_hints for the reason, "
                              f"or unset {STRICT_ENV} to serve without graphs)")
        return dict(self.graphed)


def bucket_counts() -> dict[tuple[str, str], int]:
    """``{(role, state): buckets}`` over the latest warm-up of each role, ``state`` in :data:`STATES`."""
    with _lock:
        reports = {role: dict(buckets) for role, buckets in _reports.items()}
    return {(role, state): sum(1 for graphed in buckets.values() if graphed == (state == "graphed"))
            for role, buckets in reports.items() for state in STATES}


def reset() -> None:
    """Forget every recorded warm-up (tests)."""
    with _lock:
        _reports.clear()


def main(argv: list[str] | None = None) -> int:
    """GPU check: compile the tiny SiT with buckets 1, 2, 4, 8 on CUDA; one CSV row per bucket; exit 1 on a skip."""
    import torch

    import engines
    from svg.config import SIT_PRESETS
    from svg.sit import SiT

    if not torch.cuda.is_available():
        print("engines.cudagraphs: no CUDA device; nothing to check", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO)
    engine = engines.create("compile", SiT(SIT_PRESETS["tiny"]), device="cuda", dtype="bfloat16",
                            buckets=(1, 2, 4, 8))
    graphed = getattr(engine, "cudagraph_buckets", None)
    if graphed is None:
        print("engines.cudagraphs: this CompiledEngine has no CUDA-graph hook (engines/compiled.py)", file=sys.stderr)
        return 1
    print("check,role,bucket,graphed")
    for rows, ok in sorted(graphed.items()):
        print(f"cudagraphs,sit,{rows},{int(ok)}")
    return 0 if graphed and all(graphed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
