"""Live progress of ``/generate``, ``/edit`` and ``/interpolate`` as Server-Sent Events.

A request whose ``Accept`` names ``text/event-stream`` gets ``200 text/event-stream`` at once, then events in the
WHATWG HTML "server-sent events" format (``id:``, ``event:``, one ``data:`` line of JSON, a blank line):

=========  ===========================================================================================
event      data
=========  ===========================================================================================
queued     ``{"position", "queue_depth", "estimated_start_s"}`` when the job enters the scheduler
started    ``{"step": 0, "total", "elapsed_s"}`` when its first row is admitted to a DiT step
progress   ``{"step", "total", "elapsed_s", "eta_s"}``: exactly one per DiT step the request runs
result     the JSON body the same request answers without streaming (``ImagesResponse``)
error      ``{"status", "error", "request_id", "detail"}``: the status and body of the non-streaming answer
=========  ===========================================================================================

Comment lines (``: heartbeat``) every :data:`HEARTBEAT_S` keep proxies from closing an idle stream, and
``Cache-Control: no-cache`` + ``X-Accel-Buffering: no`` stop buffering proxies (nginx) from holding events back.

The endpoint itself runs unchanged (with ``Accept: application/json``): its ``SampleRequest`` gets an ``on_event``
callback (:func:`attach`) which the device thread calls; events hop to the event loop with
``loop.call_soon_threadsafe``. A client that goes away is noticed by the endpoint's own disconnect polling, which
cancels the job at the next step boundary, exactly as without streaming.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import Counter, Gauge
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from server.jobs import Cancelled, ProgressEvent, SampleRequest

EVENT_STREAM = "text/event-stream"
HEARTBEAT_S = 5.0  # proxies commonly close a connection idle for 30-60 s; well under that
EVENTS = ("queued", "started", "progress", "result", "error")
_STATE_KEY = "sse_events"  # scope["state"] entry holding the stream's event sink


class SSEMetrics:
    """``svg_sse_streams_open`` (gauge) and ``svg_sse_events_total{event}`` in the server's registry."""

    def __init__(self, registry) -> None:
        self.streams_open = Gauge("svg_sse_streams_open", "Server-Sent Event progress streams open now",
                                  registry=registry)
        self.events_total = Counter("svg_sse_events_total", "Server-Sent Events sent, by event type", ["event"],
                                    registry=registry)
        for name in EVENTS:
            self.events_total.labels(event=name)


def install(app) -> None:
    """Register the SSE metrics of ``app`` (call once from ``create_app``)."""
    app.state.sse_metrics = SSEMetrics(app.state.metrics.registry)


def with_event_stream(responses: dict) -> dict:
    """``responses`` (an endpoint's OpenAPI responses) with ``text/event-stream`` added to its 200 answer."""
    ok = dict(responses[200])
    ok["content"] = {**ok["content"], EVENT_STREAM: {
        "schema": {"type": "string"},
        "example": 'id: 1\nevent: queued\ndata: {"position":1,"queue_depth":1,"estimated_start_s":0.0}\n\n'
                   'id: 3\nevent: progress\ndata: {"step":1,"total":25,"elapsed_s":0.05,"eta_s":1.2}\n\n'}}
    ok["description"] += ("; or, with Accept: text/event-stream, Server-Sent Events queued, started, progress (one "
                          "per DiT step), then result (this JSON body) or error (status + error body)")
    return {**responses, 200: ok}


def wants_events(request: Request) -> bool:
    """True when ``Accept`` names ``text/event-stream`` with q > 0 (a wildcard alone never selects a stream)."""
    header = request.headers.get("accept")
    if not header:
        return False
    return any(value.lower() == EVENT_STREAM and q > 0 for value, q in parse_accept_header(header, MIMEAccept))


def format_event(event_id: int, event: str, data: dict | bytes) -> bytes:
    """One event in the wire format (``data`` JSON on ``data:`` lines, so an embedded newline stays valid)."""
    text = data.decode() if isinstance(data, bytes) else json.dumps(data, separators=(",", ":"))
    lines = "".join(f"data: {line}\n" for line in text.splitlines() or [""])
    return f"id: {event_id}\nevent: {event}\n{lines}\n".encode()


