"""The optimisation ladder as CSV rows: reference loop → eager fp32 → bf16 → compile → + Triton kernels → + CUDA
graphs → TensorRT, each row with its quality column (max abs difference against eager fp32).

Usage::

    python -m engines.bench --preset tiny --batches 1,4 --steps 25 --out benchmarks/engines_cpu.csv
    python -m engines.bench --gpu            # SVG-XL, batches 1,16,64,256 on CUDA -> benchmarks/engines_gpu.csv

What is timed: one full guided sampling run of ``batch`` images (``steps`` Euler steps, constant guidance, the
conditional row and its unconditional twin batched in one forward, via ``svg.sampling.sample``), plus the decoder
when ``--decode`` is given. ``latency_*_ms`` is the wall time of that run, i.e. the latency every image of the batch
sees; ``images_per_s`` = batch / mean run time. Weights are random (seeded), which is enough for speed and for the
engine-vs-eager difference; the class-accuracy check uses the trained demo model (docs/engines.md).

The ``reference-loop`` row is the peer baseline: the reference implementation's sampler as svg_reference.md §5
describes it (two separate fp32 forwards per step, conditional then null label, ``v = v_u + w·(v_c − v_u)``,
Euler), written here with our SiT.

MFU = images/s × FLOP per image / peak. FLOP per image: 11.86 TFLOP for SVG-XL at 25 guided steps (issue 6;
scaled linearly with steps), otherwise counted with ``torch.utils.flop_counter`` over one forward × rows per image.
Peak: 989.4 TFLOPS dense BF16 for H100/H200 (serving.md §6); blank on other devices.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import logging
import resource
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from engines import example_inputs
from engines.base import EagerEngine, EngineError
from engines.precision import default_dtype
from engines.quality import max_abs_diff, velocity_max_abs_diff

log = logging.getLogger("engines.bench")

RUNGS = ("reference-loop", "eager-fp32", "eager-bf16", "compile", "compile+triton", "compile+cudagraphs", "tensorrt")
SVG_XL_TFLOP_PER_IMAGE = 11.86  # 25 Euler steps with guidance, transformer only (issue 6, serving.md §6)
BF16_PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12}  # dense BF16
# every released SVG-{B,L,XL,XXL} SiT runs on the one SVG autoencoder latent (paper §4)
AE_FOR_SIT = {"tiny": "tiny", "demo": "demo", **{f"SVG-{size}": "svg-ae" for size in ("B", "L", "XL", "XXL")}}


@dataclass
class Row:
    date: str
    device: str
    preset: str
    rung: str
    dtype: str
    batch: int
    steps: int
    guidance_scale: float
    decode: bool
    images_per_s: float | str
    latency_p50_ms: float | str
    latency_p99_ms: float | str
    peak_mem_mib: float | str
    compile_s: float | str
    latent_max_abs_diff: float | str
    velocity_max_abs_diff: float | str
    tflop_per_image: float | str
    mfu: float | str
    note: str


class Skip(Exception):
    """A rung that cannot run on this machine (the reason goes in the ``note`` column)."""


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def build_sit(preset: str, seed: int, device: torch.device):
    """An fp32 SiT of ``preset`` with seeded random weights (std 0.02; the adaLN-Zero init would output 0)."""
    from svg.config import sit_preset
    from svg.sit import SiT

    torch.manual_seed(seed)
    model = SiT(sit_preset(preset))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.02)
    return model.eval().to(device)


def build_decoder(preset: str, seed: int, device: torch.device):
    """An fp32 ``svg.decoder.Decoder`` for the autoencoder preset paired with the SiT ``preset``."""
    from svg.config import ae_preset
    from svg.decoder import Decoder

    torch.manual_seed(seed + 1)
    return Decoder(ae_preset(AE_FOR_SIT.get(preset, preset)).decoder).eval().to(device)


def reference_loop(model, noise, y, grid, scale: float, null: int):
    """The reference sampler: per step one conditional and one unconditional fp32 forward, then Euler."""
    z = noise.clone()
    y_null = torch.full_like(y, null)
    channels = z.shape[-1]
    with torch.no_grad():
        for i in range(len(grid) - 1):
            t = grid[i].expand(z.shape[0]).to(z.device)
            v_c = model(z, t, y)[..., :channels]
            v_u = model(z, t, y_null)[..., :channels]
            z = z + (grid[i + 1] - grid[i]) * (v_u + scale * (v_c - v_u))
    return z


def flop_per_image(preset: str, model, steps: int, guided: bool, device: torch.device) -> float:
    """FLOP of the transformer per generated image (see module docstring)."""
    if preset == "SVG-XL" and guided:
        return SVG_XL_TFLOP_PER_IMAGE * 1e12 * steps / 25
    from torch.utils.flop_counter import FlopCounterMode

    config = model.config
    x = torch.zeros(1, config.num_tokens, config.in_channels, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.zeros(1, device=device), torch.zeros(1, dtype=torch.int64, device=device))
    return counter.get_total_flops() * steps * (2 if guided else 1)


@contextlib.contextmanager
def _attention_backend(name: str):
    from svg import attention

    previous = attention.get_attention_backend()
    attention.set_attention_backend(name)
    try:
        yield
    finally:
        attention.set_attention_backend(previous)


def make_engines(rung: str, sit, decoder, device: torch.device, rows: list[int], images: list[int]):
    """``(sit_engine, decoder_engine_or_None, attention_backend)`` for a rung; fresh module copies each time.

    Raises:
        Skip: the rung needs CUDA or TensorRT and this machine lacks it.
    """
    cuda = device.type == "cuda"
    dec = copy.deepcopy(decoder) if decoder is not None else None
    if rung in ("reference-loop", "eager-fp32"):
        return (EagerEngine(copy.deepcopy(sit), device=device, dtype=torch.float32),
                dec and _eager_decoder(dec, device, torch.float32), "sdpa")
    if rung == "eager-bf16":
        return (EagerEngine(copy.deepcopy(sit), device=device, dtype=torch.bfloat16),
                dec and _eager_decoder(dec, device, torch.bfloat16), "sdpa")
    if rung in ("compile+triton", "compile+cudagraphs") and not cuda:
        raise Skip("needs CUDA (Triton kernels run on CPU only in the interpreter; CUDA graphs need a GPU)")
    if rung == "tensorrt":
        from engines.tensorrt import import_tensorrt

        try:
            import_tensorrt()
        except EngineError as exc:
            raise Skip("TensorRT is not installed on this machine") from exc
        if not cuda:
            raise Skip("needs CUDA")
        from engines.tensorrt import TensorRTEngine

        engine = TensorRTEngine(copy.deepcopy(sit), device=device, dtype=torch.float16, max_rows=max(rows),
                                preset="bench").build()
        return engine, None, "sdpa"
    from engines.compiled import CompiledDecoderEngine, CompiledEngine

    graphs = rung == "compile+cudagraphs"
    mode = "reduce-overhead" if graphs else "default"
    backend = "sdpa" if rung == "compile" else "triton"
    dtype = default_dtype(device)
    sit_engine = CompiledEngine(copy.deepcopy(sit), device=device, dtype=dtype, buckets=rows, cuda_graphs=graphs,
                                mode=mode).build()
    dec_engine = None
    if dec is not None:
        dec_engine = CompiledDecoderEngine(dec, device=device, dtype=dtype, buckets=images, cuda_graphs=graphs,
                                           mode=mode).build()
    return sit_engine, dec_engine, backend


def _eager_decoder(decoder, device, dtype):
    from engines.base import DecoderEngine

    return DecoderEngine(decoder, device=device, dtype=dtype)


def _tokens_to_latent(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T, C)`` row-major tokens -> ``(B, C, h, w)`` (ARCHITECTURE.md latent layout)."""
    b, t, c = tokens.shape
    side = int(round(t ** 0.5))
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def run_ladder(preset: str, batches: list[int], steps: int, scale: float, shift: float, repeats: int,
               device: torch.device, rungs: list[str], decode: bool, seed: int = 0, sink=None) -> list[Row]:
    """Run every rung at every batch size; returns the CSV rows (skipped rungs carry their reason).

    ``sink(rows)``, when given, receives each rung's rows as soon as they exist, so a run cut short by a time
    limit (the GPU check script) still leaves its finished rungs on disk.
    """
    from svg.sampling import Guidance, sample, time_grid

    sit = build_sit(preset, seed, device)
    decoder = build_decoder(preset, seed, device) if decode else None
    config = sit.config
    rows_needed = sorted({2 * b for b in batches})
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    device_name = _device_name(device)
    peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in device_name), None)
    flop = flop_per_image(preset, sit, steps, scale != 1.0, device)
    guidance = Guidance(mode="constant", scale=scale) if scale != 1.0 else Guidance()
    grid = time_grid(steps, shift).to(device)
    noise = {b: torch.randn(b, config.num_tokens, config.in_channels,
                            generator=torch.Generator().manual_seed(seed + b)).to(device) for b in batches}
    labels = {b: (torch.arange(b) % config.num_classes).to(device) for b in batches}
    baseline: dict[int, torch.Tensor] = {}
    out: list[Row] = []
    for rung in rungs:
        base = dict(date=date, device=device_name, preset=preset, rung=rung, steps=steps, guidance_scale=scale,
                    decode=decode)
        try:
            sit_engine, dec_engine, backend = make_engines(rung, sit, decoder, device, rows_needed, batches)
        except Skip as exc:
            log.info("%s: skipped (%s)", rung, exc)
            out += [Row(**base, dtype="", batch=b, images_per_s="", latency_p50_ms="", latency_p99_ms="",
                        peak_mem_mib="", compile_s="", latent_max_abs_diff="", velocity_max_abs_diff="",
                        tflop_per_image=f"{flop / 1e12:.4g}", mfu="", note=f"skipped: {exc}") for b in batches]
            if sink is not None:
                sink(out[-len(batches):])
            continue
        with _attention_backend(backend):
            if hasattr(sit_engine, "buckets"):  # compile every bucket now: compile time is reported apart
                sit_engine.warmup(rows_needed, example=example_inputs(sit, "sit", device=device))
                if dec_engine is not None:
                    dec_engine.warmup(batches, example=(torch.zeros(1, config.in_channels, config.input_size,
                                                                    config.input_size, device=device),))
            compile_s = sit_engine.compile_seconds + (dec_engine.compile_seconds if dec_engine is not None else 0.0)
            vel_diff = velocity_max_abs_diff(sit_engine, sit, rows=min(4, max(rows_needed)))

            def generate(b: int) -> torch.Tensor:
                if rung == "reference-loop":
                    z = reference_loop(sit_engine, noise[b], labels[b], grid, scale, config.num_classes)
                else:
                    z = sample(sit_engine, noise[b], labels[b], steps=steps, guidance=guidance, shift=shift,
                               num_classes=config.num_classes).latents
                if dec_engine is not None:
                    dec_engine(_tokens_to_latent(z))
                return z

            for b in batches:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                latents = generate(b)  # untimed first run (allocator, caches)
                _sync(device)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    generate(b)
                    _sync(device)
                    times.append(time.perf_counter() - start)
                if rung == "eager-fp32":
                    baseline[b] = latents
                ips = b / float(np.mean(times))
                out.append(Row(
                    **base, dtype=str(getattr(sit_engine, "dtype", "")).removeprefix("torch."), batch=b,
                    images_per_s=round(ips, 3),
                    latency_p50_ms=round(float(np.percentile(times, 50)) * 1e3, 2),
                    latency_p99_ms=round(float(np.percentile(times, 99)) * 1e3, 2),
                    peak_mem_mib=round(_peak_mib(device), 1),
                    compile_s=round(compile_s, 2),
                    latent_max_abs_diff=(f"{max_abs_diff(latents, baseline[b]):.3g}" if b in baseline else ""),
                    velocity_max_abs_diff=f"{vel_diff:.3g}",
                    tflop_per_image=f"{flop / 1e12:.4g}",
                    mfu=round(ips * flop / peak, 4) if peak else "",
                    note=f"attention={backend}" + ("" if device.type == "cuda"
                                                   else f" threads={torch.get_num_threads()}"),
                ))
                log.info("%s", out[-1])
        sit_engine.close()
        if sink is not None:
            sink(out[-len(batches):])
    return out


