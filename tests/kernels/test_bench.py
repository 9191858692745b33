"""The kernel benchmark writes well-formed CSV rows with a quality column (tiny shape, CPU smoke configuration)."""

from __future__ import annotations

import csv
import math

import pytest
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
    # The bandwidth column is the op's minimal byte count over its measured time (kernels/bench.py), so it must
    # follow from the row's own shape and ms: a bench that times nothing, or miscounts bytes, fails here.
    rows_n, heads, tokens, head_dim, elem = 2, 1, 8, 8, 2  # bf16
    bnc = rows_n * tokens * heads * head_dim
    hidden = heads * head_dim
    nbytes = {"attention": 4 * bnc * elem, "qkln_attention": 4 * bnc * elem,
              "adaln_modulate": (2 * bnc + 2 * rows_n * hidden) * elem,
              "gated_residual": (3 * bnc + rows_n * hidden) * elem, "qk_layernorm": 2 * bnc * elem}
    for row in rows:
        if row.op in nbytes and math.isfinite(row.ms):
            assert row.ms > 0
            assert row.gbps == pytest.approx(nbytes[row.op] / row.ms / 1e6, rel=1e-6), row
            if math.isfinite(row.bandwidth_fraction):
                assert row.bandwidth_fraction == pytest.approx(row.gbps / 4800.0, rel=1e-6)
    for r in table:
        assert r["rows"] == "2"  # one image doubled for guidance
        assert float(r["ms"]) > 0
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
    for r in rows:  # images/s, achieved TFLOP/s and MFU follow from the measured seconds, not just "> 0"
        ips = float(r["images_per_s"])
        assert ips == pytest.approx(r["images"] / float(r["seconds"]), rel=0.05)  # seconds has 4 decimals
        assert float(r["mfu"]) == pytest.approx(ips * 1e-4 / 1.0, rel=1e-3)