class _Sink:
    """Collects a stream's events on the event loop; the device thread reaches it through ``call_soon_threadsafe``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, dict | bytes]] = asyncio.Queue()
        self.started_at: float | None = None

    def put(self, event: str, data: dict | bytes) -> None:
        self.queue.put_nowait((event, data))

    def from_device(self, ev: ProgressEvent) -> None:  # device thread: keep it cheap
        self.loop.call_soon_threadsafe(self._progress, ev)

    def _progress(self, ev: ProgressEvent) -> None:
        if ev.kind == "started":
            self.started_at = ev.elapsed_s
            self.put("started", {"step": 0, "total": ev.total, "elapsed_s": round(ev.elapsed_s, 4)})
            return
        run_s = ev.elapsed_s - (self.started_at or 0.0)
        eta = run_s / ev.step * (ev.total - ev.step) if ev.step else None
        self.put("progress", {"step": ev.step, "total": ev.total, "elapsed_s": round(ev.elapsed_s, 4),
                              "eta_s": None if eta is None else round(eta, 4)})


def attach(request: Request, job: SampleRequest) -> SampleRequest:
    """``job`` with ``on_event`` feeding this request's stream; ``job`` unchanged when the request does not stream."""
    sink = request.scope.get("state", {}).get(_STATE_KEY)
    return job if sink is None else replace(job, on_event=sink.from_device)


def queued(request: Request, job: SampleRequest) -> None:
    """Emit ``queued`` right after ``job`` entered the scheduler: its position among waiting requests and a rough
    start estimate (requests ahead × steps × the mean DiT step time so far, per batch of ``max_rows``)."""
    sink = request.scope.get("state", {}).get(_STATE_KEY)
    if sink is None:
        return
    scheduler = request.app.state.worker.scheduler
    depth = scheduler.queue_depth()
    step_s = _mean_step_s(request.app.state.metrics)
    rows = max(1, len(job.rows) * (1 if job.guidance.scale == 1.0 else 2))
    per_batch = max(1, scheduler.max_rows // rows)
    ahead = max(0, depth - 1) + (1 if scheduler.inflight() > depth else 0)
    estimate = (ahead // per_batch + (1 if ahead % per_batch else 0)) * job.steps * step_s
    # The device thread may admit the job before this runs: it then counts as first in line, starting now.
    sink.put("queued", {"position": max(depth, 1), "queue_depth": depth, "estimated_start_s": round(estimate, 4)})


def _mean_step_s(metrics) -> float:
    total = count = 0.0
    for family in metrics.step_latency_seconds.collect():
        for s in family.samples:
            if s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
    return total / count if count else 0.05


def _error_handler(app, exc: Exception):
    for cls in type(exc).__mro__:
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None


class EventStream(Response):
    """Runs ``handler`` (an endpoint) and streams its job's events, then ``result`` or ``error``."""

    media_type = EVENT_STREAM

    def __init__(self, request: Request, handler: Callable[[Request], Awaitable[Response]]) -> None:
        super().__init__(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                         media_type="text/event-stream; charset=utf-8")
        self.request, self.handler = request, handler
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # a stream has none

    async def __call__(self, scope, receive, send) -> None:
        metrics = self.request.app.state.sse_metrics
        sink = _Sink(asyncio.get_running_loop())
        # The endpoint runs as for a JSON client; its scope shares ``state`` (request id, the sink) with ours.
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept"] + [(b"accept", b"application/json")]
        scope["state"][_STATE_KEY] = sink
        inner = Request({**scope, "headers": headers}, receive)
        task = asyncio.create_task(self._run(inner, sink))
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b": stream open\n\n", "more_body": True})
        metrics.streams_open.inc()
        event_id = 0
        try:
            while True:
                try:
                    event, data = await asyncio.wait_for(sink.queue.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                    continue
                if event == "cancelled":  # the client is gone: nobody reads further events
                    break
                event_id += 1
                await send({"type": "http.response.body", "body": format_event(event_id, event, data),
                            "more_body": True})
                metrics.events_total.labels(event=event).inc()
                if event in ("result", "error"):
                    break
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            metrics.streams_open.dec()
            if not task.done():
                task.cancel()

    async def _run(self, inner: Request, sink: _Sink) -> None:
        try:
            response = await self.handler(inner)
            sink.put("result", bytes(response.body))
        except Cancelled:
            sink.put("cancelled", {})
        except Exception as exc:  # the same status and body the non-streaming call answers
            handler = _error_handler(inner.app, exc)
            if handler is None:  # never leave the stream waiting: the app always has a catch-all handler
                sink.put("error", {"status": 500, "error": "internal_error", "detail": str(type(exc).__name__)})
                return
            answer = await handler(inner, exc)
            try:
                body = json.loads(answer.body)
            except ValueError:  # e.g. the 499 of a client that left during its upload
                body = {"error": "http_error"}
            sink.put("error", {"status": answer.status_code, **body})


def streamable(handler: Callable[[Request], Awaitable[Response]]):
    """Decorate an endpoint ``async def f(request)`` so that ``Accept: text/event-stream`` streams its progress."""

    @functools.wraps(handler)
    async def endpoint(request: Request):
        if wants_events(request):
            return EventStream(request, handler)
        return await handler(request)

    return endpoint
