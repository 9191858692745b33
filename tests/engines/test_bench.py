"""The ladder benchmark writes well-formed CSV rows with a quality column and explicit skip reasons."""

from __future__ import annotations

import csv

import torch

from engines.bench import Row, run_ladder, write_csv


def test_bench_rows_and_csv(tmp_path):
    rows = run_ladder("tiny", [1], steps=2, scale=4.0, shift=0.15, repeats=1, device=torch.device("cpu"),
                      rungs=["eager-fp32", "reference-loop", "tensorrt"], decode=False)
    by_rung = {r.rung: r for r in rows}
    assert set(by_rung) == {"eager-fp32", "reference-loop", "tensorrt"}
    eager = by_rung["eager-fp32"]
    # One repeat of a batch of 1: images/s is the inverse of that run's latency (both rounded in the row), and
    # p50 = p99; the column is the measurement, not an arbitrary positive number.
    assert eager.latency_p50_ms == eager.latency_p99_ms > 0
    assert abs(eager.images_per_s * eager.latency_p50_ms / 1e3 - 1.0) < 0.02, eager
    assert float(eager.tflop_per_image) > 0 and 0 <= float(eager.mfu or 0) < 1
    assert by_rung["eager-fp32"].latent_max_abs_diff == "0"
    # The reference loop (two fp32 forwards per step) reaches the same latents as the batched sampler.
    assert float(by_rung["reference-loop"].latent_max_abs_diff) < 1e-5
    assert by_rung["tensorrt"].note.startswith("skipped: ")
    path = tmp_path / "ladder.csv"
    write_csv(rows, path, append=False)
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 3 and set(read[0]) == set(Row.__dataclass_fields__)
