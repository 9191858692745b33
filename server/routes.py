"""HTTP endpoints. Handlers validate, decode uploads off the event loop, hand device work to the Worker and await
its future; they never run the model themselves, so ``/metrics`` and ``/health`` stay fast under load (B24)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
import secrets
import sys
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.images import (
    InvalidImage, MaskSizeMismatch, box_mask, decode_image, decode_mask, encode_png, to_model_resolution,
)
from server.schemas import (
    EditJSON, EditParams, EncodeParams, ErrorResponse, FeatureFormat, GenerateRequest, GuidanceModeName, ImageJSON,
    ImagesResponse, InterpolateRequest, LimitError, ModelsResponse, ReconstructJSON, ReconstructParams, check_limits,
    class_allowed, validation_detail,
)
from server.jobs import Cancelled, JobError, NonFiniteOutput, NotReady, RowSpec, SampleRequest, SampleResult

JSON_TYPES = ("application/json", "application/merge-patch+json")


def _load_json(raw: bytes):
    """Parse a JSON body; every way it can fail is a 422 naming ``body`` (never FastAPI's bare 400, never a 500).

    Raises:
        LimitError: invalid JSON (with the position), not UTF-8, an integer literal over Python's 4300-digit limit,
            or nesting too deep for the parser.
    """
    def bad(allowed: str, msg: str) -> LimitError:
        return LimitError([{"field": "body", "value": None, "allowed": allowed, "msg": msg}])

    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise bad("a JSON object", f"invalid JSON at position {exc.pos}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise bad("a JSON object (UTF-8)", f"invalid JSON at position {exc.start}: not UTF-8") from None
    except RecursionError:
        raise bad("a JSON object nested at most a few hundred levels", "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer literal longer than sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        why = f"an integer literal has more than {limit} digits" if "digits" in str(exc) else str(exc)
        raise bad(f"a JSON object with integers of at most {limit} digits", f"invalid JSON: {why}") from None


def _check_json_content_type(request: Request) -> None:
    """415 for a body sent without a JSON ``Content-Type``, naming the type that came."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not ctype:
        raise StarletteHTTPException(415, "Content-Type is missing; send the body as application/json")
    if ctype not in JSON_TYPES and not ctype.endswith("+json"):
        raise StarletteHTTPException(415, f"Content-Type {ctype!r} is not supported here; send application/json")


class JSONBodyRoute(APIRoute):
    """An API route whose JSON body model is read with :func:`_load_json`'s rules before FastAPI validates it.

    FastAPI answers some unparseable bodies (not UTF-8, a 5000-digit integer, deep nesting) with a bare 400, and a
    JSON body sent as ``text/plain`` or without a ``Content-Type`` with a confusing "valid dictionary" 422; these
    routes answer 422 naming ``body`` and 415 naming the content type instead. Routes without a body model are
    unchanged.
    """

    def get_route_handler(self):
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request):
            raw = await request.body()  # cached on the request: FastAPI's own parse reads it again
            if raw.strip():
                _check_json_content_type(request)
            _load_json(raw)
            return await handler(request)

        return checked


router = APIRouter(route_class=JSONBodyRoute)
MASK_BLUR_PX = 8.0  # Gaussian sigma (pixels at model resolution) softening edit masks; ~half a 16 px token

_ERROR_TEXT = {
    400: ("invalid image", "invalid image", "image: invalid image (not a recognised image format)"),
    401: ("missing or wrong bearer token", "unauthorized",
          "missing or wrong bearer token (Authorization: Bearer <key>)"),
    406: ("Accept matches no type this endpoint returns, or image/png with several images", "not_acceptable",
          "Accept: image/jpeg matches nothing this endpoint returns; available: application/json, image/png"),
    413: ("body or image too large", "image_too_large",
          "image: 20000x20000 = 400000000 pixels exceeds max_upload_pixels=40000000"),
    422: ("invalid field (field, value, allowed range)", "validation_error",
          [{"field": "cfg", "value": "NaN", "allowed": "a number 0..50 (1 = no guidance)",
            "msg": "cfg=NaN: Input should be a finite number"}]),
    429: ("queue full; retry after Retry-After seconds", "queue_full", "queue full (64 requests waiting)"),
    503: ("model not loaded yet", "not_ready", "model is still loading; poll GET /ready"),
    504: ("request deadline passed", "deadline_exceeded", "request_timeout_s=300 passed"),
}
_ERRORS = {code: {"model": ErrorResponse, "description": text, "content": {"application/json": {
    "example": {"error": error, "request_id": "3f2a9c0d5e6b4a7f8c1d2e3f4a5b6c7d", "detail": detail}}}}
    for code, (text, error, detail) in _ERROR_TEXT.items()}
