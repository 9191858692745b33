"""Every command-line entry point of engines/, kernels/bench.py, scripts/bench_sampling.py and the svg mains reports
a bad argument as one argparse error line (exit status 2) naming the option and the value, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLING = [sys.executable, str(ROOT / "scripts" / "bench_sampling.py"), "--out", "unused.csv"]

# (command, argument the error line must name, value it must name)
CASES = [
    (["-m", "engines.quality", "--data", "x.npz", "--dtype", "fp8"], "--dtype", "fp8"),
    (["-m", "engines.quality", "--data", "x.npz", "--kinds", "bogus"], "--kinds", "bogus"),
    (["-m", "engines.quality", "--data", "x.npz", "--steps", "-1"], "--steps", "-1"),
    (["-m", "engines.quality", "--model-dir", str(ROOT / "models" / "demo"), "--data", "/nonexistent/mnist.npz"],
     "--data", "/nonexistent/mnist.npz"),
    (["-m", "engines.quality", "--model-dir", "/nonexistent/model", "--data", "x.npz"], "--model-dir",
     "/nonexistent/model"),
    (["-m", "engines.bench", "--preset", "NOPE"], "--preset", "NOPE"),
    (["-m", "engines.bench", "--steps", "-3"], "--steps", "-3"),
    (["-m", "engines.bench", "--batches", "0,-1"], "--batches", "0"),
    (["-m", "engines.bench", "--batches", "abc"], "--batches", "abc"),
    (["-m", "engines.bench", "--batches", "0"], "--batches", "0"),
    (["-m", "engines.bench", "--rungs", "eager-fp64"], "--rungs", "eager-fp64"),
    (["-m", "engines.bench", "--guidance-scale", "nan"], "--guidance-scale", "nan"),
    (["-m", "kernels.bench", "--batches", "0"], "--batches", "0"),
    (["-m", "kernels.bench", "--device", "tpu"], "--device", "tpu"),
    (SAMPLING[1:] + ["--steps", "0"], "--steps", "0"),
    (SAMPLING[1:] + ["--batches", "-2"], "--batches", "-2"),
    (["-m", "svg.pipeline", "make-random", "out", "--preset", "SVG-XL"], "--preset", "SVG-XL"),
    (["-m", "svg.latent", "stats.safetensors", "/nonexistent/latents.safetensors"], "inputs",
     "/nonexistent/latents.safetensors"),
    (["-m", "svg.parity", "/nonexistent/parity"], "directory", "/nonexistent/parity"),
    (["-m", "svg.parity", "/nonexistent/parity", "--atol-scale", "-1"], "--atol-scale", "-1"),
]


def _case_id(argv: list[str], option: str, value: str) -> str:
    program = argv[1] if argv[0] == "-m" else Path(argv[0]).stem
    return f"{program} {option} {argv[-1]}"


@pytest.mark.parametrize("argv,option,value", CASES, ids=[_case_id(*c) for c in CASES])
def test_bad_argument_is_one_parser_error_line(argv, option, value, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(error_lines) == 1, proc.stderr
    assert option in error_lines[0] and value in error_lines[0], error_lines[0]
