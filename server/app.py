"""FastAPI application factory: middleware (request id, body limit, auth, metrics), error mapping, lifespan.

Request lifecycle::

    ASGI  ->  GuardMiddleware: request id, 413 on Content-Length / streamed bytes above max_upload_bytes,
              401 without the bearer key (except /health, /ready, /metrics, docs), per-request metrics
          ->  route (server.routes): validate (422), decode uploads off the event loop, hand work to the Worker
          ->  Worker thread (owns the device) -> future -> response (PNG or JSON)

Error mapping (docs/server.md): 400 invalid image, 401 bad/missing key, 406 ``Accept: image/png`` with several
images, 413 body or image too large, 422 invalid field (names field, value, allowed range), 429 queue full with
``Retry-After``, 499 client went away (logged and counted only), 503 not ready, 504 deadline, 500 only for our own
bugs and non-finite outputs, always with the ``request_id``.

Example::

    from server.app import create_app
    from server.config import ServerConfig
    app = create_app(ServerConfig(model_dir="models/demo", device="cpu"))
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server.config import ServerConfig
from server.images import ImageTooLarge, InvalidImage
from server.metrics import ServerMetrics, endpoint_label
from server.scheduler import QueueFull
from server.schemas import LimitError, allowed_text, json_safe, validation_detail
from server.jobs import (Cancelled, DeadlineExceeded, JobError, NonFiniteOutput, NotReady, OutOfMemory,
                         WorkerError)
from server.worker import Worker

log = logging.getLogger("svg.server")

OPEN_PATHS = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


class BodyTooLarge(Exception):
    """Raised from the wrapped ``receive`` once a streamed body passes ``max_upload_bytes``."""


def error_body(error: str, request_id: str, detail=None) -> dict:
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


class GuardMiddleware:
    """Pure ASGI middleware (so it sees the raw byte stream): request id, body limit, bearer auth and metrics.

    The body limit is enforced twice: from ``Content-Length`` before the route reads anything, and while
    ``receive`` streams a chunked body, so a 200 MB upload is refused after at most ``max_upload_bytes`` (B22).
    """

    def __init__(self, app, *, cfg: ServerConfig, metrics: ServerMetrics) -> None:
        self.app = app
        self.cfg = cfg
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        endpoint = endpoint_label(path)
        status = {"code": 500, "started": False}
        limit = self.cfg.max_upload_bytes

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        async def reply(code: int, body: dict, headers: dict | None = None):
            payload = dump_error(body)
            hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
            hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
            await send_wrapped({"type": "http.response.start", "status": code, "headers": hdrs})
            await send_wrapped({"type": "http.response.body", "body": payload})

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if self.cfg.api_key is not None and path not in OPEN_PATHS:
                auth = headers.get("authorization", "")
                token = auth[7:] if auth.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(token.encode(), self.cfg.api_key.encode()):
                    self.metrics.rejections_total.labels(reason="unauthorized").inc()
                    return await reply(401, error_body("unauthorized", request_id,
                                                       "missing or wrong bearer token (Authorization: Bearer <key>)"),
                                       {"www-authenticate": "Bearer"})
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                self.metrics.rejections_total.labels(reason="too_large").inc()
                return await reply(413, error_body("payload_too_large", request_id,
                                                   f"Content-Length={declared} exceeds max_upload_bytes={limit}"),
                                   {"connection": "close"})
            seen = 0

            async def receive_limited():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise BodyTooLarge()
                return message

            await self.app(scope, receive_limited, send_wrapped)
        except BodyTooLarge:
            self.metrics.rejections_total.labels(reason="too_large").inc()
            if not status["started"]:
                await reply(413, error_body("payload_too_large", request_id,
                                            f"body exceeds max_upload_bytes={limit} (streamed)"),
                            {"connection": "close"})
        except Exception:  # last resort: a bug must still answer 500 with the request id, never reset the connection
            log.exception("unhandled error, request_id=%s", request_id)
            if not status["started"]:
                await reply(500, error_body("internal_error", request_id,
                                            "internal server error; quote the request_id"))
        finally:
            self.metrics.requests_total.labels(endpoint=endpoint, status=str(status["code"])).inc()
            self.metrics.request_latency_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "unknown")


# HTTP status and error name of each worker failure (server/jobs.py knows nothing of HTTP).
_JOB_STATUS: dict[type, tuple[int, str]] = {
    NotReady: (503, "not_ready"), Cancelled: (499, "cancelled"), DeadlineExceeded: (504, "deadline_exceeded"),
    NonFiniteOutput: (500, "non-finite output"), OutOfMemory: (503, "out_of_memory"),
    WorkerError: (500, "internal_error"),
}


def _install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    from server import routes

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        from server.routes import body_fields

        detail, seen = [], set()
        cfg = request.app.state.cfg
        model = getattr(request.app.state.worker, "model", None)
        num_classes = model.num_classes if model is not None else None
        for err in exc.errors():
            if err.get("type") == "json_invalid":  # loc is ("body", byte offset): name the body, quote the offset
                pos = next((p for p in err.get("loc", ())[1:] if isinstance(p, int)), None)
                why = (err.get("ctx") or {}).get("error", "")
                detail.append({"field": "body", "value": None, "allowed": "a JSON object",
                               "msg": f"invalid JSON at position {pos}" + (f": {why}" if why else "")})
                continue
            loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form")]
            # A union (class_id: int | list[int]) reports one error per branch; keep the first per field.
            loc = [p for p in loc if not p.startswith(("constrained-", "list[", "function-"))]
            field = ".".join(loc) or "body"
            if field in seen:
                continue
            seen.add(field)
            value = err.get("input")
            if isinstance(value, dict):
                value = None if field != "body" else "<object>"
            unknown = err.get("type") == "extra_forbidden"
            allowed = allowed_text(field, max_steps=cfg.max_steps, max_images=cfg.max_images,
                                   num_classes=num_classes, fields=body_fields(request) if unknown else None)
            msg = err.get("msg", "invalid")
            if field.split(".")[0] == "class_id" and num_classes is not None and err.get("type") in (
                    "less_than_equal", "greater_than_equal"):
                msg = f"outside 0..{num_classes - 1}"  # the model's range, not the schema's 0..999
            detail.append(validation_detail(field, value, msg, allowed))
        return ErrorJSONResponse(error_body("validation_error", _request_id(request), detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        names = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 415: "unsupported_media_type"}
        detail = exc.detail
        if exc.status_code == 405:
            allow = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
            detail = f"{request.method} is not allowed on {request.url.path}; allowed methods: {allow}"
        return ErrorJSONResponse(error_body(names.get(exc.status_code, "http_error"), _request_id(request), detail),
                                 status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(LimitError)
    async def on_limit(request: Request, exc: LimitError):
        return ErrorJSONResponse(error_body("validation_error", _request_id(request), exc.detail), status_code=422)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, exc: QueueFull):
        metrics.rejections_total.labels(reason="queue_full").inc()
        return ErrorJSONResponse(error_body("queue_full", _request_id(request), str(exc)), status_code=429,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(InvalidImage)
    async def on_invalid_image(request: Request, exc: InvalidImage):
        return ErrorJSONResponse(error_body("invalid image", _request_id(request), str(exc)), status_code=400)

    @app.exception_handler(ImageTooLarge)
    async def on_image_too_large(request: Request, exc: ImageTooLarge):
        metrics.rejections_total.labels(reason="too_large").inc()
        return ErrorJSONResponse(error_body("image_too_large", _request_id(request), str(exc)), status_code=413)

    @app.exception_handler(JobError)
    async def on_job_failed(request: Request, exc: JobError):
        status, error = next((v for k, v in _JOB_STATUS.items() if isinstance(exc, k)), (500, "internal_error"))
        headers = {"Retry-After": "5"} if status == 503 else None
        if isinstance(exc, NotReady):
            metrics.rejections_total.labels(reason="not_ready").inc()
        return ErrorJSONResponse(error_body(error, _request_id(request), str(exc)), status_code=status,
                                 headers=headers)

    @app.exception_handler(routes.RequestFailedWith)
    async def on_refused(request: Request, exc: routes.RequestFailedWith):
        return ErrorJSONResponse(error_body(exc.error, _request_id(request), str(exc)), status_code=exc.status)

    @app.exception_handler(ClientDisconnect)
    async def on_disconnect(request: Request, exc: ClientDisconnect):
        # The client went away while sending its body: nobody reads this answer; it is counted as 499, not 500.
        log.info("client disconnected during the upload, request_id=%s", _request_id(request))
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception):
        rid = _request_id(request)
        log.exception("internal error, request_id=%s", rid)
        return ErrorJSONResponse(error_body("internal_error", rid, "internal server error; quote the request_id"),
                            status_code=500)


def create_app(cfg: ServerConfig, *, worker: Worker | None = None, metrics: ServerMetrics | None = None) -> FastAPI:
    """Build the app. The model loads on the worker thread at startup; ``/health`` answers at once.

    Args:
        cfg: validated configuration. worker/metrics: injected instances (tests, benchmark); default built here.
    """
    from server import routes

    if metrics is None:
        device = cfg.resolved_device()
        gpu_index = None
        if device.startswith("cuda"):
            import torch

            gpu_index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        metrics = ServerMetrics(peak_flops=cfg.peak_flops, gpu_device_index=gpu_index)
    worker = worker or Worker(cfg, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(
        title="SVG inference server",
        version="0.1.0",
        description="Class-conditional image generation, encoding, reconstruction, editing and interpolation with "
                    "SVG (latent diffusion without a VAE). Step-level continuous batching; see docs/server.md.",
        lifespan=lifespan,
        responses={422: {"description": "invalid field: names the field, the value and the allowed range"},
                   500: {"description": "internal error or non-finite output, with a request_id"}},
    )
    app.state.cfg, app.state.worker, app.state.metrics = cfg, worker, metrics
    app.add_middleware(GuardMiddleware, cfg=cfg, metrics=metrics)
    _install_error_handlers(app, metrics)
    app.include_router(routes.router)
    routes.install_openapi(app)
    return app
