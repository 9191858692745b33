"""``POST /v1/images/generations``: the OpenAI Images API shape, so that OpenAI clients work unchanged.

Mapping (OpenAI field -> this server):

* ``prompt``: a class name of the model (``GET /models`` ``labels``; ``server.labels``), case-insensitive. An
  unknown name is a 422 suggesting the closest names.
* ``n``: images, 1..max_images (default 1). Image ``i`` starts from ``initial_noise(seed, i)`` as in ``/generate``,
  so the same ``seed`` gives the same bytes as ``/generate`` with the class id and default settings.
* ``size``: ``"{S}x{S}"`` with S the model's image size (the only size it makes); omitted = that size.
* ``response_format``: ``b64_json`` (the default here; ``url`` is refused: the server stores no images).
* ``seed`` (an extension, as in other OpenAI-compatible servers): 0..2**63-1; random when omitted.
* ``model`` and ``user`` are accepted and ignored (one model per server).

Answer: ``{"created": unix seconds, "data": [{"b64_json": PNG base64, "revised_prompt": the class name}]}``.
Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with this server's status codes.
"""

from __future__ import annotations

import base64
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from server.config import DEFAULT_STEPS
from server.images import encode_png
from server.jobs import RowSpec, SampleRequest
from server.labels import UnknownClassName, class_id
from server.parsing import load_json
from server.responses import sample
from server.routes import _guidance, _model, _rid, _seed, _solver, limits_of
from server.schemas import GenerateRequest, InvalidFields, Seed, SInt, invalid, validate

router = APIRouter()


class ImagesGenerationsRequest(BaseModel):
    """OpenAI ``images.generate`` body (see the module docstring for the mapping)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "seven", "n": 2, "size": "32x32", "response_format": "b64_json", "seed": 1}]})

    prompt: str = Field(min_length=1, max_length=200, description="a class name (GET /models labels)")
    n: SInt = Field(1, ge=1, description="images to make, 1..max_images")
    size: str | None = Field(None, description="'{S}x{S}', S = the model's image size (GET /models)")
    response_format: Literal["b64_json"] = Field("b64_json", description="b64_json only (no image URLs)")
    seed: Seed | None = Field(None, description="0..2**63-1; random when omitted")
    model: str | None = Field(None, description="ignored: this server serves one model")
    user: str | None = Field(None, description="ignored")


def _openai_error(request: Request, exc: InvalidFields) -> JSONResponse:
    first = exc.detail[0]
    return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error", "param": first["field"],
                                   "code": "validation_error", "allowed": first["allowed"],
                                   "request_id": _rid(request)}}, status_code=422)


@router.post("/v1/images/generations", summary="OpenAI-compatible image generation (prompt = class name)",
             tags=["openai"], openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": ImagesGenerationsRequest.model_json_schema()}}}})
async def images_generations(request: Request):
    m, limits = _model(request), limits_of(request)
    try:
        body = validate(ImagesGenerationsRequest, load_json(await request.body() or b"{}"), limits)
        expected = f"{m.image_size}x{m.image_size}"
        if body.size is not None and body.size != expected:
            raise invalid("size", body.size, "this model makes one size", f"{expected!r} (or omitted)")
        if limits.labels is None:
            raise invalid("prompt", body.prompt, "this model has no class names", "use POST /generate")
        try:
            label = class_id(body.prompt, limits.labels)
        except UnknownClassName as exc:
            raise invalid("prompt", body.prompt, str(exc), "a class name from GET /models") from None
        req = validate(GenerateRequest, {"class_id": label, "num_images": body.n, "seed": body.seed,
                                         "steps": DEFAULT_STEPS}, limits)
    except InvalidFields as exc:
        return _openai_error(request, exc)
    seed = _seed(req.seed, limits)
    rows = tuple(RowSpec(label=label, seed=seed, index=i) for i in range(body.n))
    job = SampleRequest(_rid(request), "generate", rows, req.steps, req.timestep_shift, _guidance(req), _solver(req))
    result = await sample(request, job)
    pngs = await run_in_threadpool(lambda: [encode_png(im) for im in result.images])
    request.app.state.metrics.images_total.labels(endpoint="/generate").inc(len(pngs))
    return {"created": int(time.time()), "seed": seed,
            "data": [{"b64_json": base64.b64encode(p).decode(), "revised_prompt": limits.labels[label]}
                     for p in pngs]}
