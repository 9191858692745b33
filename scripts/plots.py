"""Turn the committed benchmark CSVs into PNG charts for the README and docs.

    python scripts/plots.py                 # reads benchmarks/*.csv, writes docs/img/*.png

Charts:

* ``engine_ladder.png`` (``benchmarks/engines_cpu.csv``): images/s of each engine rung at batch 1 and 4, per preset;
  rungs without a number on this device (GPU-only) are left out.
* ``server_batching.png`` (``benchmarks/server_cpu.csv``): server images/s and p50/p99 latency by concurrency, step
  batching on vs off.
* ``loadtest_latency.png``: the load test's latency percentiles over time from Locust's
  ``benchmarks/loadtest_*_stats_history.csv`` (``loadtest.plot``; the committed one holds Locust's 'Aggregated' rows
  of a 90 s, 8-user steady run on the demo model), and ``loadtest_percentiles.png``: the per-endpoint p50/p95/p99 of
  ``benchmarks/loadtest_*_endpoints.csv``.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _num(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def engine_ladder(csv_path: Path, out: Path) -> Path:
    rows = [r for r in _rows(csv_path) if _num(r["images_per_s"]) is not None]
    presets = sorted({r["preset"] for r in rows})
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 3.8), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        rungs = list(dict.fromkeys(r["rung"] for r in rows if r["preset"] == preset))
        batches = sorted({int(r["batch"]) for r in rows if r["preset"] == preset})
        width = 0.8 / len(batches)
        for j, batch in enumerate(batches):
            values = {r["rung"]: float(r["images_per_s"]) for r in rows
                      if r["preset"] == preset and int(r["batch"]) == batch}
            xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(rungs))]
            ax.bar(xs, [values.get(k, 0.0) for k in rungs], width, label=f"batch {batch}")
        ax.set_xticks(range(len(rungs)), rungs, rotation=25, ha="right")
        ax.set_ylabel("images/s")
        ax.set_title(f"engine ladder, {preset} ({rows[0]['device']}, {rows[0]['steps']} steps)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def server_batching(csv_path: Path, out: Path) -> Path:
    rows = _rows(csv_path)
    fig, (ax_ips, ax_lat) = plt.subplots(1, 2, figsize=(11, 3.8))
    for mode, style in (("on", "-o"), ("off", "--s")):
        sel = sorted((r for r in rows if r["batching"] == mode), key=lambda r: int(r["concurrency"]))
        conc = [int(r["concurrency"]) for r in sel]
        ax_ips.plot(conc, [float(r["images_per_s"]) for r in sel], style, label=f"batching {mode}")
        ax_lat.plot(conc, [float(r["p50_s"]) for r in sel], style, label=f"p50, batching {mode}")
        ax_lat.plot(conc, [float(r["p99_s"]) for r in sel], style, alpha=0.5, label=f"p99, batching {mode}")
    info = rows[0]
    for ax in (ax_ips, ax_lat):
        ax.set_xlabel("concurrent clients")
        ax.set_xscale("log", base=2)
        ax.legend()
    ax_ips.set_ylabel("images/s")
    ax_lat.set_ylabel("latency, s")
    ax_ips.set_title(f"server throughput ({info['model']}, {info['device']}, {info['steps']} steps)")
    ax_lat.set_title("request latency")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def loadtest_percentiles(csv_paths: list[Path], out: Path) -> Path:
    fig, axes = plt.subplots(1, len(csv_paths), figsize=(5.5 * len(csv_paths), 3.8), squeeze=False)
    for ax, path in zip(axes[0], csv_paths):
        rows = [r for r in _rows(path) if r["Name"] != "Aggregated"]
        names = [r["Name"] for r in rows]
        for j, pct in enumerate(("50%", "95%", "99%")):
            xs = [i + (j - 1) * 0.27 for i in range(len(rows))]
            ax.bar(xs, [float(r[pct]) / 1000 for r in rows], 0.27, label=f"p{pct[:-1]}")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel("latency, s")
        ax.set_title(path.stem.replace("_endpoints", "").replace("_", " "))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, default=REPO / "benchmarks")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    made = []
    if (args.bench / "engines_cpu.csv").exists():
        made.append(engine_ladder(args.bench / "engines_cpu.csv", args.out / "engine_ladder.png"))
    if (args.bench / "server_cpu.csv").exists():
        made.append(server_batching(args.bench / "server_cpu.csv", args.out / "server_batching.png"))
    histories = sorted(args.bench.glob("loadtest_*_stats_history.csv"))
    if histories:
        from loadtest.plot import plot_history

        made.append(plot_history(histories[-1], args.out / "loadtest_latency.png", histories[-1].stem))
    endpoints = sorted(args.bench.glob("loadtest_*_endpoints.csv"))
    if endpoints:
        made.append(loadtest_percentiles(endpoints, args.out / "loadtest_percentiles.png"))
    for path in made:
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return made


if __name__ == "__main__":
    main()
