"""FastAPI application factory: middleware (request id, HEAD, body limits and deadline, auth, metrics), error
mapping, lifespan.

Request lifecycle::

    ASGI  ->  GuardMiddleware: request id; HEAD served as GET without the body (RFC 9110 §9.3.2); 413 on
              Content-Length / streamed bytes above max_upload_bytes; 408 when the body is not in within
              body_timeout_s; 401 without the bearer key (except /health, /ready, /metrics, docs); metrics
          ->  route (server.routes): parse and validate (422), negotiate (406/415), decode uploads off the event
              loop, hand work to the Worker
          ->  Worker thread (owns the device) -> future -> response (PNG or JSON)

Error mapping: see :mod:`server.errors` and docs/server.md.

Example::

    from server.app import create_app
    from server.config import ServerConfig
    app = create_app(ServerConfig(model_dir="models/demo", device="cpu"))
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from server.config import ServerConfig
from server.errors import ApiError, ErrorJSONResponse, dump_error, error_body, job_status
from server.images import ImageTooLarge, InvalidImage
from server.jobs import JobError, NotReady
from server.metrics import ServerMetrics, endpoint_label
from server.scheduler import QueueFull
from server.schemas import InvalidFields
from server.worker import Worker

log = logging.getLogger("svg.server")

OPEN_PATHS = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect",
              "/", "/playground", "/playground/index.html", "/playground/app.js", "/playground/style.css")


class BodyTooLarge(Exception):
    """Raised from the wrapped ``receive`` once a streamed body passes ``max_upload_bytes``."""


class BodyTimeout(Exception):
    """Raised from the wrapped ``receive`` when the body is not complete within ``body_timeout_s``."""


class GuardMiddleware:
    """Pure ASGI middleware (so it sees the raw byte stream): request id, HEAD, body limits, bearer auth, metrics.

    * HEAD is served by the GET route and its body dropped, so every GET route answers HEAD with the same headers
      (RFC 9110 §9.3.2) and the OpenAPI document needs no HEAD operations.
    * The body size limit is enforced from ``Content-Length`` before the route reads anything, and while ``receive``
      streams a chunked body, so a 200 MB upload is refused after at most ``max_upload_bytes`` (B22).
    * The body must arrive within ``body_timeout_s`` of the request's start, else 408 and the connection closes
      (a client trickling its body cannot hold a connection and a handler for ever).
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
        state = scope.setdefault("state", {})
        state["request_id"], state["started_at"], state["method"] = request_id, time.monotonic(), scope["method"]
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        path = scope.get("path", "")
        endpoint = endpoint_label(path)
        status = {"code": 500, "started": False}
        limit = self.cfg.max_upload_bytes

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
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
            seen, body_done = 0, False
            deadline = asyncio.get_running_loop().time() + self.cfg.body_timeout_s

            async def receive_guarded():
                nonlocal seen, body_done
                if body_done:  # after the body: disconnect polling, unguarded
                    return await receive()
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    message = await asyncio.wait_for(receive(), max(remaining, 0.0))
                except asyncio.TimeoutError:
                    raise BodyTimeout() from None
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise BodyTooLarge()
                    body_done = not message.get("more_body", False)
                return message

            await self.app(scope, receive_guarded, send_wrapped)
        except BodyTooLarge:
            if not status["started"]:
                self.metrics.rejections_total.labels(reason="too_large").inc()
                await reply(413, *too_large(request_id, limit))
        except BodyTimeout:
            if not status["started"]:
                self.metrics.slow_client_closes_total.labels(phase="body").inc()
                await reply(408, *too_slow(request_id, self.cfg.body_timeout_s))
        except Exception:  # last resort: a bug must still answer 500 with the request id, never reset the connection
            log.exception("unhandled error, request_id=%s", request_id)
            if not status["started"]:
                await reply(500, error_body("internal_error", request_id,
                                            "internal server error; quote the request_id"))
        finally:
            self.metrics.requests_total.labels(endpoint=endpoint, status=str(status["code"])).inc()
            self.metrics.request_latency_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - start)


def too_large(request_id: str, limit: int) -> tuple[dict, dict]:
    return (error_body("payload_too_large", request_id, f"body exceeds max_upload_bytes={limit} (streamed)"),
            {"connection": "close"})


def too_slow(request_id: str, timeout_s: float) -> tuple[dict, dict]:
    return (error_body("request_timeout", request_id, f"the request body did not arrive within "
                                                      f"body_timeout_s={timeout_s:g}"), {"connection": "close"})


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "unknown")


