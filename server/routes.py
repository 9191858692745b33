"""HTTP endpoints, kept thin: parse (``server.parsing``), negotiate (``server.negotiation``), build a
``server.jobs.SampleRequest`` or a device task, await it, answer (``server.responses``).

Handlers never run the model themselves: sampling goes through ``Worker.submit`` and the rest (``/encode``,
``/reconstruct``, the encode of an edit) through ``Worker.run_device``, so ``/metrics`` and ``/health`` stay fast
under load (B24). Uploads are decoded off the event loop.
"""

from __future__ import annotations

import io
import secrets

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from server.images import MaskSizeMismatch, box_mask, decode_image, decode_mask, to_model_resolution
from server.jobs import NonFiniteOutput, NotReady, RowSpec, SampleRequest
from server.limits import Limits
from server.negotiation import JSON, NPY, OCTET, negotiate
from server.openapi import (ERRORS, FEATURES_OUT, IMAGES_OUT, METRICS_OUT, edit_body, json_body_doc, upload_body)
from server.parsing import json_body, upload
from server.responses import PrometheusResponse, await_job, images_response, image_media, sample
from server.sse import streamable, with_event_stream
from server.schemas import (EditJSON, EditParams, EncodeParams, FeatureFormat, GenerateRequest, GuidanceModeName,
                            ImageJSON, InterpolateRequest, ModelsResponse, ReconstructJSON, ReconstructParams,
                            invalid)

router = APIRouter()
FEATURE_TYPES = {NPY: FeatureFormat.npy, OCTET: FeatureFormat.safetensors, JSON: FeatureFormat.json}


# -- helpers -----------------------------------------------------------------------------------------------------
def _model(request: Request):
    worker = request.app.state.worker
    if not worker.ready.is_set() or worker.model is None:
        raise NotReady("model is still loading; poll GET /ready")
    return worker.model


def limits_of(request: Request) -> Limits:
    """The :class:`Limits` of this server now (class range once the model is loaded)."""
    model = request.app.state.worker.model
    return Limits.build(request.app.state.cfg, model.num_classes if model is not None else None)


def _rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "unknown")


def _guidance(req):
    from svg.sampling import Guidance, GuidanceMode

    if req.guidance_mode is GuidanceModeName.cfg_star:
        return Guidance(GuidanceMode.ZERO_INIT, req.cfg, zero_init_steps=1, zero_init_ratio=0.0)
    if req.cfg == 1.0:
        return Guidance(GuidanceMode.NONE, 1.0)
    return Guidance(GuidanceMode(req.guidance_mode.value), req.cfg)


def _solver(req):
    from svg.sampling import Solver

    return Solver(req.sampler.value)


def _seed(seed: int | None, limits: Limits) -> int:
    return seed if seed is not None else secrets.randbelow(limits.random_seed_max + 1)


