"""Cost of progress streaming: the same requests with and without ``Accept: text/event-stream``.

    python scripts/bench_sse.py          # demo model on CPU -> benchmarks/sse_cpu.csv

Starts a server on loopback (``--max-rows 2``: one guided image per step, no padding cost), then sends ``--rounds``
pairs of identical ``/generate`` requests (25 guided steps, seed fixed), alternating plain JSON and SSE so that
machine noise hits both alike, and writes the mean and median latency of each mode and their ratio.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.net import free_port, wait_http  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default=str(REPO / "models" / "demo"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "sse_cpu.csv")
    args = ap.parse_args(argv)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server", "--model-dir", args.model_dir, "--device", "cpu",
                             "--port", str(port), "--max-rows", "2", "--batch-wait-s", "0", "--log-level", "warning"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {"json": [], "sse": []}
    events = 0
    try:
        wait_http(url + "/ready", 180, proc)
        body = {"class_id": 3, "steps": args.steps, "cfg": 4.0, "seed": 1}
        with httpx.Client(base_url=url, timeout=300) as c:
            c.post("/generate", json=body)  # warm-up
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                assert c.post("/generate", json=body).status_code == 200
                times["json"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with c.stream("POST", "/generate", json=body, headers={"Accept": "text/event-stream"}) as r:
                    events += sum(1 for line in r.iter_lines() if line.startswith("event:"))
                times["sse"].append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()
    row = {"date": date.today().isoformat(), "model": Path(args.model_dir).name, "device": "cpu", "steps": args.steps,
           "rounds": args.rounds, "events_per_request": events / args.rounds,
           "json_mean_s": round(statistics.mean(times["json"]), 4),
           "sse_mean_s": round(statistics.mean(times["sse"]), 4),
           "json_p50_s": round(statistics.median(times["json"]), 4),
           "sse_p50_s": round(statistics.median(times["sse"]), 4),
           "sse_overhead_pct": round(100 * (statistics.mean(times["sse"]) / statistics.mean(times["json"]) - 1), 2)}
    new = not args.out.exists()
    with open(args.out, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(row)


if __name__ == "__main__":
    main()