_IMAGES_EXAMPLE = {"request_id": "3f2a9c0d5e6b4a7f8c1d2e3f4a5b6c7d",
                   "images": [{"png_base64": "iVBORw0KGgoAAAANSUhEUgAA...", "seed": 0, "index": 0, "class_id": 7,
                               "t": None}],
                   "seed": 0, "steps": 25, "nfe": 50,
                   "timings": {"queue_s": 0.01, "sampling_s": 1.2, "decode_s": 0.05, "total_s": 1.3},
                   "params": {"class_id": 7, "steps": 25, "cfg": 4.0, "seed": 0}}
_IMAGE_OUT = {200: {"content": {"application/json": {"example": _IMAGES_EXAMPLE},
                                "image/png": {"schema": {"type": "string", "format": "binary"}}},
                    "description": "JSON with base64 PNGs, or one PNG with Accept: image/png (headers X-Seed, "
                                   "X-Steps, X-NFE, X-Timings)"}}
# A raw image body (Content-Type: image/*) with the other fields as query parameters.
_RAW_IMAGE_BODY = {"image/*": {"schema": {"type": "string", "format": "binary"}}}


# -- helpers -----------------------------------------------------------------------------------------------------
def _state(request: Request):
    return request.app.state.cfg, request.app.state.worker, request.app.state.metrics


def _rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "unknown")


def _model(worker):
    if not worker.ready.is_set() or worker.model is None:
        raise NotReady("model is still loading; poll GET /ready")
    return worker.model


IMAGE_TYPES = ("application/json", "image/png")  # what the image endpoints can answer
FEATURE_TYPES = ("application/x-npy", "application/octet-stream", "application/json")  # what /encode can answer


def _check_accept(request: Request, offered: tuple[str, ...]) -> None:
    """406 when an ``Accept`` header is given and none of its media ranges (``*/*``, ``type/*``, exact, q > 0)
    matches what the endpoint can answer; the message lists the available types."""
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return
    for part in accept.split(","):
        media, *params = [p.strip().lower() for p in part.split(";")]
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        if media in ("*/*", "*") or media in offered or (
                media.endswith("/*") and any(o.startswith(media[:-1]) for o in offered)):
            return
    raise RequestFailedWith(406, "not_acceptable", f"Accept: {accept} matches nothing this endpoint returns; "
                            f"available: {', '.join(offered)}")


def _wants_png(request: Request) -> bool:
    _check_accept(request, IMAGE_TYPES)
    accept = request.headers.get("accept", "").lower()
    return ("image/png" in accept or "image/*" in accept) and "application/json" not in accept


def _negotiate(request: Request, count: int) -> bool:
    """True for a raw PNG answer. ``Accept: image/png`` with several images is 406 (asked before any work), and
    so is an ``Accept`` that matches neither JSON nor PNG."""
    png = _wants_png(request)
    if png and count > 1:
        raise RequestFailedWith(406, "not_acceptable", f"Accept: image/png returns one image but this request makes "
                                f"{count}; send Accept: application/json for base64 PNGs")
    return png


class RequestFailedWith(Exception):
    """An HTTP-level refusal with its status and short error name (the worker's failures are ``JobError``)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error = status, error


def _check_classes(class_ids: list[int], num_classes: int, field: str = "class_id") -> None:
    bad = [c for c in class_ids if c >= num_classes]
    if bad:
        raise LimitError([validation_detail(field, bad[0], f"this model has {num_classes} classes; allowed "
                                                           f"0..{num_classes - 1}", class_allowed(num_classes))])


def _guidance(req) -> Any:
    from svg.sampling import Guidance, GuidanceMode

    if req.guidance_mode is GuidanceModeName.cfg_star:
        return Guidance(GuidanceMode.ZERO_INIT, req.cfg, zero_init_steps=1, zero_init_ratio=0.0)
    if req.cfg == 1.0:
        return Guidance(GuidanceMode.NONE, 1.0)
    return Guidance(GuidanceMode(req.guidance_mode.value), req.cfg)


def _solver(req):
    from svg.sampling import Solver

    return Solver(req.sampler.value)


async def _await(request: Request, worker, fut, request_id: str | None):
    """Await a worker future; cancel the request's rows when the client disconnects (B24)."""
    afut = asyncio.wrap_future(fut)
    while True:
        done, _ = await asyncio.wait({afut}, timeout=0.05)
        if done:
            return afut.result()
        if request_id is not None and await request.is_disconnected():
            worker.cancel(request_id, "client_disconnect")
            try:
                await asyncio.wait_for(afut, timeout=30)
            except (JobError, asyncio.TimeoutError):
                pass  # expected: the cancelled job ends failed (or late); the client is gone either way
            raise Cancelled("client disconnected")


