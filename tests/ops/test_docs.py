"""docs/operations.md works as written: every command in its code blocks parses and points at real things."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from loadtest.run import parse_args as parse_loadtest_args
from ops.ray_serve import parse_args as parse_ray_args
from server.config import ServerConfig

from .test_docker import console_scripts

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"


def documented_commands() -> list[str]:
    """Every line inside the ```bash blocks of docs/operations.md."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _strip_env(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    return words


def test_every_documented_command_is_known_and_valid():
    scripts = console_scripts()
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    checked = set()
    for line in documented_commands():
        words = _strip_env(shlex.split(line))
        if words[:3] == ["python", "-m", "loadtest.run"]:
            args = parse_loadtest_args(words[3:])  # exits (SystemExit) on a bad flag or value
            if args.start_server:
                server = shlex.split(args.start_server)
                assert server[0] in scripts
                ServerConfig.from_sources(server[1:], env={})
            checked.add("loadtest")
        elif words[:3] == ["python", "-m", "ops.ray_serve"]:
            parse_ray_args(words[3:])
            checked.add("ray")
        elif words[:3] == ["python", "-m", "svg.pipeline"]:
            assert importlib.util.find_spec("svg.pipeline") is not None and words[3] == "make-random"
            checked.add("pipeline")
        elif words[0] == "cd" and "promtool" in words:
            assert (REPO / words[1]).is_dir()
            checked.add("promtool")
        elif words[0] == "docker" and words[1] == "compose":
            if "--profile" in words:
                profile, service = words[words.index("--profile") + 1], words[-1]
                assert compose["services"][service]["profiles"] == [profile]
            checked.add("compose")
        elif words[0] == "docker":
            checked.add("docker")
        elif words[0] == "torchrun":
            module = words[words.index("-m") + 1]
            assert (REPO / Path(*module.split("."))).with_suffix(".py").exists(), module
            checked.add("torchrun")
        else:
            raise AssertionError(f"docs/operations.md has a command this test does not know: {line}")
    assert checked == {"loadtest", "ray", "pipeline", "promtool", "compose", "docker", "torchrun"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt-get install -y prometheus")
def test_documented_promtool_command_runs_as_written():
    (line,) = [line for line in documented_commands() if "promtool" in line]
    result = subprocess.run(line, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") >= 3
