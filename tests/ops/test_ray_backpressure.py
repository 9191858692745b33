"""Ray Serve backpressure (case T34: queue limits that Ray really applies) and a loopback-only Ray cluster.

T34 is the fault where queue limits set in the wrong place were ignored: with Ray's defaults (an unbounded proxy
queue) three concurrent slow requests to a replica that takes one at a time all got 200 after 3.8, 7.3 and 12.4 s.
Here one CPU replica of the real app runs with ``max_ongoing_requests=1, max_queued_requests=1``: of three
concurrent slow requests two are accepted (one running, one queued at Ray's proxy) and the third is refused in under
200 ms with 429 and ``Retry-After``. The effective limits are read back from Ray's controller.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from ops.ray_serve import ScaleConfig, deployment_options, effective_max_ongoing
from server.config import ServerConfig

from .conftest import free_port, wait_http
from .ray_sockets import is_loopback, listening_sockets

# A slow but real request on the tiny model on CPU: 1000 Euler steps of one guided image (seconds).
SLOW_REQUEST = {"class_id": 1, "num_images": 1, "steps": 1000, "cfg": 4.0, "seed": 3}


def test_defaults_bound_both_queues_and_let_the_app_queue_overflow_first():
    server = ServerConfig(max_queue=64, max_rows=32)
    options = deployment_options(server, ScaleConfig())
    # Ray must hold at least what the app admits, else the app's 429 (queue_full, the SVGQueueSaturated alert) can
    # never fire; the proxy queue is bounded (Ray's default -1 is unbounded) and answers 429 + Retry-After.
    assert options["max_ongoing_requests"] == 64 + 32 == effective_max_ongoing(server, ScaleConfig())
    assert options["max_queued_requests"] == 8
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 2.0}
    explicit = deployment_options(server, ScaleConfig(max_ongoing_requests=3, max_queued_requests=2))
    assert (explicit["max_ongoing_requests"], explicit["max_queued_requests"]) == (3, 2)
    with pytest.raises(ValueError, match="max_queued_requests=-1 is out of range"):
        ScaleConfig(max_queued_requests=-1)


def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1"]))


@pytest.fixture(scope="module")
def slow_replica(tiny_model_dir):
    """One CPU replica with max_ongoing_requests=1 and max_queued_requests=1 on a loopback-only local cluster."""
    pytest.importorskip("ray", reason="ray[serve] is in the dev extra: pip install -e '.[dev]'")
    import ray
    from ray import serve

    import ops
    from ops.ray_serve import init_local_ray, run

    init_local_ray(num_cpus=2, runtime_env={"py_modules": [ops]}, logging_level="WARNING", log_to_driver=False)
    port = free_port()
    server_config = ServerConfig(model_dir=tiny_model_dir, device="cpu", warmup=False, max_rows=4, decode_batch=2,
                                 max_steps=1000)
    scale = ScaleConfig(min_replicas=1, max_replicas=1, gpus_per_replica=0, cpus_per_replica=1,
                        max_ongoing_requests=1, max_queued_requests=1, retry_after_s=3,
                        health_check_period_s=30, health_check_timeout_s=60, probe_timeout_s=50)
    try:
        run(server_config, scale, http_host="127.0.0.1", http_port=port)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ready", 180)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _post(url: str, body: dict, results: list, index: int) -> None:
    request = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            results[index] = (response.status, time.monotonic() - start, dict(response.headers))
    except urllib.error.HTTPError as exc:
        results[index] = (exc.code, time.monotonic() - start, dict(exc.headers))


def test_the_request_beyond_both_limits_is_refused_at_once_with_retry_after(slow_replica):
    from ray import serve

    results: list = [None, None, None]
    threads = [threading.Thread(target=_post, args=(slow_replica, SLOW_REQUEST, results, i)) for i in range(3)]
    threads[0].start()
    time.sleep(1.0)  # request 0 is running at the replica (max_ongoing_requests=1)
    threads[1].start()
    time.sleep(1.0)  # request 1 waits in the proxy's queue (max_queued_requests=1)
    assert results[0] is None and results[1] is None, f"the slow request was not slow: {results}"
    threads[2].start()
    threads[2].join(timeout=30)
    status, seconds, headers = results[2]
    assert status == 429, results
    assert seconds < 0.2, f"refusal took {seconds:.3f} s"
    assert headers.get("retry-after", headers.get("Retry-After")) == "3"
    for thread in threads[:2]:
        thread.join(timeout=300)
    assert [r[0] for r in results[:2]] == [200, 200], results

    # The limits Ray actually applies, read back from its controller (not from our own config object).
    details = serve.context._get_global_client().get_serve_details()
    config = details["applications"]["svg"]["deployments"]["SVGIngress"]["deployment_config"]
    assert config["max_ongoing_requests"] == 1
    assert config["max_queued_requests"] == 1
    assert config["backpressure_config"] == {"status_code": 429, "retry_after_s": 3.0}


def test_every_socket_of_the_ray_cluster_listens_on_loopback(slow_replica):
    sockets = listening_sockets()
    assert len(sockets) >= 5, sockets  # GCS, raylet, agents, proxy, replica: the cluster really is in the list
    exposed = [s for s in sockets if not is_loopback(s[2])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
