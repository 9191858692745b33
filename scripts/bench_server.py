"""Server benchmark: images/s and p50/p95/p99 latency at several concurrencies, batching on vs off. Writes CSV.

Starts a real server (``python -m server``) per batching mode on loopback and drives it with closed-loop HTTP
clients (each client sends its next request when the previous one returns). "Batching off" is
``--max-requests-per-step 1`` (one request per DiT step, so requests queue FIFO); "on" lets up to ``max_rows`` rows
from any requests share a step. Both run with ``--no-batch-invariant`` so neither pays for fixed-size padding:
the comparison is of scheduling only.

    python scripts/bench_server.py                               # tiny random model, CPU -> benchmarks/server_cpu.csv
    python scripts/bench_server.py --model-dir models/demo --device cuda --out benchmarks/server_gpu.csv

Columns: batching, concurrency, requests, errors, images_per_s, p50_s, p95_s, p99_s, mean_rows_per_step, steps,
cfg, max_rows, model, device. Quality column: ``errors`` (non-200 answers); outputs are bit-identical across modes
by construction (tests/server/test_http.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _start(model_dir: Path, device: str, max_rows: int, per_step: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    args = [sys.executable, "-m", "server", "--model-dir", str(model_dir), "--device", device, "--port", str(port),
            "--max-rows", str(max_rows), "--max-queue", "1000", "--batch-wait-s", "0.002",
            "--max-requests-per-step", str(per_step), "--no-batch-invariant", "--log-level", "warning"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server not ready after 600 s")


def _run_level(url: str, concurrency: int, requests: int, body: dict) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    todo = iter(range(requests))

    def client():
        nonlocal errors
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                t0 = time.perf_counter()
                r = c.post("/generate", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    else:
                        errors += 1

    before = httpx.get(url + "/metrics").text
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = httpx.get(url + "/metrics").text
    steps = _metric(after, "svg_step_rows_count") - _metric(before, "svg_step_rows_count")
    rows = _metric(after, "svg_step_rows_sum") - _metric(before, "svg_step_rows_sum")
    lat = np.asarray(latencies) if latencies else np.asarray([float("nan")])
    return {"requests": requests, "errors": errors, "images_per_s": round(len(latencies) / wall, 3),
            "p50_s": round(float(np.percentile(lat, 50)), 4), "p95_s": round(float(np.percentile(lat, 95)), 4),
            "p99_s": round(float(np.percentile(lat, 99)), 4),
            "mean_rows_per_step": round(rows / steps, 2) if steps else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="checkpoint dir (default: a tiny random one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--max-rows", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "server_cpu.csv")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = Path(tmp) / "tiny-random"
            subprocess.run([sys.executable, "-m", "svg.pipeline", "make-random", "--preset", "tiny", str(model_dir)],
                           cwd=REPO, check=True, capture_output=True)
        body = {"class_id": 3, "steps": args.steps, "cfg": args.cfg, "seed": 0}
        rows = []
        # Both servers run side by side and the modes alternate per level, so a change in machine load during the
        # run (shared CI hosts) hits both modes alike.
        servers = {mode: _start(model_dir, args.device, args.max_rows, per_step, Path(tmp) / f"server-{mode}.log")
                   for mode, per_step in (("on", 0), ("off", 1))}
        try:
            for _, url in servers.values():
                _run_level(url, 2, 2, body)  # warm caches
            for conc in args.concurrency:
                for mode, (_, url) in servers.items():
                    res = _run_level(url, conc, conc * args.requests_per_client, body)
                    rows.append({"batching": mode, "concurrency": conc, **res, "steps": args.steps, "cfg": args.cfg,
                                 "max_rows": args.max_rows, "model": "tiny-random" if args.model_dir is None
                                 else str(args.model_dir), "device": args.device})
                    sys.stderr.write(f"{rows[-1]}\n")
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
