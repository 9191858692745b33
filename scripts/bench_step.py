"""Host cost of one sampling step: aten ops and wall time per step at 1, 16 and 64 images, against a minimal loop.

With a near-free model (``v = x``) the step's own work is all that is measured. Two loops, in one run:

* ``slot_step``: what the server's worker does per step: ``SlotBatch.layout`` (host), :func:`svg.slots.step`
  (gather, forward over the rows and their twins, guidance mix, Euler/Heun update, edit re-impose, write-back) and
  ``SlotBatch.advance``;
* ``minimal``: one forward over ``[x; x]``, the guidance mix and ``x += dt·v``: the least a guided Euler step needs.

Every image is guided (cfg 4, constant), so R = 2·images forward rows. ``aten_ops_per_step`` counts top-level
``aten::`` calls under the torch profiler (CPU). Goals (issue 10): the same op count at 1 and 64 images; wall time
<= 1.3x the minimal loop. Use ``--compile`` to add the inductor-compiled step (slow to build on a shared CPU).

    python scripts/bench_step.py                       # -> benchmarks/step_cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svg.sampling import Guidance, GuidanceMode, RowPlan, initial_noise, time_grid  # noqa: E402
from svg.slots import SlotBatch, step  # noqa: E402

T, C, STEPS = 256, 32, 25


def free_model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x


def slot_loop(images: int, compiled: bool):
    slots = SlotBatch(images, T, C, max_evals=STEPS)
    grid = time_grid(STEPS, 0.15)
    fn = (torch.compile(lambda layout: step(free_model, slots, layout), fullgraph=True, dynamic=False)
          if compiled else (lambda layout: step(free_model, slots, layout)))
    state = {}

    def reset():
        for s in slots.occupied():
            slots.retire(s)
        for s in range(images):
            slots.admit(s, RowPlan(initial_noise(0, s, (T, C)), 1, grid, Guidance(GuidanceMode.CONSTANT, 4.0)))
        state["active"] = list(range(images))

    def one_step():
        active = state["active"]
        fn(slots.layout(active))
        slots.advance(active)

    return reset, one_step


def minimal_loop(images: int):
    x = torch.stack([initial_noise(0, s, (T, C)) for s in range(images)])
    y = torch.ones(images, dtype=torch.int64)
    null = torch.full((images,), 1000, dtype=torch.int64)
    dt = time_grid(STEPS, 0.15).diff()
    state = {}

    def reset():
        state["x"], state["i"] = x.clone(), 0

    def one_step():
        z, i = state["x"], state["i"]
        t = torch.full((images,), float(i) / STEPS)
        out = free_model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null]))
        v_c, v_u = out[:images], out[images:]
        z += dt[i] * (v_u + 4.0 * (v_c - v_u))
        state["i"] = i + 1

    return reset, one_step


def measure(reset, one_step, steps: int = STEPS, repeats: int = 5) -> tuple[float, float]:
    reset()
    for _ in range(3):
        one_step()  # warm-up (and compilation)
    reset()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            one_step()
    ops = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None) / 10
    best = float("inf")
    for _ in range(repeats):
        reset()
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        best = min(best, (time.perf_counter() - start) / steps)
    return ops, best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--compile", action="store_true", help="also measure the inductor-compiled step")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "step_cpu.csv")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = []
    loops = ["minimal", "slot_step"] + (["slot_step_compiled"] if args.compile else [])
    for images in args.images:
        result = {}
        for name in loops:
            reset, one = minimal_loop(images) if name == "minimal" else slot_loop(images, name.endswith("compiled"))
            result[name] = measure(reset, one)
        for name in loops:
            ops, wall = result[name]
            rows.append({"loop": name, "images": images, "forward_rows": 2 * images, "aten_ops_per_step": ops,
                         "wall_ms_per_step": round(wall * 1e3, 4),
                         "wall_vs_minimal": round(wall / result["minimal"][1], 3),
                         "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                         "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                         "note": "shared CPU (other jobs running); near-free model v = x"})
            sys.stderr.write(f"{rows[-1]}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
