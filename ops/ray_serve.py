"""Scale-out on Ray Serve: the same FastAPI app (``server.app.create_app``) as one replica per GPU.

Each replica is a Ray actor that builds the server's app with its own worker, scheduler and metrics, so a request
follows exactly the path it takes under plain uvicorn (same routes, same validation, same ``/metrics``). Ray Serve
adds what one process cannot: replicas on every GPU of every node, autoscaling on ongoing requests, and restarts of
unhealthy replicas.

Health (cases T32, T33): Ray's default check only pings the actor. :meth:`SVGIngress.check_health` instead sends a
tiny real request (``POST /generate``, one image, one step, no guidance) through the replica's own app, the same
execution path as user traffic, with a timeout; a stuck worker or device fails it, and Ray replaces the replica.
A replica does not finish starting until its model is loaded and warmed up: :class:`ReadyGate` holds the ASGI
lifespan start-up (which Ray awaits before it marks the replica RUNNING and routes to it) until the worker is ready,
so a new or replacement replica never receives user traffic, or answers ``/ready``, while it loads; a load failure
fails the start-up and Ray retries the replica. Should the model still not be ready when a check runs (``/ready`` is
503), the check passes for ``startup_grace_s`` seconds. After a
failed check the replica's own ``GET /ready`` answers 503 (with the reason) until a check passes again, so a load
balancer that polls replicas directly sees what Ray sees.

Test hook (case T32, tests only): ``ScaleConfig.fault_flag_path``. The first replica whose health check finds a file
at that path deletes it and fails every later check, so a test can watch Ray mark that one replica unhealthy and
replace it. It is off by default and not a command-line flag.

The route prefix is set in one place, :data:`ROUTE_PREFIX` (case T35), so paths are the same as under uvicorn.

Backpressure (case T34): Ray queues requests at each caller (the HTTP proxy) while every replica holds
``max_ongoing_requests``, and by default that queue is unbounded (``max_queued_requests=-1``): an overloaded
deployment answers late instead of refusing. Here both limits are always set. ``max_ongoing_requests`` defaults to
what one replica's app can hold (its ``max_queue`` waiting requests plus ``max_rows`` running ones), so the app's
own queue overflows first and answers 429 with ``Retry-After`` (counted as ``queue_full``, which the
``SVGQueueSaturated`` alert watches); the few requests that still find every replica full wait in a proxy queue of
``max_queued_requests`` (default 8), and beyond it the proxy answers 429 with ``Retry-After`` at once
(:func:`deployment_options`).

Loopback (this project talks to 127.0.0.1 only): :func:`init_local_ray` starts a local cluster whose node IP,
internal gRPC servers, dashboard agent and metrics export all listen on 127.0.0.1, with the dashboard off; the
HTTP proxy listens on ``--http-host`` (default 127.0.0.1).

Run (from the repository root; everything after ``--`` is a normal ``svg-serve`` flag)::

    python -m ops.ray_serve --min-replicas 1 --max-replicas 8 --gpus-per-replica 1 -- --model-dir models/demo

Source: Ray Serve deployment, ingress, autoscaling and health-check API (reference behaviour of Ray 2.x).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from server.config import ServerConfig

ROUTE_PREFIX = "/"  # the only place the route prefix is set (T35): same paths as plain uvicorn
APP_NAME = "svg"

logger = logging.getLogger("svg.ray_serve")

# The health probe: the smallest real request (1 image, 1 step, guidance off -> 1 model row, 1 decode).
PROBE_REQUEST = {"class_id": 0, "num_images": 1, "steps": 1, "cfg": 1.0, "seed": 0}


@dataclass(frozen=True)
class ScaleConfig:
    """Ray Serve settings of the SVG deployment (seconds for times).

    Raises:
        ValueError: a value out of range, naming the field, the value and the allowed range.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0  # requests in flight per replica before Ray adds one
    # Ray's cap of requests in flight at one replica; 0 = what the replica's app holds (max_queue + max_rows), so
    # the app's own 429 (queue_full) fires before Ray holds requests back.
    max_ongoing_requests: int = 0
    # Requests each Ray proxy holds while every replica is at max_ongoing_requests; beyond it: 429 at once.
    max_queued_requests: int = 8
    retry_after_s: float = 2.0  # Retry-After of the proxy's 429
    gpus_per_replica: float = 1.0  # 1 -> one replica per GPU; 0 -> CPU replicas (tests, CPU clusters)
    cpus_per_replica: float = 1.0
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    probe_timeout_s: float = 20.0  # the probe request's own deadline, below health_check_timeout_s
    startup_grace_s: float = 900.0  # model loading + warm-up allowed before a not-ready replica counts as unhealthy
    # TEST ONLY (T32): a file path; the replica that first finds a file there deletes it and fails its health checks
    # from then on. "" = off. Not a command-line flag.
    fault_flag_path: str = field(default="", metadata={"cli": False})

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is out of range: allowed {allowed}")

        need("min_replicas", self.min_replicas >= 0, ">= 0")
        need("max_replicas", self.max_replicas >= max(1, self.min_replicas), f">= max(1, min_replicas={self.min_replicas})")
        need("target_ongoing_requests", self.target_ongoing_requests > 0, "> 0")
        need("max_ongoing_requests", self.max_ongoing_requests >= 0, ">= 0 (0 = the app's max_queue + max_rows)")
        need("max_queued_requests", self.max_queued_requests >= 1,
             ">= 1 (Ray's -1, an unbounded proxy queue, is not allowed: overload must be refused, not queued)")
        need("retry_after_s", self.retry_after_s >= 1, ">= 1 second")
        need("gpus_per_replica", self.gpus_per_replica >= 0, ">= 0")
        need("cpus_per_replica", self.cpus_per_replica >= 0, ">= 0")
        need("probe_timeout_s", 0 < self.probe_timeout_s < self.health_check_timeout_s,
             f"0 < probe_timeout_s < health_check_timeout_s={self.health_check_timeout_s}")
        need("health_check_period_s", self.health_check_period_s > 0, "> 0")
        need("startup_grace_s", self.startup_grace_s > 0, "> 0")


