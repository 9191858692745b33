"""Ray Serve scale-out: two CPU replicas of the real app behind Ray's proxy (cases T32, T33, T35), the health probe
and the replica's readiness gate."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request

import pytest

from ops.ray_serve import PROBE_REQUEST, ROUTE_PREFIX, ProbeFailed, ReadyGate, ReplicaHealth, ScaleConfig, probe
from server.config import ServerConfig

from .conftest import free_port, wait_http


# -- the probe, against stand-in ASGI apps (a stuck server, a loading server) -------------------------------------
def _asgi_app(ready_status: int, generate_delay_s: float | None):
    """A minimal ASGI app: /ready answers ``ready_status``; /generate answers 200 after ``generate_delay_s`` seconds
    (None: never, like a stuck worker)."""

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        status = ready_status
        if scope["path"] == "/generate":
            await asyncio.sleep(3600 if generate_delay_s is None else generate_delay_s)
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x"})

    return app


def test_probe_passes_on_a_working_app_and_fails_fast_on_a_stuck_one():
    assert asyncio.run(probe(_asgi_app(200, 0.01), timeout_s=5)) == "ok"
    start = time.monotonic()
    with pytest.raises(ProbeFailed, match="no answer within 0.5 s"):
        asyncio.run(probe(_asgi_app(200, None), timeout_s=0.5))
    assert time.monotonic() - start < 3  # T33: a stuck request path fails the check, it does not hang it


def test_probe_allows_loading_only_during_the_startup_grace():
    loading = _asgi_app(503, 0.01)
    assert asyncio.run(probe(loading, 5, ready_since_start_s=10, grace_s=600)) == "loading"
    with pytest.raises(ProbeFailed, match="/ready answered 503"):
        asyncio.run(probe(loading, 5, ready_since_start_s=700, grace_s=600))


def test_scale_config_is_validated_with_the_field_named():
    with pytest.raises(ValueError, match="max_replicas=1 is out of range"):
        ScaleConfig(min_replicas=2, max_replicas=1)
    with pytest.raises(ValueError, match="probe_timeout_s=40"):
        ScaleConfig(probe_timeout_s=40, health_check_timeout_s=30)
    assert PROBE_REQUEST["steps"] == 1 and PROBE_REQUEST["num_images"] == 1


def test_ready_gate_answers_503_only_while_the_last_health_check_failed():
    import httpx

    health = ReplicaHealth()
    app = ReadyGate(_asgi_app(200, 0.0), health)

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
            return await client.get(path)

    assert asyncio.run(get("/ready")).status_code == 200
    health.failure = "probe got no answer within 20 s"
    failed = asyncio.run(get("/ready"))
    assert failed.status_code == 503 and failed.headers["retry-after"] == "2"
    assert failed.json() == {"ready": False, "error": "health check failed: probe got no answer within 20 s"}
    assert asyncio.run(get("/health")).status_code == 200  # only readiness is gated
    health.failure = None
    assert asyncio.run(get("/ready")).status_code == 200


async def _run_lifespan(app, timeout_s: float = 120.0) -> list[tuple[str, str, bool]]:
    """Drive an ASGI lifespan start-up then shut-down; returns (type, message, worker ready when sent) per message."""
    inbox: asyncio.Queue = asyncio.Queue()
    sent: list[tuple[str, str, bool]] = []
    worker = app.worker

    async def send(message) -> None:
        sent.append((message["type"], message.get("message", ""), worker.ready.is_set()))

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    deadline = time.monotonic() + timeout_s
    while not sent and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 60)
    return sent


def test_replica_start_up_waits_for_the_model_and_fails_on_a_load_error(tiny_model_dir, tmp_path):
    """Ray routes to a replica once its ASGI start-up completes, so start-up must wait for the real worker to load
    (a loading replica would answer user requests 503); a broken checkpoint must fail start-up, not hang it."""
    import shutil

    from server.app import create_app

    app = create_app(ServerConfig(model_dir=tiny_model_dir, device="cpu", warmup=False))
    sent = asyncio.run(_run_lifespan(ReadyGate(app, ReplicaHealth(), worker=app.state.worker)))
    assert sent[0] == ("lifespan.startup.complete", "", True), sent

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "sit.safetensors").write_bytes(b"not a safetensors file")
    app = create_app(ServerConfig(model_dir=broken, device="cpu", warmup=False))
    sent = asyncio.run(_run_lifespan(ReadyGate(app, ReplicaHealth(), worker=app.state.worker)))
    assert sent[0][0] == "lifespan.startup.failed" and sent[0][1].startswith("model load failed: "), sent
    assert sent[0][2] is False


def test_the_fault_hook_is_not_a_command_line_flag():
    from ops.ray_serve import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--fault-flag-path", "/tmp/x"])
    assert parse_args(["--max-replicas", "2"])[1].fault_flag_path == ""


# -- a local Ray cluster with two CPU replicas ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fault_flag(tmp_path_factory):
    """Where the T32 test hook looks: a file here makes one replica fail its health checks."""
    return tmp_path_factory.mktemp("ray_fault") / "fail_health_check"


@pytest.fixture(scope="module")
def ray_url(tiny_model_dir, fault_flag):
    ray = pytest.importorskip("ray", reason="ray[serve] is in the dev extra: pip install -e '.[dev]'")
    from ray import serve

    import ops
    from ops.ray_serve import init_local_ray, run

    # Loopback only: node IP, gRPC servers, agents and the proxy on 127.0.0.1, dashboard off.
    init_local_ray(num_cpus=4, runtime_env={"py_modules": [ops]}, logging_level="WARNING", log_to_driver=False)
    port = free_port()
    # No warm-up request: the health probe is the first real forward (keeps this test within its 2-minute budget).
    server_config = ServerConfig(model_dir=tiny_model_dir, device="cpu", warmup=False, max_rows=8, decode_batch=4)
    scale = ScaleConfig(min_replicas=2, max_replicas=2, gpus_per_replica=0, cpus_per_replica=1,
                        health_check_period_s=2, health_check_timeout_s=30, probe_timeout_s=20,
                        fault_flag_path=str(fault_flag))
    try:
        run(server_config, scale, http_host="127.0.0.1", http_port=port)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", 180)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read()


def test_two_replicas_run_and_health_checks_are_real_forwards(ray_url):
    from ray import serve

    status = serve.status().applications["svg"]
    assert status.status == "RUNNING"
    assert status.deployments["SVGIngress"].replica_states == {"RUNNING": 2}
    # No user has called /generate yet: a non-zero /generate count comes from check_health's probe (T33).
    probes, deadline = 0.0, time.monotonic() + 30
    while probes < 1 and time.monotonic() < deadline:
        _, body = _get(ray_url + "/metrics")
        found = re.search(r'svg_requests_total\{endpoint="/generate",status="200"\} ([0-9.e+]+)', body.decode())
        probes = float(found.group(1)) if found else 0.0
        time.sleep(1)
    assert probes >= 1


def test_endpoints_and_routes_through_the_proxy_match_plain_uvicorn(ray_url, tiny_model_dir):
    """T35: the same paths as the plain app, route prefix '/' in one place, /-/routes maps it to the ingress."""
    from server.app import create_app

    assert _get(ray_url + "/health")[0] == 200
    body = json.dumps({"class_id": 3, "num_images": 2, "steps": 2, "cfg": 4.0, "seed": 7}).encode()
    request = urllib.request.Request(ray_url + "/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert response.status == 200 and len(answer["images"]) == 2 and answer["seed"] == 7
    routes = json.loads(_get(ray_url + "/-/routes")[1])
    assert routes == {ROUTE_PREFIX: "svg"}
    plain = set(create_app(ServerConfig(model_dir=tiny_model_dir, device="cpu")).openapi()["paths"])
    proxied = set(json.loads(_get(ray_url + "/openapi.json")[1])["paths"])
    assert proxied == plain and "/generate" in plain


def _replica_actors() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SVGIngress" in a["name"]}


def _ready_status(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return None, ""  # no replica answered in time (one is being replaced)


def test_a_replica_failing_its_health_check_is_marked_unhealthy_and_replaced(ray_url, fault_flag):
    """T32: the test hook makes one replica's check_health raise. Ray must show the deployment UNHEALTHY/UPDATING,
    that replica's /ready must answer 503, and Ray must replace it (a new replica actor, two RUNNING, HEALTHY).
    Runs last in this module: it restarts a replica of the shared cluster."""
    from ray import serve

    before = _replica_actors()
    assert len(before) == 2
    fault_flag.write_text("fail")
    statuses, ready_codes, unready_bodies = [], set(), []
    deadline = time.monotonic() + 90  # 3 failed checks (period 2 s) + graceful stop + a new replica's start-up
    while time.monotonic() < deadline:
        deployment = serve.status().applications["svg"].deployments["SVGIngress"]
        if not statuses or statuses[-1] != (deployment.status, deployment.replica_states):
            statuses.append((deployment.status, dict(deployment.replica_states)))
        code, body = _ready_status(ray_url)
        ready_codes.add(code)
        if code == 503:
            unready_bodies.append(body)
        replaced = _replica_actors() != before
        if (replaced and unready_bodies and deployment.status == "HEALTHY"
                and deployment.replica_states == {"RUNNING": 2}):
            break
        time.sleep(0.1)
    history = f"status history {statuses}, /ready codes {ready_codes}"
    assert not fault_flag.exists(), "no replica took the fault flag: " + history
    assert {"UNHEALTHY", "UPDATING"} & {status for status, _ in statuses}, history
    assert unready_bodies and "health check failed: fault injected" in unready_bodies[0], history
    after = _replica_actors()
    assert len(before - after) == 1 and len(after - before) == 1, f"{before} -> {after}; {history}"
    final = serve.status().applications["svg"]
    assert final.status == "RUNNING" and final.deployments["SVGIngress"].status == "HEALTHY", history
    # The replacement only turned RUNNING after its model loaded (ReadyGate holds start-up), so every replica that
    # Ray routes to is ready now: no 503 "loading" from the new one.
    answers = [_ready_status(ray_url) for _ in range(10)]
    assert all(code == 200 for code, _ in answers), answers
