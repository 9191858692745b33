"""The kernel benchmark writes well-formed CSV rows with a quality column (tiny shape, CPU smoke configuration)."""

from __future__ import annotations

import csv
import math

import torch

from kernels import bench


def test_bench_writes_rows_with_quality_column(tmp_path, device):
    rows = bench.run(torch.device(device), torch.bfloat16, [1], peak_gbps=4800.0, reps=1,
                     shape=bench.Shape(heads=1, tokens=8, head_dim=8))
    path = tmp_path / "k.csv"
    bench.write_csv(rows, path)
    with path.open() as handle:
        table = list(csv.DictReader(handle))
    ops = {(r["op"], r["impl"]) for r in table}
    assert {("attention", "triton"), ("qkln_attention", "triton_fused"), ("adaln_modulate", "triton"),
            ("gated_residual", "triton"), ("qk_layernorm", "triton")} <= ops
    for r in table:
        assert r["rows"] == "2"  # one image doubled for guidance
        assert float(r["ms"]) > 0 and float(r["gbps"]) > 0
        assert math.isfinite(float(r["max_abs_diff"])) and float(r["max_abs_diff"]) < 0.1
        if device == "cpu":
            assert r["note"] == bench.CPU_NOTE


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sampling_bench_flop_count_and_tiny_run(device):
    bench_sampling = _load_script("bench_sampling")
    from svg.config import SIT_PRESETS

    # the 11.86 TFLOP per SVG-XL image (25 steps, guided: 50 forward rows) within 1 %
    assert abs(50 * bench_sampling.forward_tflop(SIT_PRESETS["SVG-XL"]) - 11.86) / 11.86 < 0.01
    rows = bench_sampling.run("tiny", ["sdpa", "triton"], [1], steps=1, scale=4.0, device=torch.device(device),
                              dtype=torch.float32, tflop_per_image=1e-4, peak_tflops=1.0)
    assert [r["backend"] for r in rows] == ["sdpa", "triton"]
    assert all(r["finite"] for r in rows)
    assert float(rows[1]["max_abs_diff_vs_sdpa"]) < 1e-3  # same weights, noise and labels on both back-ends
    assert float(rows[1]["images_per_s"]) > 0