class ProbeFailed(RuntimeError):
    """The health probe got no 200 in time; the message says what happened."""


async def probe(app, timeout_s: float, *, ready_since_start_s: float | None = None, grace_s: float = 0.0) -> str:
    """Run the health probe against an ASGI ``app`` in-process: ``GET /ready`` then a tiny ``POST /generate``.

    Args:
        app: the server's ASGI app (already started). timeout_s: deadline of the whole probe, seconds.
        ready_since_start_s: seconds since the replica started (for the start-up grace); grace_s: the grace.

    Returns:
        ``"ok"`` after a 200 from ``/generate``, or ``"loading"`` while not ready within the grace period.

    Raises:
        ProbeFailed: not ready after the grace period, a non-200 answer, or no answer within ``timeout_s``.
    """
    import httpx

    transport = httpx.ASGITransport(app=app)

    async def run() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            ready = await client.get("/ready")
            if ready.status_code != 200:
                if ready_since_start_s is not None and ready_since_start_s < grace_s:
                    return "loading"
                raise ProbeFailed(f"/ready answered {ready.status_code} after {ready_since_start_s} s "
                                  f"(start-up grace {grace_s} s)")
            answer = await client.post("/generate", json=PROBE_REQUEST)
            if answer.status_code != 200:
                raise ProbeFailed(f"probe POST /generate answered {answer.status_code}: {answer.text[:200]}")
            return "ok"

    try:
        return await asyncio.wait_for(run(), timeout=timeout_s)
    except asyncio.TimeoutError:
        raise ProbeFailed(f"probe got no answer within {timeout_s} s (stuck worker or device)") from None


class ReplicaHealth:
    """The outcome of a replica's latest health check: ``failure`` is None after a pass, else the reason (str)."""

    def __init__(self) -> None:
        self.failure: str | None = None


