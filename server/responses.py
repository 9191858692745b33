"""Awaiting the worker and building answers: image responses (PNG or JSON), the Prometheus text response."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.errors import ApiError
from server.images import encode_png
from server.jobs import Cancelled, JobError, SampleRequest, SampleResult
from server.negotiation import JSON, PNG, acceptable, negotiate
from server.schemas import ImagesResponse

DISCONNECT_POLL_S = 0.05  # how often a waiting request checks whether its client is still there


class PrometheusResponse(Response):
    """The Prometheus text exposition format (documented as such in the OpenAPI document, not as JSON)."""

    media_type = CONTENT_TYPE_LATEST


def image_media(request: Request, count: int) -> str:
    """``application/json`` or ``image/png`` for an answer of ``count`` images, from ``Accept`` (RFC 9110 §12.5.1).

    A raw PNG holds one image, so for several images only JSON is offered.

    Raises:
        ApiError: 406 when nothing offered is acceptable (asked before any work is done).
    """
    accept = request.headers.get("accept")
    if count > 1 and not acceptable(accept, JSON) and acceptable(accept, PNG):
        raise ApiError(406, "not_acceptable", f"Accept: {accept} asks for image/png, which holds one image, but "
                                              f"this request makes {count}; send Accept: application/json for "
                                              "base64 PNGs")
    return negotiate(accept, [JSON, PNG] if count == 1 else [JSON])


async def await_job(request: Request, fut: Future, request_id: str | None):
    """Await a worker future; when the client disconnects, cancel the request's rows (B24) and raise Cancelled."""
    worker = request.app.state.worker
    afut = asyncio.wrap_future(fut)
    while True:
        done, _ = await asyncio.wait({afut}, timeout=DISCONNECT_POLL_S)
        if done:
            return afut.result()
        if request_id is not None and await request.is_disconnected():
            worker.cancel(request_id, "client_disconnect")
            try:
                await asyncio.wait_for(afut, timeout=30)
            except (JobError, asyncio.TimeoutError):
                pass  # expected: the cancelled job ends failed (or late); the client is gone either way
            raise Cancelled("client disconnected")


async def sample(request: Request, job: SampleRequest) -> SampleResult:
    """Submit ``job`` to the worker and await its :class:`SampleResult` (JobError on failure). A streaming request
    (``server.sse``) gets its progress events."""
    from server import sse

    fut = request.app.state.worker.submit(sse.attach(request, job))
    sse.queued(request, job)
    return await await_job(request, fut, job.request_id)


async def images_response(request: Request, endpoint: str, result: SampleResult | list[np.ndarray],
                          media: str, *, class_ids: Sequence[int | None], seed: int | None, steps: int | None,
                          params: dict, ratios: Sequence[float | None] | None = None) -> Response:
    """The answer of an image endpoint: one PNG (headers ``X-Seed``, ``X-Steps``, ``X-NFE``, ``X-Timings``) or
    JSON (:class:`server.schemas.ImagesResponse`). ``result`` is a worker result, or images made without sampling
    (NFE 0)."""
    started = request.scope.get("state", {}).get("started_at", time.monotonic())
    if isinstance(result, SampleResult):
        images, nfe = result.images, result.nfe
        timings = {"queue_s": result.queue_s, "sampling_s": result.sampling_s, "decode_s": result.decode_s}
    else:
        images, nfe, timings = result, 0, {"queue_s": 0.0, "sampling_s": 0.0, "decode_s": 0.0}
    timings = {k: round(v, 6) for k, v in {**timings, "total_s": time.monotonic() - started}.items()}
    pngs = await run_in_threadpool(lambda: [encode_png(im) for im in images])
    request.app.state.metrics.images_total.labels(endpoint=endpoint).inc(len(pngs))
    if media == PNG:
        headers = {"X-Seed": str(seed), "X-Steps": str(steps), "X-NFE": str(nfe), "X-Timings": json.dumps(timings)}
        return Response(pngs[0], media_type=PNG, headers=headers)
    ratios = ratios if ratios is not None else [None] * len(pngs)
    out = [{"png_base64": base64.b64encode(p).decode(), "seed": seed, "index": i, "class_id": class_ids[i],
            "t": ratios[i]} for i, p in enumerate(pngs)]
    rid = request.scope.get("state", {}).get("request_id", "unknown")
    body = ImagesResponse(request_id=rid, images=out, seed=seed, steps=steps, nfe=nfe, timings=timings,
                          params=params)
    return JSONResponse(body.model_dump())
