"""The contract between the HTTP layer and the device worker: what a sampling request is, what comes back.

The HTTP layer builds a :class:`SampleRequest` from a parsed body and calls ``Worker.submit(request)``, which returns
a ``concurrent.futures.Future`` resolving to a :class:`SampleResult` or failing with a :class:`JobError`. The worker
knows nothing of HTTP: mapping a :class:`JobError` to a status code is the HTTP layer's job.

Work that is not sampling (``/encode``, ``/reconstruct``, an edit at strength 0) does not come through here: the
HTTP layer runs it with ``Worker.run_device(fn)`` and builds its own response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the HTTP side must be importable without touching torch state
    import numpy as np
    import torch

    from svg.sampling import Guidance, Solver

RequestKind = Literal["generate", "edit", "interpolate"]


@dataclass(frozen=True)
class RowSpec:
    """How one image of a request starts.

    Attributes:
        label: class label in ``[0, num_classes)``.
        seed, index: the start noise is ``svg.sampling.initial_noise(seed, index, (T, C))`` unless ``noise`` is set.
        noise: optional ``(T, C)`` float32 start noise (interpolation between two seeds' noises).
        edit: optional ``(reference (T, C) float32 normalised tokens, editable (T, 1) float32 in [0, 1])`` for
            SDEdit-style editing of an encoded image.
        ratio: interpolation ratio, reported back with the image.
    """

    label: int
    seed: int
    index: int
    noise: torch.Tensor | None = None
    edit: tuple[torch.Tensor, torch.Tensor] | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """One event of a request's life, emitted from the device thread (keep handlers cheap and thread-safe).

    Attributes:
        kind: ``"started"`` when the request's first row is admitted, ``"progress"`` after each DiT step that
            advanced it.
        step: DiT steps done by the request's slowest row (0 for ``started``). total: the request's step count.
        elapsed_s: seconds since the request was submitted.
    """

    kind: Literal["started", "progress"]
    step: int
    total: int
    elapsed_s: float


@dataclass(frozen=True)
class SampleRequest:
    """One sampling request (every image shares steps, shift, guidance and solver; labels and noise are per row).

    Attributes:
        request_id: unique among live requests; ``Worker.cancel(request_id)`` refers to it.
        kind: what it is for (metrics labels, logs). rows: one :class:`RowSpec` per image, in output order.
        steps: DiT steps of the full time grid. shift: timestep shift of the grid.
        guidance, solver: :class:`svg.sampling.Guidance` and :class:`svg.sampling.Solver`.
        strength: SDEdit strength in (0, 1] for edit rows (1.0 otherwise).
        on_event: optional callback receiving :class:`ProgressEvent` objects from the device thread.
    """

    request_id: str
    kind: RequestKind
    rows: tuple[RowSpec, ...]
    steps: int
    shift: float
    guidance: Guidance
    solver: Solver
    strength: float = 1.0
    on_event: Callable[[ProgressEvent], None] | None = None


@dataclass(frozen=True)
class SampleResult:
    """What a finished request gives back.

    Attributes:
        images: one ``(H, W, 3)`` uint8 array per row, in row order.
        nfe: network function evaluations per image: every forward row counts, so a guided step counts 2 (its
            unconditional twin) and Heun's corrector counts again. Equal for every image of a request.
        queue_s: seconds from submission to the first admitted row. sampling_s: from then to the last DiT step.
        decode_s: seconds spent decoding this request's latents (its share of shared decode batches).
    """

    images: list[np.ndarray]
    nfe: int
    queue_s: float
    sampling_s: float
    decode_s: float


class JobError(Exception):
    """A request ended without images. Subclasses say why; the HTTP layer maps each to a status code."""


class NotReady(JobError):
    """The model is not loaded yet, or the server is shutting down."""


class Cancelled(JobError):
    """The request was cancelled (client disconnect, or an explicit cancel)."""


class DeadlineExceeded(JobError):
    """The request did not finish within the server's request timeout."""


class NonFiniteOutput(JobError):
    """The model produced NaN/inf for this request (never returned as a garbage image)."""


class OutOfMemory(JobError):
    """The device ran out of memory during a step; the running requests failed fast and memory was released."""


class WorkerError(JobError):
    """An unexpected error in the device worker; the message is safe to show to the client."""