class ReadyGate:
    """ASGI middleware of a replica: holds start-up until the model is ready, and gates ``GET /ready`` on health.

    Lifespan: the app's ``lifespan.startup.complete`` is passed on only once ``worker.ready`` is set (model loaded
    and warmed up). Ray awaits that start-up before it marks the replica RUNNING, so no request reaches a replica
    that is still loading. If loading fails, or takes longer than ``startup_timeout_s`` seconds, start-up fails
    (``lifespan.startup.failed`` with the reason) and Ray starts the replica again.

    HTTP: while the replica's latest health check failed, ``GET /ready`` answers 503 with the server's ``/ready``
    format, ``{"ready": false, "error": "health check failed: <reason>"}``, and ``Retry-After: 2``; every other
    request, and ``/ready`` after a passing check, goes to the app unchanged.

    Args:
        app: the server's ASGI app. health: the replica's :class:`ReplicaHealth`.
        worker: the app's ``server.worker.Worker`` (``ready`` event, ``load_error``); None skips the start-up hold.
        startup_timeout_s: the longest start-up hold, seconds.
    """

    def __init__(self, app, health: ReplicaHealth, worker=None, startup_timeout_s: float = 900.0) -> None:
        self.app, self.health, self.worker, self.startup_timeout_s = app, health, worker, startup_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan" and self.worker is not None:
            await self.app(scope, receive, self._hold_startup(send))
            return
        failure = self.health.failure
        if failure is not None and scope["type"] == "http" and _app_path(scope) == "/ready":
            body = json.dumps({"ready": False, "error": f"health check failed: {failure}"}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"2"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _hold_startup(self, send):
        async def send_when_ready(message) -> None:
            if message["type"] == "lifespan.startup.complete":
                reason = await self._wait_for_model()
                if reason is not None:
                    message = {"type": "lifespan.startup.failed", "message": reason}
            await send(message)

        return send_when_ready

    async def _wait_for_model(self) -> str | None:
        """None once the worker is ready; else why start-up must fail (load error or timeout)."""
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.worker.ready.is_set():
            if self.worker.load_error is not None:
                return f"model load failed: {self.worker.load_error}"
            if time.monotonic() > deadline:
                return f"model not ready within startup_grace_s={self.startup_timeout_s} s"
            await asyncio.sleep(0.05)
        return None


def _app_path(scope) -> str:
    """The request path below the mount point (``root_path``), as the app's routes see it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _ingress_class():
    """The deployment class, defined lazily so that importing this module needs no Ray."""
    from ray import serve

    @serve.ingress()
    class SVGIngress:
        """One replica: the server's FastAPI app with its own worker; Ray routes HTTP to it unchanged."""

        def __init__(self, server_config: ServerConfig, scale: ScaleConfig) -> None:
            from server.app import create_app

            _keep_replica_grpc_on_loopback()
            self.scale = scale
            self.started = time.monotonic()
            self.health = ReplicaHealth()
            self.fault_injected = False  # set by the T32 test hook only
            # Inside a replica the app is reached through Ray's proxy, never through its own socket.
            self.svg_app = create_app(server_config)  # not `app`: the ingress wrapper owns that name
            self.svg_app.add_middleware(ReadyGate, health=self.health, worker=self.svg_app.state.worker,
                                        startup_timeout_s=scale.startup_grace_s)

        def __serve_build_asgi_app__(self):
            return self.svg_app

        async def check_health(self) -> None:
            """Called by Ray every ``health_check_period_s``; raising marks the replica unhealthy (T32, T33).

            Raises:
                ProbeFailed: the probe failed, or the test hook made this replica fail.
            """
            try:
                if self._take_fault_flag():
                    raise ProbeFailed(f"fault injected by the test hook ({self.scale.fault_flag_path})")
                state = await probe(self.svg_app, self.scale.probe_timeout_s,
                                    ready_since_start_s=time.monotonic() - self.started,
                                    grace_s=self.scale.startup_grace_s)
            except Exception as exc:  # recorded for /ready, then re-raised for Ray
                self.health.failure = str(exc) or type(exc).__name__
                raise
            self.health.failure = None
            logger.debug("health probe: %s", state)

        def _take_fault_flag(self) -> bool:
            """T32 test hook: claim the flag file (only one replica's delete succeeds); True once claimed."""
            if not self.fault_injected and self.scale.fault_flag_path:
                try:
                    os.remove(self.scale.fault_flag_path)
                    self.fault_injected = True
                except FileNotFoundError:
                    pass  # no flag, or another replica took it
            return self.fault_injected

    return SVGIngress


def effective_max_ongoing(server_config: ServerConfig, scale: ScaleConfig) -> int:
    """Ray's per-replica ``max_ongoing_requests``: the configured value, or (0) what the replica's app admits,
    ``max_queue`` waiting plus at most ``max_rows`` running requests (each running request holds >= 1 row)."""
    return scale.max_ongoing_requests or server_config.max_queue + server_config.max_rows


def deployment_options(server_config: ServerConfig, scale: ScaleConfig) -> dict:
    """The ``serve.deployment`` options of the SVG deployment (case T34: both queue limits always set).

    Returns:
        A dict for ``serve.deployment(**options)``; the backpressure answer is 429 with ``Retry-After``.
    """
    options = {
        "name": "SVGIngress",
        "ray_actor_options": {"num_gpus": scale.gpus_per_replica, "num_cpus": scale.cpus_per_replica},
        "max_ongoing_requests": effective_max_ongoing(server_config, scale),
        "max_queued_requests": scale.max_queued_requests,
        "backpressure_config": {"status_code": 429, "retry_after_s": scale.retry_after_s},
        "health_check_period_s": scale.health_check_period_s,
        "health_check_timeout_s": scale.health_check_timeout_s,
    }
    if scale.min_replicas == scale.max_replicas:
        options["num_replicas"] = scale.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scale.min_replicas,
            "max_replicas": scale.max_replicas,
            "target_ongoing_requests": scale.target_ongoing_requests,
        }
    return options


