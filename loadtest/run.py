"""Headless load-test runner: optionally start the server, run Locust with a data shape, check the SLO.

Usage::

    python -m loadtest.run --url http://127.0.0.1:8000 --duration 20s --users 4 --shape steady --out runs/smoke
    python -m loadtest.run --start-server "svg-serve --port 8000" --url http://127.0.0.1:8000 \
        --duration 5m --users 16 --shape steady --out runs/long

Writes into ``--out``: ``locust_stats.csv``, ``locust_failures.csv``, ``locust_stats_history.csv``,
``locust_exceptions.csv`` (Locust's CSV), ``report.html`` (Locust's HTML report), ``timeline.png`` (throughput and
latency percentiles over time), ``summary.csv`` (one row) and ``locust.log`` (+ ``server.log`` when it started the
server). Prints a one-line summary. Exit code: 0 the SLO is met, 1 it is breached, 2 the run itself failed (server
did not become ready, Locust crashed, or its CSV files are missing or empty: case T26).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .plot import plot_history
from .shape_spec import load_shape, parse_duration
from .slo import EXIT_RUN_ERROR, SUMMARY_FIELDS, Thresholds, breaches, read_stats, summary_line, summary_row

# The bearer token travels in the environment (never on the command line, where `ps` would show it); the
# locustfile reads the same variable.
API_KEY_VARIABLE = "SVG_LOADTEST_API_KEY"
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SHAPEFILE = LOCUSTFILE.with_name("shapefile.py")  # the data shape, loaded beside the scenarios
CSV_PREFIX = "locust"
# The files a headless run must leave behind, each with a header and at least one data row (T26).
REQUIRED_CSV = ("stats", "failures", "stats_history")


class RunError(RuntimeError):
    """The load test could not run (not an SLO breach)."""


def wait_ready(url: str, path: str, timeout_s: float, server: subprocess.Popen | None = None,
               api_key: str | None = None) -> float:
    """Poll ``url + path`` until it answers 200 (with ``Authorization: Bearer api_key`` when given); returns the
    seconds waited.

    Raises:
        RunError: the timeout passed, or the server process exited first.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if server is not None and server.poll() is not None:
            raise RunError(f"the server exited with code {server.returncode} before {path} answered 200")
        try:
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            request = urllib.request.Request(url.rstrip("/") + path, headers=headers)
            with urllib.request.urlopen(request, timeout=2.0) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening or not ready yet
        time.sleep(0.25)
    raise RunError(f"{url}{path} did not answer 200 within {timeout_s:.0f} s")


def check_csv_files(out: Path, prefix: str = CSV_PREFIX, required: tuple[str, ...] = REQUIRED_CSV) -> None:
    """Every required Locust CSV exists with a header and >= 1 data row (the failures file may hold only a header
    when nothing failed, so it needs the header alone).

    Raises:
        RunError: a file is missing or empty, naming it.
    """
    for kind in required:
        path = out / f"{prefix}_{kind}.csv"
        if not path.exists():
            raise RunError(f"Locust did not write {path}")
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        min_rows = 1 if kind == "failures" else 2
        if len(rows) < min_rows:
            raise RunError(f"{path} has {len(rows)} lines; expected a header and at least {min_rows - 1} data row(s)")


def locust_command(args: argparse.Namespace, out: Path) -> list[str]:
    """The headless Locust command line for these arguments."""
    return [
        sys.executable, "-m", "locust", "-f", f"{LOCUSTFILE},{SHAPEFILE}", "--headless", "--host", args.url,
        "--shape-name", args.shape, "--shape-users", str(args.users), "--shape-duration", args.duration,
        "--max-steps", str(args.max_steps), "--image-size", str(args.image_size),
        "--slo-max-fail-ratio", str(args.max_fail_ratio), "--slo-max-p99-ms", str(args.max_p99_ms),
        *(["--slo-max-p95-ms", str(args.max_p95_ms)] if args.max_p95_ms is not None else []),
        "--csv", str(out / CSV_PREFIX), "--csv-full-history", "--html", str(out / "report.html"),
        "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "30",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the runner's flags; exits with a message naming the bad flag and value."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--start-server", default=None, metavar="CMD",
                        help="command that starts the server listening at --url; stopped at the end")
    parser.add_argument("--ready-path", default="/ready", help="path polled until 200 before the run")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    parser.add_argument("--duration", default="20s", help="run length, e.g. 20s, 5m")
    parser.add_argument("--users", type=int, default=4, help="peak concurrent users")
    parser.add_argument("--shape", default="steady", help="steady | burst | ramp | path to a shape .json")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--max-steps", type=int, default=25, help="largest step count a request asks for")
    parser.add_argument("--image-size", type=int, default=0,
                        help="side of uploaded test images, pixels (0: the model's image_size from GET /models)")
    parser.add_argument("--max-fail-ratio", type=float, default=0.01, help="SLO: allowed failure ratio, 0..1")
    parser.add_argument("--max-p99-ms", type=float, default=30_000.0, help="SLO: allowed p99 latency, ms")
    parser.add_argument("--max-p95-ms", type=float, default=None, help="SLO: allowed p95 latency, ms (optional)")
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error(f"--users = {args.users} must be >= 1")
    if args.image_size < 0:
        parser.error(f"--image-size = {args.image_size} must be >= 0 (0: the model's own)")
    try:
        args.duration_s = parse_duration(args.duration)
        load_shape(args.shape)
        args.thresholds = Thresholds(args.max_fail_ratio, args.max_p99_ms, args.max_p95_ms)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def run(args: argparse.Namespace) -> int:
    """Run one load test; returns the exit code (see the module docstring)."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.start_server:
            server_log = open(out / "server.log", "wb")
            server = subprocess.Popen(shlex.split(args.start_server), stdout=server_log, stderr=subprocess.STDOUT)
        wait_ready(args.url, args.ready_path, args.ready_timeout, server, api_key=os.environ.get(API_KEY_VARIABLE))
        with open(out / "locust.log", "wb") as log:
            # Generous margin over the run for Locust start-up and the stop timeout.
            code = subprocess.run(locust_command(args, out), stdout=log, stderr=subprocess.STDOUT,
                                  timeout=args.duration_s + 120).returncode
        if code not in (0, 1):
            raise RunError(f"Locust exited with code {code}; see {out / 'locust.log'}")
        check_csv_files(out)
        stats = read_stats(out / f"{CSV_PREFIX}_stats.csv")
    except (RunError, ValueError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"load test failed to run: {exc}\n")
        return EXIT_RUN_ERROR
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    found = breaches(stats, args.thresholds)
    row = summary_row(stats, args.thresholds, args.shape, args.users, args.duration_s)
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerow(row)
    plot_history(out / f"{CSV_PREFIX}_stats_history.csv", out / "timeline.png",
                 title=f"{args.shape}, {args.users} users, {args.duration}")
    sys.stdout.write(summary_line(row, found) + "\n")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m loadtest.run``; returns the exit code."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
