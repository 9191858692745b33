"""Kernel benchmark: our Triton kernels vs PyTorch at SVG-XL shapes, one CSV row per (op, implementation, batch).

Shapes (svg_reference.md §4, SVG-XL): images B in {1, 16, 64, 256}, doubled for classifier-free guidance (rows =
2·B), H = 16 heads, N = 256 tokens, head_dim D = 72, hidden C = 1152.

Rows:
* ``attention``: Triton flash attention vs SDPA's flash / memory-efficient / math back-ends (TFLOP/s, GB/s);
* ``qkln_attention``: per-head QK-LayerNorm + attention, fused in our kernel vs LayerNorm + SDPA, and vs our
  standalone QK-LayerNorm kernel + our attention;
* ``adaln_modulate``, ``gated_residual``, ``qk_layernorm``: GB/s and the fraction of the peak memory bandwidth
  (``--peak-gbps``, default 4800 = H200 HBM3e).

Every speed row carries ``max_abs_diff`` against the fp32 PyTorch reference. On a CPU only a small smoke
configuration runs and every row says ``cpu smoke test: timings not meaningful``.

Usage::

    python -m kernels.bench --out benchmarks/kernels_h200.csv          # GPU
    TRITON_INTERPRET=1 python -m kernels.bench --out /tmp/k.csv        # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import kernels
from kernels.adaln import adaln_modulate_reference, gated_residual_reference
from kernels.attention import attention_reference
from kernels.qk_layernorm import qk_layernorm_reference

log = logging.getLogger(__name__)

CPU_NOTE = "cpu smoke test: timings not meaningful"


@dataclass(frozen=True)
class Shape:
    """Attention geometry; hidden size C = heads · head_dim."""

    heads: int = 16      # SVG-XL
    tokens: int = 256    # 16 × 16 latent
    head_dim: int = 72   # 1152 / 16

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim


SVG_XL = Shape()
CPU_SMOKE = Shape(heads=2, tokens=64, head_dim=72)  # small enough for the Triton interpreter


@dataclass
class Row:
    """One CSV row. ms is the median time of one call; tflops / gbps use the minimal FLOP and byte counts."""

    op: str
    impl: str
    dtype: str
    images: int
    rows: int
    heads: int
    tokens: int
    head_dim: int
    channels: int
    ms: float
    tflops: float
    gbps: float
    bandwidth_fraction: float
    max_abs_diff: float
    device: str
    note: str


def _time_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median milliseconds per call (CUDA: triton.testing.do_bench; CPU: wall clock over ``reps`` calls)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def _sdpa(backend_name: str) -> Callable:
    """SDPA restricted to one back-end (``flash``, ``efficient``, ``math``) through torch.nn.attention."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH}[backend_name]

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _qkv(rows: int, shape: Shape, device: torch.device, dtype: torch.dtype, gen: torch.Generator):
    """q, k, v as the SiT makes them: strided views of one packed (rows, N, 3, H, D) projection."""
    qkv = torch.randn(rows, shape.tokens, 3, shape.heads, shape.head_dim, generator=gen, device=device, dtype=dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (rows, H, N, D)


def _max_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max().item())


def _attention_rows(images: int, shape: Shape, device, dtype, reps: int, note: str) -> list[Row]:
    rows = 2 * images
    gen = torch.Generator(device=device).manual_seed(images)
    q, k, v = _qkv(rows, shape, device, dtype, gen)
    ln_w = 1 + 0.1 * torch.randn(shape.head_dim, generator=gen, device=device)
    ln_b = 0.1 * torch.randn(shape.head_dim, generator=gen, device=device)
    norm = (ln_w, ln_b, 1e-5)
    flops = 4.0 * rows * shape.heads * shape.tokens * shape.tokens * shape.head_dim  # q·kᵀ and p·v, 2 FLOP per MAC
    nbytes = 4.0 * rows * shape.heads * shape.tokens * shape.head_dim * q.element_size()  # read q, k, v; write o
    ref_plain = attention_reference(q.float(), k.float(), v.float())
    ref_norm = attention_reference(q.float(), k.float(), v.float(), norm, norm)

    def sdpa_after_ln(q, k, v):
        d = q.shape[-1]
        return F.scaled_dot_product_attention(F.layer_norm(q, (d,), ln_w.to(q.dtype), ln_b.to(q.dtype), 1e-5),
                                              F.layer_norm(k, (d,), ln_w.to(k.dtype), ln_b.to(k.dtype), 1e-5), v)

    candidates: list[tuple[str, str, Callable, torch.Tensor]] = [
        ("attention", "triton", lambda: kernels.flash_attention(q, k, v), ref_plain),
        ("qkln_attention", "triton_fused", lambda: kernels.flash_attention(q, k, v, q_norm=norm, k_norm=norm),
         ref_norm),
        ("qkln_attention", "torch_ln+sdpa", lambda: sdpa_after_ln(q, k, v), ref_norm),
        ("qkln_attention", "triton_qkln+triton_attention",
         lambda: kernels.flash_attention(kernels.qk_layernorm(q, ln_w, ln_b), kernels.qk_layernorm(k, ln_w, ln_b), v),
         ref_norm),
    ]
    if device.type == "cuda":
        for name in ("flash", "efficient", "math"):
            fn = _sdpa(name)
            candidates.append(("attention", f"sdpa_{name}", lambda fn=fn: fn(q, k, v), ref_plain))
    else:
        candidates.append(("attention", "sdpa_default", lambda: F.scaled_dot_product_attention(q, k, v), ref_plain))

    out_rows = []
    for op, impl, fn, ref in candidates:
        try:
            diff = _max_diff(fn(), ref)
            ms = _time_ms(fn, device, reps)
            row_note = note
        except RuntimeError as exc:  # e.g. an SDPA back-end that refuses this shape/dtype/GPU
            ms, diff, row_note = float("nan"), float("nan"), f"unsupported: {str(exc).splitlines()[0][:120]}"
        out_rows.append(Row(op, impl, str(dtype).removeprefix("torch."), images, rows, shape.heads, shape.tokens,
                            shape.head_dim, 0, ms, flops / ms / 1e9, nbytes / ms / 1e6, float("nan"), diff,
                            str(device), row_note))
    return out_rows