def _keep_replica_grpc_on_loopback() -> None:
    """In a replica on a loopback-only node, bind Serve's inter-deployment gRPC server to 127.0.0.1.

    Ray Serve (2.60) starts that server on ``[::]:0`` (every interface) whatever the node IP, after the
    deployment's constructor has run. On a node whose IP is 127.0.0.1 (:func:`init_local_ray`) nothing outside
    the machine may reach it, so the address is rewritten to loopback. Elsewhere, or when Ray's internals have moved,
    nothing changes (a warning says so).
    """
    import ray

    if ray.util.get_node_ip_address() != LOOPBACK:
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        logger.warning("ray.serve._private.replica moved: the replica's gRPC server may listen beyond loopback")
        return
    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "svg_loopback", False):
        if bind is None:
            logger.warning("Ray Serve changed: the replica's gRPC server may listen beyond loopback")
        return

    def bind_loopback(server, address: str):
        return bind(server, LOOPBACK + address[4:] if address.startswith("[::]:") else address)

    bind_loopback.svg_loopback = True
    replica.add_port_to_grpc_server = bind_loopback


def build_application(server_config: ServerConfig, scale: ScaleConfig):
    """The Ray Serve application (``serve.run`` it). One replica per ``gpus_per_replica`` GPUs, autoscaled."""
    from ray import serve

    deployment = serve.deployment(**deployment_options(server_config, scale))(_ingress_class())
    return deployment.bind(server_config, scale)


LOOPBACK = "127.0.0.1"


def init_local_ray(**kwargs):
    """Start a local Ray cluster that listens on loopback only, and connect to it.

    Ray replaces a node IP of 127.0.0.1 by the machine's routable address and then binds its gRPC servers (GCS,
    raylet, workers, dashboard agent, metrics export) to every interface. Ray's single-machine mode (the
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` switch, read by Ray and by every process it starts) keeps the node IP
    at 127.0.0.1, and with it every listener on loopback. The dashboard is off.

    Args:
        **kwargs: more ``ray.init`` arguments (``num_cpus``, ``runtime_env``, ``logging_level`` ...).

    Returns:
        What ``ray.init`` returns.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by the processes Ray starts
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # read at `import ray`, which may have happened before this call
    options = {"include_dashboard": False, "dashboard_host": LOOPBACK, "_node_ip_address": LOOPBACK, **kwargs}
    return ray.init(**options)


def run(server_config: ServerConfig, scale: ScaleConfig, *, http_host: str = LOOPBACK, http_port: int = 8000,
        blocking: bool = False):
    """Start Serve's HTTP proxy on ``http_host:http_port`` and deploy the app at :data:`ROUTE_PREFIX`.

    Returns the deployment handle. Call ``ray.init(...)`` first to choose the cluster (default: start a local one).
    """
    from ray import serve

    serve.start(http_options={"host": http_host, "port": http_port})
    return serve.run(build_application(server_config, scale), name=APP_NAME, route_prefix=ROUTE_PREFIX,
                     blocking=blocking)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, ScaleConfig, ServerConfig]:
    """Split ``[Ray options] -- [svg-serve flags]`` and validate both halves (exits with a message on bad input)."""
    server_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    own_argv = argv[: argv.index("--")] if "--" in argv else argv
    defaults = ScaleConfig()
    parser = argparse.ArgumentParser(prog="python -m ops.ray_serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto' to join); default: a local cluster on 127.0.0.1 only")
    parser.add_argument("--http-host", default=LOOPBACK,
                        help="HTTP proxy listen address (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    parser.add_argument("--http-port", type=int, default=8000)
    cli_fields = [f for f in dataclasses.fields(ScaleConfig) if f.metadata.get("cli", True)]
    for f in cli_fields:
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))
    args = parser.parse_args(own_argv)
    try:
        scale = ScaleConfig(**{f.name: getattr(args, f.name) for f in cli_fields})
        server_config = ServerConfig.from_sources(server_argv)
    except ValueError as exc:
        parser.error(str(exc))
    return args, scale, server_config


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m ops.ray_serve [Ray options] -- [svg-serve flags]``; blocks while serving."""
    args, scale, server_config = parse_args(list(sys.argv[1:] if argv is None else argv))
    import ray

    import ops

    # Ship this package (ops/) to every node; server/ and svg/ must be installed there (pip install .).
    if args.address is None:
        init_local_ray(runtime_env={"py_modules": [ops]})
    else:
        ray.init(address=args.address, runtime_env={"py_modules": [ops]})
    run(server_config, scale, http_host=args.http_host, http_port=args.http_port, blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