def _finite_or_raise(array: np.ndarray) -> None:
    if not np.isfinite(array).all():
        raise NonFiniteOutput("non-finite output: the encoder produced NaN/inf")


async def _images_response(request: Request, endpoint: str, rows: list[RowSpec], steps: int, result: SampleResult,
                           *, png: bool, seed: int | None, params: dict) -> Response:
    timings = {"queue_s": round(result.queue_s, 6), "sampling_s": round(result.sampling_s, 6),
               "decode_s": round(result.decode_s, 6),
               "total_s": round(result.queue_s + result.sampling_s + result.decode_s, 6)}
    pngs = await run_in_threadpool(lambda: [encode_png(image) for image in result.images])
    _, _, metrics = _state(request)
    metrics.images_total.labels(endpoint=endpoint).inc(len(pngs))
    if png:
        headers = {"X-Seed": str(seed), "X-Steps": str(steps), "X-NFE": str(result.nfe),
                   "X-Timings": json.dumps(timings)}
        return Response(pngs[0], media_type="image/png", headers=headers)
    images = [{"png_base64": base64.b64encode(p).decode(), "seed": seed, "index": i,
               "class_id": rows[i].label, "t": rows[i].ratio} for i, p in enumerate(pngs)]
    body = ImagesResponse(request_id=_rid(request), images=images, seed=seed, steps=steps, nfe=result.nfe,
                          timings=timings, params=params)
    return JSONResponse(body.model_dump())


def _parse_json(model_cls: type[BaseModel], raw: bytes) -> BaseModel:
    """Validate a JSON body; an empty body validates as ``{}`` so the 422 names the missing required fields.
    NaN/Infinity/1e999 parse to non-finite floats and are refused by the models (``allow_inf_nan=False``)."""
    data = _load_json(raw)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


_BODY_MODELS: dict[str, type[BaseModel]] = {
    "/generate": GenerateRequest, "/interpolate": InterpolateRequest, "/edit": EditJSON, "/encode": ImageJSON,
    "/reconstruct": ReconstructJSON,
}


def body_fields(request: Request) -> list[str] | None:
    """The field names a request to this route may send (JSON form), or None for a route without a body."""
    model = _BODY_MODELS.get(getattr(request.scope.get("route"), "path", ""))
    return list(model.model_fields) if model is not None else None


_INT_RE = re.compile(r"[+-]?\d+")


def _form_value(model_cls: type[BaseModel], key: str, value: str):
    """Convert a multipart text field by its declared type; unconvertible text stays text and fails strict checks."""
    field = model_cls.model_fields.get(key)
    ann = repr(field.annotation) if field is not None else ""
    text = value.strip()
    if key == "box":
        parts = [p for p in re.split(r"[\s,\[\]]+", text) if p]
        return [int(p) if _INT_RE.fullmatch(p) else p for p in parts]
    if "int" in ann and _INT_RE.fullmatch(text):
        return int(text)
    if "float" in ann:
        try:
            return float(text)
        except ValueError:
            return text
    return text