async def _decode_to_model(request: Request, data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    cfg = request.app.state.cfg
    rgb = await run_in_threadpool(decode_image, data, max_pixels=cfg.max_upload_pixels)
    return await run_in_threadpool(to_model_resolution, rgb, size), rgb.shape[:2]


# -- probes --------------------------------------------------------------------------------------------------------
@router.get("/health", summary="Liveness: answers while the model loads")
async def health(request: Request):
    worker = request.app.state.worker
    if worker.load_error is not None:
        return JSONResponse({"status": "failed", "error": worker.load_error}, status_code=503)
    return {"status": "ready" if worker.ready.is_set() else "loading"}


@router.get("/ready", summary="Readiness: 200 once the model is loaded and warmed up, else 503",
            responses={503: {"description": "loading or failed"}})
async def ready(request: Request):
    worker = request.app.state.worker
    if worker.ready.is_set():
        return {"ready": True}
    return JSONResponse({"ready": False, "error": worker.load_error}, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=PrometheusResponse,
            responses=METRICS_OUT)
async def metrics_endpoint(request: Request):
    return PrometheusResponse(request.app.state.metrics.render())


@router.get("/models", response_model=ModelsResponse, summary="The served model and this server's limits",
            responses=ERRORS)
async def models(request: Request):
    cfg, m = request.app.state.cfg, _model(request)
    return ModelsResponse(
        preset=m.preset, model_dir=None if cfg.sit_checkpoint else str(cfg.model_dir), checkpoints=m.checkpoints,
        dtype=cfg.dtype, sit_engine=getattr(m.sit_engine, "name", cfg.sit_engine),
        decoder_engine=getattr(m.decoder_engine, "name", cfg.decoder_engine), device=str(m.device),
        latent_shape=[m.channels, m.grid, m.grid], image_size=m.image_size, num_classes=m.num_classes,
        random_weights=m.random_weights, max_steps=cfg.max_steps, max_images=cfg.max_images,
        labels=list(limits_of(request).labels or []) or None)


# -- sampling ------------------------------------------------------------------------------------------------------
@router.post("/generate", summary="Class-conditional images", responses={**ERRORS, **with_event_stream(IMAGES_OUT)},
             openapi_extra=json_body_doc(GenerateRequest))
@streamable
async def generate(request: Request):
    m, limits = _model(request), limits_of(request)
    req = await json_body(request, GenerateRequest, limits)
    labels = req.class_ids()
    media = image_media(request, len(labels))
    seed = _seed(req.seed, limits)
    rows = tuple(RowSpec(label=c, seed=seed, index=i) for i, c in enumerate(labels))
    job = SampleRequest(_rid(request), "generate", rows, req.steps, req.timestep_shift, _guidance(req), _solver(req))
    result = await sample(request, job)
    return await images_response(request, "/generate", result, media, class_ids=labels, seed=seed,
                                 steps=req.steps, params=req.model_dump(mode="json"))


@router.post("/interpolate", summary="Images between the initial noises of two seeds",
             responses={**ERRORS, **with_event_stream(IMAGES_OUT)}, openapi_extra=json_body_doc(InterpolateRequest))
@streamable
async def interpolate(request: Request):
    from svg.editing import interpolate_noise
    from svg.sampling import initial_noise

    m, limits = _model(request), limits_of(request)
    req = await json_body(request, InterpolateRequest, limits)
    ratios = req.ratios()
    media = image_media(request, len(ratios))
    shape = (m.tokens, m.channels)

    def noises():
        a, b = initial_noise(req.seed_a, 0, shape), initial_noise(req.seed_b, 0, shape)
        return [interpolate_noise(a, b, r, req.mode.value) for r in ratios]

    rows = tuple(RowSpec(label=req.class_id, seed=req.seed_a, index=0, noise=z, ratio=r)
                 for z, r in zip(await run_in_threadpool(noises), ratios))
    job = SampleRequest(_rid(request), "interpolate", rows, req.steps, req.timestep_shift, _guidance(req),
                        _solver(req))
    result = await sample(request, job)
    return await images_response(request, "/interpolate", result, media, class_ids=[req.class_id] * len(rows),
                                 seed=req.seed_a, steps=req.steps, params=req.model_dump(mode="json"),
                                 ratios=ratios)


# -- uploads -------------------------------------------------------------------------------------------------------
@router.post("/encode", summary="Image -> SVG features (C x h x w) as .npy, safetensors or JSON",
             responses={**ERRORS, **FEATURES_OUT}, openapi_extra=upload_body(ImageJSON, EncodeParams))
async def encode(request: Request):
    m, limits = _model(request), limits_of(request)
    accept = request.headers.get("accept")
    negotiate(accept, list(FEATURE_TYPES))  # 406 before any work
    params, files = await upload(request, ImageJSON, EncodeParams, limits)
    if "format" in params.model_fields_set:
        fmt = params.format
        wanted = next(t for t, f in FEATURE_TYPES.items() if f is fmt)
        negotiate(accept, [wanted])  # an explicit format the client does not accept is a 406 too
    else:
        fmt = FEATURE_TYPES[negotiate(accept, list(FEATURE_TYPES))]
    rgb, _ = await _decode_to_model(request, files["image"], m.image_size)

    def run(mm):
        latent = mm.encode_images(rgb[None])[0].float().cpu().numpy()  # (C, h, w)
        if not np.isfinite(latent).all():
            raise NonFiniteOutput("non-finite output: the encoder produced NaN/inf")
        return latent

    feats = await await_job(request, request.app.state.worker.run_device(run), None)
    headers = {"X-Feature-Shape": "x".join(map(str, feats.shape))}
    if fmt is FeatureFormat.json:
        return JSONResponse({"request_id": _rid(request), "shape": list(feats.shape), "dtype": "float32",
                             "features": feats.tolist()}, headers=headers)
    if fmt is FeatureFormat.safetensors:
        from safetensors.numpy import save

        body = save({"features": feats}, metadata={"layout": "C,h,w", "dtype": "float32"})
        return Response(body, media_type=OCTET, headers=headers)
    buf = io.BytesIO()
    np.save(buf, feats)
    return Response(buf.getvalue(), media_type=NPY, headers=headers)


@router.post("/reconstruct", summary="Image -> encode -> decode -> image", responses={**ERRORS, **IMAGES_OUT},
             openapi_extra=upload_body(ReconstructJSON, ReconstructParams))
async def reconstruct(request: Request):
    m, limits = _model(request), limits_of(request)
    media = image_media(request, 1)
    _, files = await upload(request, ReconstructJSON, ReconstructParams, limits)
    rgb, _ = await _decode_to_model(request, files["image"], m.image_size)

    def run(mm):
        from server.model import images_to_uint8

        images = mm.decode_tokens(mm.to_tokens(mm.encode_images(rgb[None])))
        if not bool(images.isfinite().all()):
            raise NonFiniteOutput("non-finite output: reconstruction produced NaN/inf")
        return images_to_uint8(images)[0]

    image = await await_job(request, request.app.state.worker.run_device(run), None)
    return await images_response(request, "/reconstruct", [image], media, class_ids=[None], seed=None,
                                 steps=None, params={})


async def _edit_mask(request: Request, params: EditParams, files: dict[str, bytes], hw: tuple[int, int],
                     size: int, limits: Limits) -> np.ndarray:
    """The selection at model resolution, ``(size, size)`` float32 {0, 1}, from the mask image or the box."""
    cfg = request.app.state.cfg
    if "mask" in files and params.box is not None:
        raise invalid("box", params.box, "give either a mask image or a box, not both", limits.allowed("box"))
    if "mask" in files:
        try:
            return await run_in_threadpool(decode_mask, files["mask"], max_pixels=cfg.max_upload_pixels,
                                           size=size, image_hw=hw)
        except MaskSizeMismatch as exc:
            raise invalid("mask", None, str(exc), f"a mask of the image's aspect ratio ({hw[1]}x{hw[0]} or "
                                                  f"scaled); non-zero = selected") from None
    if params.box is not None:
        try:
            return box_mask(params.box, hw, size)
        except ValueError as exc:
            raise invalid("box", params.box, str(exc), limits.allowed("box")) from None
    raise invalid("mask", None, "give a mask image or a box", limits.allowed("mask"))


@router.post("/edit", summary="Regenerate a masked region (or its outside) toward a class",
             responses={**ERRORS, **with_event_stream(IMAGES_OUT)}, openapi_extra=edit_body())
@streamable
async def edit(request: Request):
    import torch
    from svg.editing import cell_mask, editable_region

    m, limits = _model(request), limits_of(request)
    media = image_media(request, 1)
    params, files = await upload(request, EditJSON, EditParams, limits, file_fields=("image", "mask"))
    rgb, hw = await _decode_to_model(request, files["image"], m.image_size)
    mask = await _edit_mask(request, params, files, hw, m.image_size, limits)
    selected = editable_region(torch.from_numpy(mask)[None, None], params.region.value)  # (1, 1, S, S)
    editable = cell_mask(selected, (m.grid, m.grid))[0]  # (T, 1)
    worker = request.app.state.worker
    reference = await await_job(request, worker.run_device(
        lambda mm: mm.to_tokens(mm.encode_images(rgb[None]))[0].cpu()), None)  # (T, C)
    seed = _seed(params.seed, limits)
    dump = params.model_dump(mode="json", exclude={"image", "mask"})
    if params.strength == 0.0:  # nothing to sample: the reconstruction of the input (B15), NFE 0
        def run(mm):
            from server.model import images_to_uint8

            return images_to_uint8(mm.decode_tokens(reference.to(mm.device)[None]))[0]

        image = await await_job(request, worker.run_device(run), None)
        return await images_response(request, "/edit", [image], media, class_ids=[params.class_id], seed=seed,
                                     steps=params.steps, params=dump)
    rows = (RowSpec(label=params.class_id, seed=seed, index=0, edit=(reference, editable)),)
    job = SampleRequest(_rid(request), "edit", rows, params.steps, params.timestep_shift, _guidance(params),
                        _solver(params), strength=params.strength)
    result = await sample(request, job)
    return await images_response(request, "/edit", result, media, class_ids=[params.class_id], seed=seed,
                                 steps=params.steps, params=dump)