def write_csv(rows: list[Row], path: Path, append: bool) -> None:
    """Write (or append) rows with a header line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = append and path.exists() and path.stat().st_size > 0
    with path.open("a" if append else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(Row)])
        if not exists:
            writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m engines.bench [--gpu] [--preset P] [--batches 1,4] ...``; bad arguments exit 2 with one line."""
    from svg.cli import choice_list_type, float_type, int_list_type, int_type
    from svg.config import SIT_PRESETS
    from svg.sampling import MAX_GUIDANCE_SCALE, MAX_STEPS

    parser = argparse.ArgumentParser(prog="python -m engines.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPU check: SVG-XL, batches 1,16,64,256 on CUDA")
    parser.add_argument("--preset", default=None, choices=sorted(SIT_PRESETS),
                        help="SiT preset (default tiny; SVG-XL with --gpu)")
    parser.add_argument("--batches", type=int_list_type(1, 4096), default=None,
                        help="comma-separated images per batch, each in [1, 4096] (default 1,4)")
    parser.add_argument("--steps", type=int_type(1, MAX_STEPS), default=25, help=f"Euler steps in [1, {MAX_STEPS}]")
    parser.add_argument("--guidance-scale", type=float_type(0.0, MAX_GUIDANCE_SCALE), default=4.0)
    parser.add_argument("--shift", type=float_type(), default=0.15, help="timestep shift (<= 0: none)")
    parser.add_argument("--repeats", type=int_type(1), default=None, help="timed runs per row (default 5 CPU, 10 GPU)")
    parser.add_argument("--rungs", type=choice_list_type(RUNGS), default=list(RUNGS),
                        help=f"subset of {','.join(RUNGS)}")
    parser.add_argument("--decode", action="store_true", help="include the decoder in the timed run")
    parser.add_argument("--threads", type=int_type(1), default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is steadier on a shared machine)")
    parser.add_argument("--out", default=None, help="CSV path (default benchmarks/engines_{cpu,gpu}.csv)")
    parser.add_argument("--append", action="store_true", help="append to the CSV instead of overwriting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device; none is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    preset = args.preset or ("SVG-XL" if args.gpu else "tiny")
    batches = args.batches or ([1, 16, 64, 256] if args.gpu else [1, 4])
    rungs = list(args.rungs)
    if "eager-fp32" in rungs:  # the quality baseline must run before the rungs compared with it
        rungs.remove("eager-fp32")
        rungs.insert(0, "eager-fp32")
    repeats = args.repeats or (10 if args.gpu else 5)
    out = Path(args.out or f"benchmarks/engines_{'gpu' if args.gpu else 'cpu'}.csv")
    append = [args.append or args.gpu]

    def sink(rung_rows: list[Row]) -> None:
        write_csv(rung_rows, out, append=append[0])
        append[0] = True  # later rungs always append to what this run wrote

    rows = run_ladder(preset, batches, args.steps, args.guidance_scale, args.shift, repeats, device, rungs,
                      args.decode, sink=sink)
    log.info("wrote %d rows to %s", len(rows), out)


if __name__ == "__main__":
    main()
