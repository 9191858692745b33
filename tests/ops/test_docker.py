"""Dockerfile and docker-compose.yml checked against the server's configuration (no Docker engine here; case T30)."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from server.config import ENV_PREFIX, ServerConfig

REPO = Path(__file__).resolve().parents[2]


def console_scripts() -> set[str]:
    """Names under [project.scripts] in pyproject.toml (a regex, not tomllib, so Python 3.10 runs it too)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*=", section, flags=re.M))
# Variables read outside ServerConfig: the attention backend switch (svg/attention.py), the TensorRT plan cache
# (engines/cache.py) and the strict CUDA-graph check (engines/cudagraphs.py).
OTHER_SVG_VARIABLES = {"SVG_ATTENTION", "SVG_ENGINE_CACHE", "SVG_CUDAGRAPHS_STRICT"}


def allowed_svg_variables() -> set[str]:
    return {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ServerConfig)} | OTHER_SVG_VARIABLES


def parse_dockerfile(path: Path) -> list[dict]:
    """Stages of a Dockerfile: ``[{"from", "name", "instructions": [(KEYWORD, args)]}]`` (continuations joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args, stages = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"from": image, "name": name, "instructions": []})
        else:
            stages[-1]["instructions"].append((keyword, rest.strip()))
    return stages


def _env_of(stage: dict) -> dict[str, str]:
    env = {}
    for keyword, rest in stage["instructions"]:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _one(stage: dict, keyword: str) -> str:
    (value,) = [rest for kw, rest in stage["instructions"] if kw == keyword]
    return value


@pytest.fixture(scope="module")
def stages() -> list[dict]:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_dockerfile_is_multistage_on_a_cuda_runtime_base(stages):
    names = [s["name"] for s in stages]
    assert names == ["build", "loadtest", "runtime"], "the server stage must be last (the default build target)"
    runtime = stages[-1]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", runtime["from"]), runtime["from"]
    assert stages[0]["from"] == runtime["from"]
    copies = [rest for kw, rest in runtime["instructions"] if kw == "COPY"]
    assert any(c.startswith("--from=build /opt/venv") for c in copies), "runtime must copy the built environment"
    assert any("models/demo" in c for c in copies), "the demo model must be baked in"
    assert not any(kw == "RUN" and "pip install" in rest for kw, rest in runtime["instructions"])


def test_runtime_runs_as_non_root_with_health_check_volumes_and_entrypoint(stages):
    runtime = stages[-1]
    user = _one(runtime, "USER")
    assert user not in ("root", "0"), user
    env = _env_of(runtime)
    port = env["SVG_PORT"]
    assert _one(runtime, "EXPOSE") == port == str(ServerConfig().port)
    health = _one(runtime, "HEALTHCHECK")
    assert "/health" in health and "SVG_PORT" in health
    assert env["SVG_HOST"] == "0.0.0.0", "inside a container the server must listen on all interfaces"
    volumes = json.loads(_one(runtime, "VOLUME"))
    assert set(volumes) == {"/models", "/cache/engines"}
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/cache/engines/")
    # T31 / issue 14: TensorRT plans go to the engine volume that docs/operations.md promises, not ~/.cache.
    assert env["SVG_ENGINE_CACHE"] == "/cache/engines"
    owned = [rest for kw, rest in runtime["instructions"] if kw == "RUN" and "chown" in rest]
    assert any("/cache/engines" in rest for rest in owned), "the image must give its user the engine volume"
    assert env["SVG_MODEL_DIR"] == "/app/models/demo"
    entrypoint = json.loads(_one(runtime, "ENTRYPOINT"))
    scripts = console_scripts()
    assert entrypoint == ["svg-serve"] and "svg-serve" in scripts


def test_every_svg_variable_is_a_server_setting(stages, compose):
    allowed = allowed_svg_variables()
    used = {k for stage in stages for k in _env_of(stage) if k.startswith(ENV_PREFIX)}
    used |= {k for service in compose["services"].values() for k in service.get("environment", {})
             if k.startswith(ENV_PREFIX)}
    assert used and not used - allowed, f"unknown SVG_* variables: {sorted(used - allowed)}"
    # And every value parses and validates as the server would read it.
    env = {k: str(v) for k, v in compose["services"]["svg"]["environment"].items()}
    config = ServerConfig.from_sources([], env=env)
    assert config.port == 8000 and config.host == "0.0.0.0"


def test_compose_server_ports_health_volumes_and_gpu(compose):
    svg = compose["services"]["svg"]
    assert svg["build"] == {"context": ".", "target": "runtime"}
    port = str(svg["environment"]["SVG_PORT"])
    assert f"{port}:{port}" in svg["ports"]
    health = " ".join(svg["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/health" in health
    mounts = {target: source for source, target in (volume.split(":", 1) for volume in svg["volumes"])}
    assert set(mounts) == {"/models", "/cache/engines"}
    assert set(mounts.values()) <= set(compose["volumes"])
    # T30: the reservation sits under deploy.resources.reservations.devices, with exactly one of count/device_ids.
    (device,) = svg["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert ("count" in device) != ("device_ids" in device)
    assert device.get("count") == 1
    assert svg["environment"]["SVG_DEVICE"] == "cuda"


def test_compose_prometheus_grafana_and_locust_wiring(compose):
    services = compose["services"]
    prometheus = services["prometheus"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    scrape = yaml.safe_load((REPO / "ops" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "svg"]
    assert job["static_configs"][0]["targets"] == [f"svg:{services['svg']['environment']['SVG_PORT']}"]
    grafana = services["grafana"]
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    datasource = yaml.safe_load((REPO / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090" and "9090:9090" in prometheus["ports"]
    locust = services["locust"]
    assert locust["profiles"] == ["loadtest"]
    assert locust["build"]["target"] == "loadtest"
    assert locust["command"][:2] == ["--url", "http://svg:8000"]
    assert locust["depends_on"]["svg"]["condition"] == "service_healthy"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt-get install -y prometheus")
def test_prometheus_image_matches_the_promtool_version(compose):
    """T28: the rules are checked with the promtool of the Prometheus version that compose runs."""
    version = re.search(r"version (\d+\.\d+\.\d+)", subprocess.run(
        ["promtool", "--version"], capture_output=True, text=True).stdout + "").group(1)
    assert compose["services"]["prometheus"]["image"] == f"prom/prometheus:v{version}"


def test_dockerignore_keeps_local_state_out():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "*.onnx", "engine_cache"} <= ignored
    assert "models" not in ignored and "models/demo" not in ignored