async def _read_upload(request: Request, json_cls: type[BaseModel], form_cls: type[BaseModel]
                       ) -> tuple[BaseModel, dict[str, bytes]]:
    """Parse a JSON (base64 images, ``json_cls``), multipart (files + text fields, ``form_cls``) or raw image body
    (``Content-Type: image/*``, fields as query parameters, ``form_cls``)."""
    ctype = request.headers.get("content-type", "")
    files: dict[str, bytes] = {}
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=4, max_fields=32)
        payload = {}
        seen: set[str] = set()
        for key, value in form.multi_items():
            if key in seen:  # never let a second part silently replace the first
                raise LimitError([validation_detail(key, None, "given more than once in the multipart body",
                                                    "one part per field")])
            seen.add(key)
            if isinstance(value, UploadFile):
                files[key] = await value.read()  # only bytes go further, never the spooled file (B23)
            else:
                payload[key] = _form_value(form_cls, key, value)
        for key in ("image", "mask"):
            if key in payload:  # a text field named like a file: treat as base64
                files[key] = _b64(payload.pop(key), key)
        if "image" not in files:
            raise LimitError([validation_detail("image", None, "field required (multipart file 'image')")])
        try:
            params = form_cls.model_validate(payload)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("form", *e["loc"])} for e in exc.errors()]) from None
        return params, files
    if ctype.startswith(("image/", "application/octet-stream")):  # raw image body, parameters in the query
        files["image"] = await request.body()
        payload = {k: _form_value(form_cls, k, v) for k, v in request.query_params.items()}
        try:
            return form_cls.model_validate(payload), files
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from None
    params = _parse_json(json_cls, await request.body())
    files["image"] = _b64(params.image, "image")
    if getattr(params, "mask", None):
        files["mask"] = _b64(params.mask, "mask")
    return params, files


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{field}: invalid image (not valid base64)") from None


