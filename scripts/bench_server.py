"""Server benchmark (issue 10): low-load latency, batching gain, engines, achieved FLOP/s. Writes CSV.

Starts real servers (``python -m server``, DEFAULT configuration apart from the flags named in each row) on
loopback and drives them with closed-loop HTTP clients (each client sends its next request when the previous one
returns). Rows (``scenario`` column):

* ``single``: one client, p50 latency of one ``/generate`` on the default server and on a ``--max-rows 2`` server
  (the least batching a guided request can run with). Goal: default <= 1.3x the ``--max-rows 2`` latency, i.e.
  batch invariance costs (almost) nothing at low load.
* ``batching``: images/s at ``--concurrency`` clients with batching on (default) and off
  (``--max-requests-per-step 1``). Goal: on >= 2x off.
* ``compile``: the ``batching on`` measurement again with ``--engine compile`` (with ``--engines eager compile``).

``model_tflops_per_s`` is the SiT FLOP/s achieved during the measurement (forward rows from ``svg_step_rows_sum``
times the model's FLOPs per row) and ``gemm_fraction`` that over a large fp32 GEMM (4096^3) measured in this run on
the same machine: an MFU that means something on a CPU.

    python scripts/bench_server.py --model-dir models/demo --out benchmarks/server_demo_cpu.csv
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
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _start(model_dir: Path, device: str, flags: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    args = [sys.executable, "-m", "server", "--model-dir", str(model_dir), "--device", device, "--port", str(port),
            "--max-queue", "1000", "--log-level", "warning", *flags]
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


def _flops_per_row(model_dir: Path) -> float:
    import json

    from safetensors import safe_open

    from server.metrics import preset_flops_per_row

    with safe_open(str(model_dir / "sit.safetensors"), "pt") as f:
        c = json.loads(f.metadata()["config"])
    return preset_flops_per_row(c["hidden_size"], c["depth"], c["input_size"] ** 2, c["in_channels"])


def _gemm_flops_per_s(n: int = 4096) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    return 2 * n**3 * 3 / (time.perf_counter() - start)


def _measure(url: str, concurrency: int, requests: int, body: dict, flops_per_row: float) -> dict:
    before = httpx.get(url + "/metrics").text
    t0 = time.perf_counter()
    res = _run_level(url, concurrency, requests, body)
    wall = time.perf_counter() - t0
    rows = _metric(httpx.get(url + "/metrics").text, "svg_step_rows_sum") - _metric(before, "svg_step_rows_sum")
    res["model_tflops_per_s"] = round(rows * flops_per_row / wall / 1e12, 6)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--single-requests", type=int, default=5)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--engines", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "server_demo_cpu.csv")
    args = p.parse_args(argv)
    body = {"class_id": 3, "steps": args.steps, "cfg": args.cfg, "seed": 0}
    flops_per_row = _flops_per_row(args.model_dir)
    gemm = _gemm_flops_per_s()
    configs = [("single", "default", [], 1, args.single_requests),
               ("single", "--max-rows 2", ["--max-rows", "2"], 1, args.single_requests),
               ("batching", "on", [], args.concurrency, args.concurrency * args.requests_per_client),
               ("batching", "off", ["--max-requests-per-step", "1"], args.concurrency,
                args.concurrency * args.requests_per_client)]
    if "compile" in args.engines:
        configs.append(("compile", "on, --engine compile", ["--engine", "compile"], args.concurrency,
                        args.concurrency * args.requests_per_client))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scenario, label, flags, conc, requests in configs:
            proc, url = _start(args.model_dir, args.device, flags, Path(tmp) / "server.log")
            try:
                _run_level(url, 2, 2, body)  # warm caches
                res = _measure(url, conc, requests, body, flops_per_row)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            rows.append({"scenario": scenario, "server": label, "concurrency": conc, **res,
                         "gemm_fp32_tflops_per_s": round(gemm / 1e12, 4),
                         "gemm_fraction": round(res["model_tflops_per_s"] * 1e12 / gemm, 5),
                         "steps": args.steps, "cfg": args.cfg, "model": str(args.model_dir), "device": args.device,
                         "date": time.strftime("%Y-%m-%d", time.gmtime()),
                         "note": "shared 2-core CPU with other jobs running: absolute numbers are noisy"})
            sys.stderr.write(f"{rows[-1]}\n")
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