def _memory_bound_rows(images: int, shape: Shape, device, dtype, reps: int, peak_gbps: float, note: str) -> list[Row]:
    rows = 2 * images
    gen = torch.Generator(device=device).manual_seed(1000 + images)
    x = torch.randn(rows, shape.tokens, shape.hidden, generator=gen, device=device, dtype=dtype)
    y = torch.randn(rows, shape.tokens, shape.hidden, generator=gen, device=device, dtype=dtype)
    shift, scale, gate = (0.5 * torch.randn(rows, shape.hidden, generator=gen, device=device, dtype=dtype)
                          for _ in range(3))
    heads_view = x.view(rows, shape.tokens, shape.heads, shape.head_dim).transpose(1, 2)  # (rows, H, N, D)
    ln_w = torch.ones(shape.head_dim, device=device)
    ln_b = torch.zeros(shape.head_dim, device=device)
    elem = x.element_size()
    bnc = rows * shape.tokens * shape.hidden

    def eager_modulate():
        return F.layer_norm(x, (shape.hidden,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]

    cases = [
        ("adaln_modulate", "triton", lambda: kernels.adaln_modulate(x, shift, scale),
         adaln_modulate_reference(x, shift, scale), (2 * bnc + 2 * rows * shape.hidden) * elem),
        ("adaln_modulate", "torch_eager", eager_modulate,
         adaln_modulate_reference(x, shift, scale), (2 * bnc + 2 * rows * shape.hidden) * elem),
        ("gated_residual", "triton", lambda: kernels.gated_residual(x, gate, y),
         gated_residual_reference(x, gate, y), (3 * bnc + rows * shape.hidden) * elem),
        ("gated_residual", "torch_eager", lambda: x + gate[:, None] * y,
         gated_residual_reference(x, gate, y), (3 * bnc + rows * shape.hidden) * elem),
        ("qk_layernorm", "triton", lambda: kernels.qk_layernorm(heads_view, ln_w, ln_b),
         qk_layernorm_reference(heads_view, ln_w, ln_b), 2 * bnc * elem),
        ("qk_layernorm", "torch_eager",
         lambda: F.layer_norm(heads_view, (shape.head_dim,), ln_w.to(dtype), ln_b.to(dtype), 1e-5),
         qk_layernorm_reference(heads_view, ln_w, ln_b), 2 * bnc * elem),
    ]
    out_rows = []
    for op, impl, fn, ref, nbytes in cases:
        diff = _max_diff(fn(), ref)
        ms = _time_ms(fn, device, reps)
        gbps = nbytes / ms / 1e6
        out_rows.append(Row(op, impl, str(dtype).removeprefix("torch."), images, rows, shape.heads, shape.tokens,
                            shape.head_dim, shape.hidden, ms, float("nan"), gbps, gbps / peak_gbps, diff,
                            str(device), note))
    return out_rows


def run(device: torch.device, dtype: torch.dtype, batches: list[int], peak_gbps: float, reps: int,
        shape: Shape = SVG_XL) -> list[Row]:
    """All rows for ``batches`` (image counts) on ``device``. CPU: rows carry :data:`CPU_NOTE`."""
    note = "" if device.type == "cuda" else CPU_NOTE
    rows: list[Row] = []
    for images in batches:
        log.info("kernel bench: %d images (%d rows with CFG)", images, 2 * images)
        rows += _attention_rows(images, shape, device, dtype, reps, note)
        rows += _memory_bound_rows(images, shape, device, dtype, reps, peak_gbps, note)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def write_csv(rows: list[Row], path: Path) -> None:
    """Write ``rows`` to ``path`` (parent folders created), header = :class:`Row` field names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v)
                             for k, v in asdict(row).items()})


def _positive(kind: type) -> Callable[[str], float]:
    """``type=`` callable for argparse: a number of ``kind`` > 0, else one parser error line naming the value.

    (kernels imports nothing from svg, so this mirrors the shape of ``svg.cli.int_type``/``float_type``.)
    """
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'} > 0") \
                from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: > 0")
        return value
    return parse


def main(argv: Optional[list[str]] = None) -> None:
    """CLI entry point; see the module docstring. Bad arguments exit 2 with one line naming the option."""
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/kernels_bench.csv"), help="CSV path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="input dtype")
    parser.add_argument("--batches", type=_positive(int), nargs="+", default=None,
                        help="image counts (rows = 2x for CFG); default 1 16 64 256 on GPU, 1 on CPU")
    parser.add_argument("--peak-gbps", type=_positive(float), default=4800.0,
                        help="memory bandwidth peak, GB/s (H200: 4800)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but torch.cuda.is_available() is False")
    batches = args.batches or ([1, 16, 64, 256] if device.type == "cuda" else [1])
    if any(b < 1 for b in batches):
        parser.error(f"--batches must be >= 1; got {batches}")
    reps = 1 if device.type == "cpu" else 0
    shape = SVG_XL if device.type == "cuda" else CPU_SMOKE
    rows = run(device, getattr(torch, args.dtype), batches, args.peak_gbps, reps, shape)
    write_csv(rows, args.out)
    log.info("kernel bench: wrote %d rows to %s (backend: %s)", len(rows), args.out, kernels.backend_name(device))


if __name__ == "__main__":
    main()
