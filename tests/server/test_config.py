"""Configuration: one place for flags and SVG_* variables, validated with the field, value and range."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, ServerConfig


def test_flag_beats_env_beats_default():
    cfg = ServerConfig.from_sources(["--max-rows", "16"], env={"SVG_MAX_ROWS": "8", "SVG_DEVICE": "cpu",
                                                                "SVG_WARMUP": "false", "SVG_MODEL_DIR": "/m"})
    assert cfg.max_rows == 16 and cfg.device == "cpu" and cfg.warmup is False and cfg.model_dir == Path("/m")
    assert ServerConfig.from_sources([], env={}).max_queue == ServerConfig().max_queue


@pytest.mark.parametrize("argv,needle", [
    (["--workers", "2"], "workers=2"), (["--max-rows", "1"], "max_rows=1"), (["--dtype", "fp8"], "dtype='fp8'"),
    (["--sit-engine", "onnx"], "sit_engine='onnx'"), (["--max-rows", "many"], "max_rows='many'"),
    (["--request-timeout-s", "601"], "0.1..600"), (["--sit-checkpoint", "x.pt"], "preset"),
    (["--api-key", "short"], "api_key"), (["--device", "tpu"], "device='tpu'"),
])
def test_invalid_values_name_field_value_and_range(argv, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        ServerConfig.from_sources(argv, env={})


def test_every_field_has_a_flag_and_help():
    text = ServerConfig.parser().format_help()
    for name in ServerConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in text
        assert "SVG_" + name.upper() in text


def test_engine_shorthand_sets_both_engines():
    cfg = ServerConfig.from_sources(["--engine", "compile"], env={})
    assert cfg.sit_engine == "compile" and cfg.decoder_engine == "compile"
    with pytest.raises(ConfigError, match="engine='onnx'"):
        ServerConfig.from_sources([], env={"SVG_ENGINE": "onnx"})


def test_max_steps_below_the_request_default_is_refused():
    from server.config import DEFAULT_STEPS

    with pytest.raises(ConfigError, match=f"max_steps={DEFAULT_STEPS - 1}.*steps={DEFAULT_STEPS}"):
        ServerConfig.from_sources(["--max-steps", str(DEFAULT_STEPS - 1)], env={})
    assert ServerConfig.from_sources(["--max-steps", str(DEFAULT_STEPS)], env={}).max_steps == DEFAULT_STEPS


def test_docs_state_the_api_key_rules_and_every_open_path():
    from server.app import OPEN_PATHS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `--api-key`"))
    assert "at least 8 characters" in row
    with pytest.raises(ConfigError, match="api_key.*at least 8 characters"):
        ServerConfig.from_sources(["--api-key", "1234567"], env={})
    for path in OPEN_PATHS:
        assert f"`{path}`" in row, path


def test_max_images_below_the_default_interpolation_points_is_refused():
    """Issue 11: with --max-images 4 a plain /interpolate (default num_points) could never succeed."""
    from server.config import DEFAULT_NUM_POINTS

    with pytest.raises(ConfigError, match=f"max_images={DEFAULT_NUM_POINTS - 1}.*num_points={DEFAULT_NUM_POINTS}"):
        ServerConfig.from_sources(["--max-images", str(DEFAULT_NUM_POINTS - 1)], env={})
    assert ServerConfig.from_sources(["--max-images", str(DEFAULT_NUM_POINTS)], env={}).max_images == 5


@pytest.mark.parametrize("argv,needle", [
    (["--header-timeout-s", "0"], "header_timeout_s=0.0"), (["--body-timeout-s", "-1"], "body_timeout_s=-1.0"),
    (["--keep-alive-s", "1000"], "keep_alive_s=1000.0"),
])
def test_receive_deadlines_and_keep_alive_are_validated(argv, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        ServerConfig.from_sources(argv, env={})
