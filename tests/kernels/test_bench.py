"""The kernel benchmark writes well-formed CSV rows with a quality column (tiny shape, CPU smoke configuration)."""

from __future__ import annotations

import csv
import math

import torch

from kernels import bench


def test_bench_writes_rows_with_quality_column(tmp_path, device):
    rows = bench.run(torch.device(device), torch.bfloat16, [1], peak_gbps=4800.0, reps=1,
                     shape=bench.Shape(heads=1, tokens=16, head_dim=8))
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
