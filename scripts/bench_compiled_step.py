"""The served sampling step, compiled, on random weights: batch-1 latency, throughput, MFU, batch invariance.

Runs the exact path of the server's worker without HTTP: ``engines.create("compile", SiT)`` (CUDA graphs on CUDA)
-> ``engine.stepper(SlotBatch)`` -> 25 guided Euler steps per image. Writes one CSV row per measurement:

* ``batch1_p50_ms``: p50 over repeats of one image, 25 steps, guidance 4 (2 forward rows per step); goal <= 100 ms
  for SVG-XL on an H200.
* ``images_per_s`` and ``mfu`` at ``--images`` images in flight (64 guided images = 128 forward rows); MFU is the
  model FLOP/s over the GPU's dense peak (``--peak-tflops``; H200 bf16 989) and over a large GEMM of the same
  dtype measured in this run (``gemm_fraction``). Goal for SVG-XL: >= 42 images/s, >= 50 % MFU.
* ``batch_invariant``: 1 when one image's final latent is bit-identical alone (bucket 2) and in the full batch
  (another slot, the largest bucket), else the max abs difference (what cuBLAS's M-dependent kernels cost).

    python scripts/bench_compiled_step.py --preset SVG-XL --dtype bfloat16 --out benchmarks/gpu/compiled_step.csv
    python scripts/bench_compiled_step.py --preset tiny --device cpu --images 4 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engines  # noqa: E402
from svg.config import SIT_PRESETS  # noqa: E402
from svg.sampling import Guidance, GuidanceMode, RowPlan, initial_noise, time_grid  # noqa: E402
from svg.sit import SiT  # noqa: E402
from svg.slots import SlotBatch  # noqa: E402


def forward_flops(config, rows: int = 1) -> float:
    """Multiply-add FLOPs (x2) of one SiT forward row: linear layers on T tokens plus attention (QK^T and AV)."""
    h, t, d = config.hidden_size, config.num_tokens, config.depth
    mlp = int(h * config.mlp_ratio)
    per_block = 2 * t * (h * 3 * h + h * h + 2 * h * mlp) + 2 * 2 * t * t * h
    io = 2 * t * (config.in_channels * h + h * config.out_channels)
    return rows * (d * per_block + io)


def gemm_flops_per_s(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_images(stepper, slots: SlotBatch, plans, order, device) -> tuple[float, list[torch.Tensor]]:
    for slot, plan in zip(order, plans):
        slots.admit(slot, plan)
    active = list(order)
    _sync(device)
    start = time.perf_counter()
    while active:
        stepper(slots.layout(active))
        done = slots.advance(active)
        active = [s for s in active if s not in done]
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, [slots.retire(s).clone() for s in order]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="SVG-XL")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 (CUDA default) or float32")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.4)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "compiled_step.csv")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    config = SIT_PRESETS[args.preset]
    torch.manual_seed(0)
    sit = SiT(config).eval()
    with torch.no_grad():  # adaLN-Zero init makes every velocity 0: random weights instead
        for param in sit.parameters():
            if not param.any():
                param.normal_(0.0, 0.02)
    max_rows = 2 * args.images
    start = time.perf_counter()
    engine = engines.create("compile", sit, device=device, dtype=args.dtype, max_rows=max_rows, warmup=False,
                            preset=args.preset)
    slots = SlotBatch(args.images, config.num_tokens, config.in_channels, max_evals=2 * args.steps,
                      num_classes=config.num_classes, device=device)
    stepper = engine.stepper(slots)
    engine.warmup_step(stepper, [2, max_rows])  # only the shapes this run uses: 1 guided image, the full batch
    build_s = time.perf_counter() - start
    grid, guidance = time_grid(args.steps, 0.15), Guidance(GuidanceMode.CONSTANT, args.cfg)

    def plans(n):
        return [RowPlan(initial_noise(0, i, (config.num_tokens, config.in_channels)).to(device), i % 1000, grid,
                        guidance, num_classes=config.num_classes) for i in range(n)]

    one = [run_images(stepper, slots, plans(1), [0], device) for _ in range(args.repeats + 1)][1:]
    p50 = statistics.median(s for s, _ in one)
    full_s, latents = min((run_images(stepper, slots, plans(args.images), list(range(args.images))[::-1], device)
                           for _ in range(max(1, args.repeats // 2))), key=lambda r: r[0])
    alone = one[0][1][0]
    batched = latents[-1]  # image 0 ran in slot images-1 of the full batch
    invariant = "1" if torch.equal(alone, batched) else f"{(alone - batched).abs().max().item():.3e}"
    flops = forward_flops(config, 2 * args.images * args.steps)
    achieved = flops / full_s
    dtype = engine.dtype
    gemm = gemm_flops_per_s(device, dtype)
    row = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "preset": args.preset, "dtype": str(dtype).replace("torch.", ""), "engine": "compile",
           "cuda_graphs": engine.cuda_graphs, "steps": args.steps, "cfg": args.cfg,
           "build_and_warmup_s": round(build_s, 1), "batch1_p50_ms": round(p50 * 1e3, 2),
           "images": args.images, "images_per_s": round(args.images / full_s, 2),
           "model_tflops_per_s": round(achieved / 1e12, 3),
           "mfu": round(achieved / (args.peak_tflops * 1e12), 4) if device.type == "cuda" else "",
           "gemm_tflops_per_s": round(gemm / 1e12, 3), "gemm_fraction": round(achieved / gemm, 4),
           "batch_invariant": invariant}
    sys.stderr.write(f"{row}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with open(args.out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
