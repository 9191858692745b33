"""The JSON shape of every non-2xx answer, and how each failure maps to an HTTP status.

Mapping (docs/server.md): 400 invalid image, 401 bad/missing key, 404/405 routing, 406 nothing acceptable,
408 body too slow, 413 body or image too large, 415 unsupported Content-Type, 422 invalid field (field, value,
allowed range), 429 queue full with ``Retry-After``, 499 client went away (logged and counted only), 503 not ready
or out of memory (``Retry-After``), 504 deadline, 500 only for our own bugs and non-finite outputs; every body
carries the ``request_id``.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from server.jobs import Cancelled, DeadlineExceeded, JobError, NonFiniteOutput, NotReady, OutOfMemory, WorkerError
from server.schemas import json_safe


class ApiError(Exception):
    """An HTTP failure raised by the HTTP layer itself: ``status``, a short ``error`` name and a message."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.headers = status, error, headers


# worker failure -> (status, error name, Retry-After seconds or None)
JOB_ERRORS: dict[type[JobError], tuple[int, str, int | None]] = {
    NotReady: (503, "not_ready", 5),
    Cancelled: (499, "cancelled", None),
    DeadlineExceeded: (504, "deadline_exceeded", None),
    NonFiniteOutput: (500, "non-finite output", None),
    OutOfMemory: (503, "out_of_memory", 5),
    WorkerError: (500, "internal_error", None),
}


def job_status(exc: JobError) -> tuple[int, str, int | None]:
    """``(status, error, retry_after_s)`` of a worker failure (an unknown subclass is a 500)."""
    for cls in type(exc).__mro__:
        if cls in JOB_ERRORS:
            return JOB_ERRORS[cls]
    return 500, "internal_error", None


def error_body(error: str, request_id: str, detail: Any = None) -> dict:
    """The JSON shape of every non-2xx answer; ``detail`` is made JSON-safe (NaN, bytes, ...) so it cannot fail."""
    return {"error": error, "request_id": request_id, "detail": json_safe(detail)}


def dump_error(body: dict) -> bytes:
    """Serialise an error body; never raises (falls back to :func:`json_safe` of the whole body)."""
    try:
        return json.dumps(body, allow_nan=False).encode()
    except (TypeError, ValueError):
        return json.dumps(json_safe(body), allow_nan=False).encode()


class ErrorJSONResponse(JSONResponse):
    """JSONResponse for error bodies whose rendering cannot raise on client-supplied values."""

    def render(self, content) -> bytes:
        return dump_error(content)
