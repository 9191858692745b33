"""Service-level objectives for a load test: thresholds, the check, and the summary read from Locust's CSV.

The check is explicit (reference behaviour of Locust: a headless run exits 1 on *any* failed request, which is too
coarse for CI; see case T25). A run passes when its failure ratio and its p99 (optionally p95) latency are within
the thresholds. Imports only the standard library.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

# Exit codes of the headless runner (and of the locustfile's `quitting` hook).
EXIT_PASS = 0
EXIT_SLO_BREACHED = 1
EXIT_RUN_ERROR = 2


@dataclass(frozen=True)
class Thresholds:
    """SLO thresholds. ``max_fail_ratio`` in [0, 1]; latencies in milliseconds, None = not checked.

    Raises:
        ValueError: a ratio outside [0, 1] or a latency <= 0.
    """

    max_fail_ratio: float = 0.01
    max_p99_ms: float | None = 30_000.0
    max_p95_ms: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fail_ratio <= 1.0:
            raise ValueError(f"max_fail_ratio = {self.max_fail_ratio} must be in [0, 1]")
        for name in ("max_p99_ms", "max_p95_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} = {value} must be > 0 milliseconds (or unset)")


@dataclass
class RunStats:
    """Aggregated numbers of one run (all endpoints together). Latencies in ms, throughput in requests/s."""

    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    per_endpoint: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def fail_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def breaches(stats: RunStats, thresholds: Thresholds) -> list[str]:
    """The SLO breaches of a run, as readable strings; empty when it passes. A run with no request breaches."""
    found = []
    if stats.requests == 0:
        found.append("no request completed")
    if stats.fail_ratio > thresholds.max_fail_ratio:
        found.append(f"failure ratio {stats.fail_ratio:.2%} > {thresholds.max_fail_ratio:.2%}")
    if thresholds.max_p99_ms is not None and stats.p99_ms > thresholds.max_p99_ms:
        found.append(f"p99 {stats.p99_ms:.0f} ms > {thresholds.max_p99_ms:.0f} ms")
    if thresholds.max_p95_ms is not None and stats.p95_ms > thresholds.max_p95_ms:
        found.append(f"p95 {stats.p95_ms:.0f} ms > {thresholds.max_p95_ms:.0f} ms")
    return found


def _number(text: str) -> float:
    """Locust writes 'N/A' for percentiles of endpoints without requests."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_stats(stats_csv: Path) -> RunStats:
    """Read ``<prefix>_stats.csv`` written by ``locust --csv <prefix>``.

    Raises:
        FileNotFoundError: the file is missing (T26: Locust did not write its CSV).
        ValueError: the file has no 'Aggregated' row or lacks a needed column (named).
    """
    with open(stats_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = ("Name", "Request Count", "Failure Count", "Requests/s", "50%", "95%", "99%")
    per_endpoint: dict[str, dict[str, float]] = {}
    total = None
    for row in rows:
        missing = [c for c in needed if c not in row]
        if missing:
            raise ValueError(f"{stats_csv}: columns {missing} missing; is this a Locust *_stats.csv?")
        numbers = {
            "requests": _number(row["Request Count"]),
            "failures": _number(row["Failure Count"]),
            "requests_per_s": _number(row["Requests/s"]),
            "p50_ms": _number(row["50%"]),
            "p95_ms": _number(row["95%"]),
            "p99_ms": _number(row["99%"]),
        }
        if row["Name"] == "Aggregated":
            total = numbers
        else:
            per_endpoint[f"{row.get('Type', '')} {row['Name']}".strip()] = numbers
    if total is None:
        raise ValueError(f"{stats_csv}: no 'Aggregated' row; the run recorded no request")
    return RunStats(
        requests=int(total["requests"]),
        failures=int(total["failures"]),
        requests_per_s=total["requests_per_s"],
        p50_ms=total["p50_ms"],
        p95_ms=total["p95_ms"],
        p99_ms=total["p99_ms"],
        per_endpoint=per_endpoint,
    )


SUMMARY_FIELDS = (
    "shape", "users", "duration_s", "requests", "failures", "fail_ratio", "requests_per_s",
    "p50_ms", "p95_ms", "p99_ms", "max_fail_ratio", "max_p99_ms", "verdict",
)


def summary_row(stats: RunStats, thresholds: Thresholds, shape: str, users: int, duration_s: float) -> dict:
    """One row for ``summary.csv`` (fields ``SUMMARY_FIELDS``); verdict is PASS or FAIL."""
    return {
        "shape": shape,
        "users": users,
        "duration_s": round(duration_s, 1),
        "requests": stats.requests,
        "failures": stats.failures,
        "fail_ratio": round(stats.fail_ratio, 5),
        "requests_per_s": round(stats.requests_per_s, 3),
        "p50_ms": stats.p50_ms,
        "p95_ms": stats.p95_ms,
        "p99_ms": stats.p99_ms,
        "max_fail_ratio": thresholds.max_fail_ratio,
        "max_p99_ms": thresholds.max_p99_ms if thresholds.max_p99_ms is not None else "",
        "verdict": "FAIL" if breaches(stats, thresholds) else "PASS",
    }


def summary_line(row: dict, found: list[str]) -> str:
    """The one-line summary printed at the end of a run."""
    verdict = "PASS" if not found else "FAIL (" + "; ".join(found) + ")"
    return (
        f"{row['shape']} {row['duration_s']:g}s users={row['users']}: {row['requests']} requests, "
        f"{row['requests_per_s']:.2f} req/s, failures {row['fail_ratio']:.2%}, "
        f"p50 {row['p50_ms']:.0f} ms p95 {row['p95_ms']:.0f} ms p99 {row['p99_ms']:.0f} ms -> {verdict}"
    )
