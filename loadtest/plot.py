"""Plot throughput and latency percentiles over time from Locust's ``<prefix>_stats_history.csv``.

Uses the 'Aggregated' rows (all endpoints together). Locust's history percentiles are over a sliding window of the
last seconds, so the curves show how latency moved during the run, not the cumulative value.
"""

from __future__ import annotations

import csv
from pathlib import Path


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_history(history_csv: Path) -> dict[str, list[float]]:
    """Columns of the Aggregated rows: ``t_s`` (seconds from the first row), ``users``, ``rps``, ``fps``, p50/95/99.

    Raises:
        FileNotFoundError: the history file is missing.
        ValueError: it has no Aggregated data row.
    """
    with open(history_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("Name") == "Aggregated"]
    if not rows:
        raise ValueError(f"{history_csv}: no 'Aggregated' rows; did the run record any request?")
    start = _float(rows[0]["Timestamp"])
    return {
        "t_s": [_float(r["Timestamp"]) - start for r in rows],
        "users": [_float(r["User Count"]) for r in rows],
        "rps": [_float(r["Requests/s"]) for r in rows],
        "fps": [_float(r["Failures/s"]) for r in rows],
        "p50_ms": [_float(r["50%"]) for r in rows],
        "p95_ms": [_float(r["95%"]) for r in rows],
        "p99_ms": [_float(r["99%"]) for r in rows],
    }


def plot_history(history_csv: Path, out_png: Path, title: str = "") -> Path:
    """Write a two-panel PNG: requests/s, failures/s and users (top); p50/p95/p99 latency in ms (bottom)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    h = read_history(history_csv)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(h["t_s"], h["rps"], label="requests/s")
    top.plot(h["t_s"], h["fps"], label="failures/s", color="tab:red")
    top.set_ylabel("requests/s")
    users_axis = top.twinx()
    users_axis.step(h["t_s"], h["users"], where="post", color="tab:gray", linestyle="--", label="users")
    users_axis.set_ylabel("users")
    top.legend(loc="upper left")
    users_axis.legend(loc="upper right")
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        bottom.plot(h["t_s"], h[key], label=label)
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("time since start (s)")
    bottom.legend(loc="upper left")
    fig.suptitle(title or "SVG load test")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