_HTTP_NAMES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
               415: "unsupported_media_type"}


def _install_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    def answer(request: Request, status: int, error: str, detail, headers=None) -> ErrorJSONResponse:
        return ErrorJSONResponse(error_body(error, _request_id(request), detail), status_code=status,
                                 headers=headers)

    @app.exception_handler(InvalidFields)
    async def on_invalid(request: Request, exc: InvalidFields):
        return answer(request, 422, "validation_error", exc.detail)

    @app.exception_handler(RequestValidationError)
    async def on_framework_validation(request: Request, exc: RequestValidationError):
        # Endpoints parse their own bodies (server.parsing); this only catches a framework-level parameter error.
        detail = [{"field": ".".join(str(p) for p in e.get("loc", ())) or "request", "value": None, "allowed": "",
                   "msg": e.get("msg", "invalid")} for e in exc.errors()]
        return answer(request, 422, "validation_error", detail)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return answer(request, exc.status, exc.error, str(exc), exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        detail, headers = exc.detail, dict(exc.headers or {})
        if exc.status_code == 405:
            allow = next((v for k, v in headers.items() if k.lower() == "allow"), "")
            methods = [m.strip() for m in allow.split(",") if m.strip()]
            if "GET" in methods and "HEAD" not in methods:  # GET implies HEAD (RFC 9110 §9.3.2)
                methods.append("HEAD")
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"} | {"Allow": ", ".join(methods)}
            method = request.scope.get("state", {}).get("method", request.method)
            detail = f"{method} is not allowed on {request.url.path}; allowed methods: {', '.join(methods)}"
        return answer(request, exc.status_code, _HTTP_NAMES.get(exc.status_code, "http_error"), detail, headers)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, exc: QueueFull):
        metrics.rejections_total.labels(reason="queue_full").inc()
        return answer(request, 429, "queue_full", str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(InvalidImage)
    async def on_invalid_image(request: Request, exc: InvalidImage):
        return answer(request, 400, "invalid image", str(exc))

    @app.exception_handler(ImageTooLarge)
    async def on_image_too_large(request: Request, exc: ImageTooLarge):
        metrics.rejections_total.labels(reason="too_large").inc()
        return answer(request, 413, "image_too_large", str(exc))

    @app.exception_handler(BodyTooLarge)
    async def on_body_too_large(request: Request, exc: BodyTooLarge):
        metrics.rejections_total.labels(reason="too_large").inc()
        body, headers = too_large(_request_id(request), request.app.state.cfg.max_upload_bytes)
        return ErrorJSONResponse(body, status_code=413, headers=headers)

    @app.exception_handler(BodyTimeout)
    async def on_body_timeout(request: Request, exc: BodyTimeout):
        metrics.slow_client_closes_total.labels(phase="body").inc()
        body, headers = too_slow(_request_id(request), request.app.state.cfg.body_timeout_s)
        return ErrorJSONResponse(body, status_code=408, headers=headers)

    @app.exception_handler(JobError)
    async def on_job_error(request: Request, exc: JobError):
        status, error, retry_after = job_status(exc)
        if isinstance(exc, NotReady):
            metrics.rejections_total.labels(reason="not_ready").inc()
        return answer(request, status, error, str(exc),
                      {"Retry-After": str(retry_after)} if retry_after is not None else None)

    @app.exception_handler(ClientDisconnect)
    async def on_disconnect(request: Request, exc: ClientDisconnect):
        # The client went away while sending its body: nobody reads this answer; it is counted as 499, not 500.
        log.info("client disconnected during the upload, request_id=%s", _request_id(request))
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception):
        rid = _request_id(request)
        log.exception("internal error, request_id=%s", rid)
        return answer(request, 500, "internal_error", "internal server error; quote the request_id")


def create_app(cfg: ServerConfig, *, worker: Worker | None = None, metrics: ServerMetrics | None = None) -> FastAPI:
    """Build the app. The model loads on the worker thread at startup; ``/health`` answers at once.

    Args:
        cfg: validated configuration. worker/metrics: injected instances (tests, benchmark); default built here.
    """
    from server import openai_api, openapi, playground, routes, sse

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
    sse.install(app)
    app.include_router(routes.router)
    app.include_router(openai_api.router)
    app.include_router(playground.router)
    openapi.install_openapi(app)
    return app