async def _decode_to_model(data: bytes, cfg, size: int, field: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
    rgb = await run_in_threadpool(decode_image, data, max_pixels=cfg.max_upload_pixels, field=field)
    return await run_in_threadpool(to_model_resolution, rgb, size), rgb.shape[:2]


# -- endpoints ---------------------------------------------------------------------------------------------------
@router.get("/health", summary="Liveness: answers while the model loads")
@router.head("/health", include_in_schema=False)
async def health(request: Request):
    _, worker, _ = _state(request)
    if worker.load_error is not None:
        return JSONResponse({"status": "failed", "error": worker.load_error}, status_code=503)
    return {"status": "ready" if worker.ready.is_set() else "loading"}


@router.head("/ready", include_in_schema=False)
@router.get("/ready", summary="Readiness: 200 once the model is loaded and warmed up, else 503",
            responses={503: {"description": "loading or failed"}})
async def ready(request: Request):
    _, worker, _ = _state(request)
    if worker.ready.is_set():
        return {"ready": True}
    return JSONResponse({"ready": False, "error": worker.load_error}, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", summary="Prometheus metrics (text exposition format)")
async def metrics_endpoint(request: Request):
    _, _, metrics = _state(request)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/models", response_model=ModelsResponse, summary="The served model", responses=_ERRORS)
async def models(request: Request):
    cfg, worker, _ = _state(request)
    m = _model(worker)
    return ModelsResponse(
        preset=m.preset, model_dir=None if cfg.sit_checkpoint else str(cfg.model_dir), checkpoints=m.checkpoints,
        dtype=cfg.dtype, sit_engine=getattr(m.sit_engine, "name", cfg.sit_engine),
        decoder_engine=getattr(m.decoder_engine, "name", cfg.decoder_engine), device=str(m.device),
        latent_shape=[m.channels, m.grid, m.grid], image_size=m.image_size, num_classes=m.num_classes,
        random_weights=m.random_weights)


@router.post("/generate", response_model=ImagesResponse, summary="Class-conditional images",
             responses={**_ERRORS, **_IMAGE_OUT})
async def generate(req: GenerateRequest, request: Request):
    cfg, worker, _ = _state(request)
    m = _model(worker)
    check_limits(req, max_images=cfg.max_images, max_steps=cfg.max_steps)
    class_ids = req.class_ids()
    _check_classes(class_ids, m.num_classes)
    png = _negotiate(request, len(class_ids))
    seed = req.seed if req.seed is not None else secrets.randbits(63)
    rid = _rid(request)
    rows = [RowSpec(label=c, seed=seed, index=i) for i, c in enumerate(class_ids)]
    job = SampleRequest(rid, "generate", tuple(rows), req.steps, req.timestep_shift, _guidance(req), _solver(req))
    result = await _await(request, worker, worker.submit(job), rid)
    return await _images_response(request, "/generate", rows, req.steps, result, png=png, seed=seed,
                                  params=req.model_dump(mode="json"))


@router.post("/interpolate", response_model=ImagesResponse, summary="Images between the noises of two seeds",
             responses={**_ERRORS, **_IMAGE_OUT})
async def interpolate(req: InterpolateRequest, request: Request):
    from svg.editing import interpolate_noise
    from svg.sampling import initial_noise

    cfg, worker, _ = _state(request)
    m = _model(worker)
    check_limits(req, max_images=cfg.max_images, max_steps=cfg.max_steps)
    _check_classes([req.class_id], m.num_classes)
    ratios = req.ratios()
    png = _negotiate(request, len(ratios))
    shape = (m.tokens, m.channels)

    z_a, z_b = initial_noise(req.seed_a, 0, shape), initial_noise(req.seed_b, 0, shape)
    rid = _rid(request)
    rows = [RowSpec(label=req.class_id, seed=req.seed_a, index=0, ratio=r,
                    noise=interpolate_noise(z_a, z_b, r, req.mode.value)) for r in ratios]
    job = SampleRequest(rid, "interpolate", tuple(rows), req.steps, req.timestep_shift, _guidance(req), _solver(req))
    result = await _await(request, worker, worker.submit(job), rid)
    return await _images_response(request, "/interpolate", rows, req.steps, result, png=png, seed=req.seed_a,
                                  params=req.model_dump(mode="json"))


def _upload_doc(json_model: type[BaseModel], fields: dict[str, dict]) -> dict:
    """OpenAPI request body of an upload endpoint: JSON (base64), multipart, or a raw image body."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"}, **fields}}},
        **_RAW_IMAGE_BODY}}}


async def _encode_common(request: Request, offered: tuple[str, ...], json_cls: type[BaseModel],
                         form_cls: type[BaseModel]):
    cfg, worker, _ = _state(request)
    m = _model(worker)
    _check_accept(request, offered)
    params, files = await _read_upload(request, json_cls, form_cls)
    rgb, _ = await _decode_to_model(files["image"], cfg, m.image_size)
    return cfg, worker, m, params, rgb


@router.post("/encode", summary="Image -> SVG features (C x h x w) as .npy, safetensors or JSON",
             responses={**_ERRORS, 200: {"description": "features of shape (C, h, w), float32", "content": {
                 "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                 "application/json": {"example": {"request_id": "3f2a9c0d5e6b4a7f8c1d2e3f4a5b6c7d",
                                                  "shape": [36, 8, 8], "dtype": "float32",
                                                  "features": [[[0.12, -0.5, "..."]]]}}}}},
             openapi_extra=_upload_doc(ImageJSON, {"format": {"type": "string",
                                                             "enum": [f.value for f in FeatureFormat]}}))
async def encode(request: Request):
    cfg, worker, m, params, rgb = await _encode_common(request, FEATURE_TYPES, ImageJSON, EncodeParams)
    latent = await _await(request, worker, worker.run_device(lambda mm: mm.encode_images(rgb[None]).cpu()), None)
    feats = latent[0].numpy().astype(np.float32)  # (C, h, w)
    _finite_or_raise(feats)
    fmt = params.format
    if "format" not in params.model_fields_set and _accepts_json_only(request):
        fmt = FeatureFormat.json
    headers = {"X-Feature-Shape": "x".join(map(str, feats.shape))}
    if fmt is FeatureFormat.json:
        return JSONResponse({"request_id": _rid(request), "shape": list(feats.shape), "dtype": "float32",
                             "features": feats.tolist()}, headers=headers)
    if fmt is FeatureFormat.safetensors:
        from safetensors.numpy import save

        body = save({"features": feats}, metadata={"layout": "C,h,w", "dtype": "float32"})
        return Response(body, media_type="application/octet-stream", headers=headers)
    buf = io.BytesIO()
    np.save(buf, feats)
    return Response(buf.getvalue(), media_type="application/x-npy", headers=headers)


def _accepts_json_only(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "application/x-npy" not in accept and "octet-stream" not in accept


@router.post("/reconstruct", summary="Image -> encode -> decode -> image", response_model=ImagesResponse,
             responses={**_ERRORS, **_IMAGE_OUT}, openapi_extra=_upload_doc(ReconstructJSON, {}))
async def reconstruct(request: Request):
    cfg, worker, m, params, rgb = await _encode_common(request, IMAGE_TYPES, ReconstructJSON, ReconstructParams)
    png = _wants_png(request)
    t0 = time.monotonic()

    def run(mm):
        from server.model import images_to_uint8

        images = mm.decode_tokens(mm.to_tokens(mm.encode_images(rgb[None])))
        if not bool(images.isfinite().all()):
            raise NonFiniteOutput("non-finite output: reconstruction produced NaN/inf")
        return images_to_uint8(images)[0]

    image = await _await(request, worker, worker.run_device(run), None)
    result = SampleResult([image], nfe=0, queue_s=0.0, sampling_s=0.0, decode_s=time.monotonic() - t0)
    return await _images_response(request, "/reconstruct", [RowSpec(label=-1, seed=0, index=0)], 0, result,
                                  png=png, seed=None, params={})


@router.post("/edit", summary="Regenerate a masked region (or its outside) toward a class", response_model=ImagesResponse,
             responses={**_ERRORS, **_IMAGE_OUT}, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/EditJSON"}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["image", "class_id"],
                                                    "properties": {"image": {"type": "string", "format": "binary"},
                                                                   "mask": {"type": "string", "format": "binary"},
                                                                   "params": {"$ref": "#/components/schemas/"
                                                                                      "EditParams"}}}},
                 **_RAW_IMAGE_BODY}}})
async def edit(request: Request):
    import torch
    from svg.editing import editable_region, soften_mask

    cfg, worker, _ = _state(request)
    m = _model(worker)
    png = _wants_png(request)
    params, files = await _read_upload(request, EditJSON, EditParams)
    check_limits(params, max_images=cfg.max_images, max_steps=cfg.max_steps)
    _check_classes([params.class_id], m.num_classes)
    if "mask" in files and params.box is not None:
        raise LimitError([validation_detail("box", params.box, "give either a mask image or a box, not both")])
    rgb, hw = await _decode_to_model(files["image"], cfg, m.image_size)
    if "mask" in files:
        try:
            mask = await run_in_threadpool(decode_mask, files["mask"], max_pixels=cfg.max_upload_pixels,
                                           size=m.image_size, image_hw=hw)
        except MaskSizeMismatch as exc:
            raise LimitError([validation_detail("mask", None, str(exc), f"a {hw[1]}x{hw[0]} image (white = region)")
                              ]) from None
    elif params.box is not None:
        try:
            mask = box_mask(params.box, hw, m.image_size)
        except ValueError as exc:
            raise LimitError([validation_detail("box", params.box, str(exc))]) from None
    else:
        raise LimitError([validation_detail("mask", None, "give a mask image or a box")])
    mask_t = torch.from_numpy((mask > 0.5).astype(np.float32))[None, None]  # (1, 1, S, S) binary
    editable = editable_region(soften_mask(mask_t, MASK_BLUR_PX, (m.grid, m.grid)), params.region.value)[0]
    reference = await _await(request, worker, worker.run_device(
        lambda mm: mm.to_tokens(mm.encode_images(rgb[None]))[0].cpu()), None)  # (T, C)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    rid = _rid(request)
    rows = [RowSpec(label=params.class_id, seed=seed, index=0, edit=(reference, editable))]
    job = SampleRequest(rid, "edit", tuple(rows), params.steps, params.timestep_shift, _guidance(params),
                        _solver(params), strength=params.strength)
    dump = params.model_dump(mode="json", exclude={"image", "mask"})
    if params.strength == 0.0:  # nothing to run: the reconstruction of the input (B15)
        def run(mm):
            from server.model import images_to_uint8

            return images_to_uint8(mm.decode_tokens(reference.to(mm.device)[None]))[0]

        t0 = time.monotonic()
        image = await _await(request, worker, worker.run_device(run), None)
        result = SampleResult([image], nfe=0, queue_s=0.0, sampling_s=0.0, decode_s=time.monotonic() - t0)
    else:
        result = await _await(request, worker, worker.submit(job), rid)
    return await _images_response(request, "/edit", rows, params.steps, result, png=png, seed=seed, params=dump)


def install_openapi(app: FastAPI) -> None:
    """Add the JSON body models of the upload endpoints (declared by ``$ref``) to the OpenAPI components."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ImageJSON, ReconstructJSON, EditJSON, EditParams):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(js.pop("$defs", {}))
            comps[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
